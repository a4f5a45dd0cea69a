"""Retries, delayed calls and time limits outside uWSGI, bad input, and the spool's delayed/ part
(runtime.policy, runtime.deferred); on a real uWSGI: tests/integration/test_lifecycle*.py."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from uwsgiconf_mules import errors
from uwsgiconf_mules.declarations import declare
from uwsgiconf_mules.errors import Retry
from uwsgiconf_mules.runtime import current_attempt, instance as _instance, mule_offload, policy
from uwsgiconf_mules.testing import capture, eager

RAN: list[tuple[str, int]] = []


@mule_offload(retries=2, retry_for=ValueError, retry_jitter=False)
def flaky(fail_until: int) -> None:
    RAN.append(("flaky", current_attempt()))
    if current_attempt() < fail_until:
        raise ValueError(f"attempt {current_attempt()}")


@mule_offload(retries=1)
def asks() -> None:
    RAN.append(("asks", current_attempt()))
    if current_attempt() == 1:
        raise Retry(delay=30)


@mule_offload()
def plain(value: int) -> None:
    RAN.append(("plain", value))


@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    RAN.clear()
    yield
    _instance.reset()


def test_a_task_without_options_is_registered_as_it_is() -> None:
    from uwsgiconf_mules.runtime import tasks

    assert tasks.REGISTRY[plain.key.encode()] is plain.__wrapped__
    assert plain.policy is None  # type: ignore[attr-defined]
    assert plain.key not in policy.POLICIES
    assert tasks.REGISTRY[flaky.key.encode()] is not flaky.__wrapped__  # guarded by its policy


def test_inline_retries_run_at_once_and_the_last_failure_is_logged_with_its_attempt(
        caplog: pytest.LogCaptureFixture) -> None:
    assert flaky(3) is True
    assert RAN == [("flaky", 1), ("flaky", 2), ("flaky", 3)]
    RAN.clear()
    flaky(5)  # inline, a failure is logged, as before
    assert RAN == [("flaky", 1), ("flaky", 2), ("flaky", 3)]
    assert f"task {flaky.key} failed in mule 0 after" in caplog.text
    assert "(attempt 3 of 3): ValueError: attempt 3" in caplog.text
    assert current_attempt() == 1  # reset after the call
    assert asks() is True
    assert RAN[-2:] == [("asks", 1), ("asks", 2)]


def test_backoff_doubles_up_to_its_cap_with_jitter_between_half_and_all() -> None:
    fixed = policy.policy_of("m:f", "mule 1", {"retries": 9, "retry_backoff": 2.0, "retry_backoff_max": 10.0,
                                               "retry_jitter": False})
    assert fixed is not None
    assert [fixed.delay(attempt) for attempt in range(1, 6)] == [2.0, 4.0, 8.0, 10.0, 10.0]
    jittered = policy.policy_of("m:f", "mule 1", {"retries": 3, "retry_backoff": 4.0})
    assert jittered is not None
    assert all(2.0 <= jittered.delay(1) <= 4.0 for _ in range(50))


def test_delayed_calls_run_at_once_inline_and_eager_and_capture_records_the_delay(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    from uwsgiconf_mules.runtime import deferred

    monkeypatch.setattr(deferred, "_RAN_EARLY", set())
    with caplog.at_level("WARNING"):
        assert plain.later(30)(1) is True
        assert plain.at(datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1))(2) is True
    assert RAN == [("plain", 1), ("plain", 2)]
    early = [r.getMessage() for r in caplog.records if "a delayed call outside uWSGI runs at once" in r.getMessage()]
    assert len(early) == 1 and f"task {plain.key}: " in early[0] and "30.000 s earlier than asked" in early[0]
    caplog.clear()
    cfg = tmp_path / "cfg_lifecycle.py"
    cfg.write_text("from uwsgiconf_mules import Section\nsection = Section()\n"
                   "section.workers.set_mules_params(mules=1)\nuwsgi_configuration = section.as_configuration()\n")
    with capture(str(cfg)) as outbox:
        plain.later(12.5)(3)
        plain(4)
        flaky(1)
    assert [(call.key, call.args, call.delay) for call in outbox] == [
        (plain.key, (3,), 12.5), (plain.key, (4,), None), (flaky.key, (1,), None)]
    assert outbox[0].policy == {}
    assert outbox[2].policy["retries"] == 2 and outbox[2].policy["retry_for"] == (ValueError,)
    RAN.clear()
    with eager(str(cfg)) as outbox:
        flaky.later(60)(2)
    assert RAN == [("flaky", 1), ("flaky", 2)]
    assert outbox[0].delay == 60
    assert "outside uWSGI runs at once" not in caplog.text  # the test modes say nothing: they record the delay


BAD_OPTIONS = [
    ({"retries": -1}, "retries", "must be at least 0"),
    ({"retries": "3"}, "retries", "must be an integer, not '3'"),
    ({"retries": True}, "retries", "must be an integer"),
    ({"retries": 10_000}, "retries", "at most 1000"),
    ({"retries": 2, "retry_for": "ValueError"}, "retry_for", "an exception class or a tuple of them"),
    ({"retries": 2, "retry_for": (ValueError, int)}, "retry_for", "an exception class or a tuple of them"),
    ({"retry_for": ValueError}, "retries", "retry_for= needs retries="),
    ({"retries": 1, "retry_backoff": -1}, "retry_backoff", "at least 0"),
    ({"retries": 1, "retry_backoff": float("nan")}, "retry_backoff", "at least 0"),
    ({"retries": 1, "retry_backoff": 1e12}, "retry_backoff", "at most"),
    ({"retries": 1, "retry_backoff": 5, "retry_backoff_max": 2}, "retry_backoff_max", "is less than retry_backoff"),
    ({"retries": 1, "retry_jitter": 1}, "retry_jitter", "True or False"),
    ({"soft_time_limit": 0}, "soft_time_limit", "more than 0"),
    ({"soft_time_limit": "5"}, "soft_time_limit", "a number of seconds"),
    ({"time_limit": 1.5}, "time_limit", "a whole number of seconds"),
    ({"time_limit": 10 ** 9}, "time_limit", "at most"),
    ({"time_limit": 5, "soft_time_limit": 5}, "soft_time_limit", "must be less than time_limit"),
    ({"acks_late": "yes"}, "acks_late", "True or False"),
]


@pytest.mark.parametrize(("options", "option", "message"), BAD_OPTIONS)
def test_bad_options_are_refused_at_decoration_naming_the_task_and_the_option(
        options: dict[str, Any], option: str, message: str) -> None:
    def task() -> None:
        pass

    task.__module__, task.__qualname__ = "shop.tasks", "task"
    with pytest.raises(errors.TaskOptionError, match=f"task shop.tasks:task: .*{message}") as info:
        mule_offload(**options)(task)
    assert info.value.option == option and info.value.task == "shop.tasks:task"
    assert isinstance(info.value, ValueError) and isinstance(info.value, errors.UsageError)


@pytest.mark.parametrize(("when", "message"), [
    (-1, "later\\(seconds\\) must be at least 0"),
    (10 ** 9, "at most"),
    ("5", "a number of seconds"),
    (float("inf"), "at most"),
])
def test_bad_delays_are_refused_at_the_call(when: object, message: str) -> None:
    with pytest.raises(errors.TaskOptionError, match=f"task {plain.key}: .*{message}"):
        plain.later(when)  # type: ignore[arg-type]
    assert RAN == []


def test_naive_and_far_datetimes_are_refused() -> None:
    with pytest.raises(errors.TaskOptionError, match=r"takes an aware datetime .*naive"):
        plain.at(datetime.datetime.now())
    with pytest.raises(errors.TaskOptionError, match="takes an aware datetime, not 5"):
        plain.at(5)  # type: ignore[arg-type]
    with pytest.raises(errors.TaskOptionError, match="is more than 366 days away"):
        plain.at(datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=400))
    assert RAN == []


def _task(name: str) -> Any:
    def task() -> None:
        pass

    task.__module__, task.__qualname__ = "shop.tasks", name
    return task


def test_options_on_a_target_that_cannot_honour_them_are_refused_naming_it() -> None:
    _instance.reset(declare(mules=[None, "prog.py"], backends={"reports": "rq://127.0.0.1:1/0"}), "test")
    for option, value in (("soft_time_limit", 3.0), ("acks_late", True)):
        with pytest.raises(errors.TaskOptionError, match=rf"task shop.tasks:routed: farm 'reports' is routed to an "
                                                         rf"offload backend, which does not honour {option}=") as info:
            mule_offload("reports", retries=2, **{option: value})(_task("routed"))
        assert info.value.option == option
    # RQ honours the retries and the hard limit (see tests/unit/contrib/test_rq.py)
    assert mule_offload("reports", retries=2, retry_for=ValueError, time_limit=5)(_task("routed")).policy.retries == 2
    with pytest.raises(errors.TaskOptionError, match="programmed mules only"):
        mule_offload(2, soft_time_limit=3)(_task("programmed"))
    routed = mule_offload("reports")(_task("routed_plain"))  # no option: accepted, as before
    assert routed.later(5)() is True  # the engine bypassed here (declarations of a test): at once
    with pytest.raises(errors.TaskOptionError, match=r"farm 'reports' is routed to an offload backend, and a task "
                                                     r"with result_ttl cannot be delayed there yet: later\(\)"):
        mule_offload("reports", result_ttl=60)(_task("routed_results")).later(5)
    with pytest.raises(errors.TaskOptionError, match="mule 2 has programmed mules only"):
        mule_offload(2)(_task("programmed_plain")).later(5)()


HOOKED: list[tuple[str, int, str]] = []


def on_failure(key: str, args: tuple[Any, ...], kwargs: dict[str, Any], exc: BaseException, mule_id: int) -> None:
    HOOKED.append((key, current_attempt(), type(exc).__name__))


def test_the_on_failure_hook_sees_the_attempt_that_failed() -> None:
    from uwsgiconf_mules.runtime import failures

    module = flaky.key.partition(":")[0]
    _instance.reset(declare(mules=1, on_failure=f"{module}:on_failure"), "test")
    failures.reset()
    try:
        flaky(9)
    finally:
        failures.reset()
    assert HOOKED == [(flaky.key, 3, "ValueError")]
    assert current_attempt() == 1


@pytest.mark.parametrize("delay", ["x", float("nan"), -1, 10 ** 9, True])
def test_a_retry_delay_that_is_not_a_number_of_seconds_in_range_is_refused_naming_it(delay: object) -> None:
    from uwsgiconf_mules.errors import Retry, TaskOptionError

    with pytest.raises(TaskOptionError, match=r"Retry\(delay=\.\.\.\) must be None or a number of seconds"):
        Retry(delay=delay)  # type: ignore[arg-type]
    assert Retry(delay=0).delay == 0 and Retry().delay is None


def test_the_longest_retry_delay_is_the_longest_delay() -> None:
    from uwsgiconf_mules.errors import MAX_RETRY_DELAY
    from uwsgiconf_mules.runtime.deferred import MAX_DELAY

    assert MAX_RETRY_DELAY == MAX_DELAY


def test_at_keeps_its_moment_a_sender_kept_for_later_does_not_drift(tmp_path: Path) -> None:
    import time

    cfg = tmp_path / "cfg_at.py"
    cfg.write_text("from uwsgiconf_mules import Section\nsection = Section()\n"
                   "section.workers.set_mules_params(mules=1)\nuwsgi_configuration = section.as_configuration()\n")
    when = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=10)
    with capture(str(cfg)) as outbox:
        kept = plain.at(when)
        later = plain.later(10)
        time.sleep(0.5)
        kept(1)
        later(2)
    assert outbox[0].delay is not None and 9.0 < outbox[0].delay <= 9.55  # the moment, not 10 s from at()
    assert outbox[1].delay == 10  # later(): from each call
