"""Per-task time limits (runtime.timelimits): the hard limit is uWSGI's per-process harakiri for
the call, and the instance's harakiri is set back after it, whatever happens."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from uwsgiconf_mules.errors import TimeLimitExceeded
from uwsgiconf_mules.runtime import instance as _instance, timelimits


class _Uwsgi:
    def __init__(self, interrupt_at: int | None = None) -> None:
        self.harakiri: list[int] = []
        self.interrupt_at = interrupt_at

    def set_user_harakiri(self, seconds: int) -> None:
        self.harakiri.append(seconds)
        if seconds == self.interrupt_at:  # the soft limit's signal, right as the C call returns
            raise TimeLimitExceeded(0.01)


@pytest.fixture
def instance_harakiri(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_instance, "declarations", lambda: SimpleNamespace(harakiri=30))


def test_the_instance_harakiri_is_set_back_after_a_call_with_a_time_limit(
        monkeypatch: pytest.MonkeyPatch, instance_harakiri: None) -> None:
    uwsgi = _Uwsgi()
    monkeypatch.setattr(_instance, "uwsgi", uwsgi)
    with timelimits.limits(5.0, 10):
        assert uwsgi.harakiri == [10]
    assert uwsgi.harakiri == [10, 30]
    with pytest.raises(ValueError, match="task failed"), timelimits.limits(None, 10):
        raise ValueError("task failed")
    assert uwsgi.harakiri[-1] == 30
    assert timelimits._armed[0] == 0


def test_a_call_interrupted_while_its_limits_are_armed_leaves_neither_armed(
        monkeypatch: pytest.MonkeyPatch, instance_harakiri: None) -> None:
    uwsgi = _Uwsgi(interrupt_at=10)
    monkeypatch.setattr(_instance, "uwsgi", uwsgi)
    with pytest.raises(TimeLimitExceeded), timelimits.limits(0.01, 10):
        pass
    assert uwsgi.harakiri == [10, 30]  # not left at 10: the master would kill the idle mule
    assert timelimits._armed[0] == 0

    def no_thread(*args: object) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(timelimits._threads, "start", no_thread)
    monkeypatch.setattr(timelimits, "_watching", [0])  # the watchdog not started yet: it is, at this call
    uwsgi.interrupt_at = None
    with pytest.raises(RuntimeError), timelimits.limits(1.0, 10):
        pass
    assert uwsgi.harakiri[-1] == 30 and timelimits._armed[0] == 0


def test_many_calls_with_a_soft_limit_share_one_watchdog_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import threading
    import time

    started: list[object] = []
    start = timelimits._threads.start

    def counted(func: object, *args: object) -> int:
        started.append(func)
        return start(func, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(timelimits._threads, "start", counted)
    monkeypatch.setattr(timelimits, "_watching", [0])  # as in a process that ran none yet
    before = threading.active_count()
    for _ in range(200):
        with timelimits.limits(30.0, None):
            pass
    assert len(started) == 1 and threading.active_count() <= before + 1  # not 200 threads
    assert timelimits._watching == [os.getpid()]
    began = time.monotonic()
    with pytest.raises(TimeLimitExceeded), timelimits.limits(0.05, None):  # the shared watchdog still fires
        time.sleep(5)
    assert time.monotonic() - began < 2
    with timelimits.limits(0.05, None):  # a call that ended in time is never hit later
        pass
    time.sleep(0.2)
    assert len(started) == 1 and timelimits._armed[0] == 0
