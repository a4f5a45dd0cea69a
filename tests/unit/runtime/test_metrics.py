"""Visibility, pure logic: the failure line's arguments, the on_failure hook's loading, the view
of ``top`` and its errors (a real uWSGI: tests/integration/test_visibility.py)."""

from __future__ import annotations

import json
import logging
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.helpers import assert_one_line_error, invoke_with
from uwsgiconf_mules import MuleFarm
from uwsgiconf_mules.cli import cli
from uwsgiconf_mules.cli.top import StatsError, read_stats, render, snapshot
from uwsgiconf_mules.declarations import RECORD_ENV, declare
from uwsgiconf_mules.runtime import failures as _failures, instance as _instance
from uwsgiconf_mules.runtime.metrics import MuleCounters


class Loud:
    def __repr__(self) -> str:
        raise RuntimeError("no")


def test_the_arguments_of_a_failed_call_are_shown_bounded() -> None:
    assert _failures.bounded_repr((1, "x"), {"flag": True}) == "(1, 'x', flag=True)"
    assert _failures.bounded_repr((), None) == "()"
    large = _failures.bounded_repr(("a" * 10_000, list(range(10_000))), {"b": b"z" * 10_000})
    assert large == f"('{'a' * 27}...{'a' * 28}', [0, 1, 2, 3, 4, 5, ...], b=b'{'z' * 26}...{'z' * 28}')"
    many = _failures.bounded_repr(tuple(range(1000)), None)
    assert len(many) == _failures.ARGS_REPR_MAX
    assert many.startswith("(0, 1, 2, ") and many.endswith("...)")
    assert _failures.bounded_repr((Loud(),), None).startswith("(<Loud instance at 0x")


@pytest.fixture
def hooks(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[object, ...]]]:
    calls: list[tuple[object, ...]] = []
    module = types.ModuleType("visibility_hooks")
    module.report = lambda *args: calls.append(args)  # type: ignore[attr-defined]

    def broken(*args: object) -> None:
        raise SystemExit(3)

    module.broken = broken  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "visibility_hooks", module)
    yield calls
    _failures.reset()
    _instance.reset()


def declare_hook(monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    monkeypatch.setenv(RECORD_ENV, declare(mules=1, on_failure=path).record())
    _instance.reset()
    _failures.reset()


def test_the_hook_gets_key_arguments_exception_and_mule(
        monkeypatch: pytest.MonkeyPatch, hooks: list[tuple[object, ...]], caplog: pytest.LogCaptureFixture) -> None:
    declare_hook(monkeypatch, "visibility_hooks:report")
    error = ValueError("boom")
    _failures.report("app:task", (1,), {"k": 2}, error, 0.25)
    assert hooks == [("app:task", (1,), {"k": 2}, error, 0)]
    assert "task app:task failed in mule 0 after 0.250 s: ValueError: boom; arguments (1, k=2)" in caplog.text


def test_a_call_whose_arguments_are_damaged_is_still_reported(
        monkeypatch: pytest.MonkeyPatch, hooks: list[tuple[object, ...]], caplog: pytest.LogCaptureFixture) -> None:
    declare_hook(monkeypatch, "visibility_hooks:report")
    _failures.report("app:task", int, 5, TypeError("not iterable"), None)  # type: ignore[arg-type]
    assert "task app:task failed in mule 0: TypeError: not iterable; arguments not shown (TypeError: " in caplog.text
    assert hooks == []  # the hook is not given arguments that are not a tuple and a dict...
    assert "the on_failure hook failed on task app:task" in caplog.text  # ...and that is said


@pytest.mark.parametrize(("path", "logged"), [
    ("visibility_hooks:broken", "the on_failure hook failed on task app:task (SystemExit: 3)"),
    ("visibility_hooks:missing", "cannot load the on_failure hook visibility_hooks:missing (AttributeError"),
    ("no_such_module_here:f", "cannot load the on_failure hook no_such_module_here:f (ModuleNotFoundError"),
])
def test_a_hook_that_fails_or_cannot_load_is_logged(
        monkeypatch: pytest.MonkeyPatch, hooks: list[tuple[object, ...]], caplog: pytest.LogCaptureFixture,
        path: str, logged: str) -> None:
    declare_hook(monkeypatch, path)
    with caplog.at_level(logging.ERROR):
        _failures.report("app:task", (), None, ValueError("boom"), None)
        _failures.report("app:task", (), None, ValueError("again"), None)
    assert "task app:task failed in mule 0: ValueError: boom" in caplog.text
    assert caplog.text.count(logged) == (2 if "broken" in path else 1)  # a hook that cannot load: said once


STATS = {"version": "2.0.31", "pid": 100, "metrics": {
    "mule.1.queued": {"type": 0, "oid": "", "value": 7}, "mule.1.started": {"value": 6},
    "mule.1.succeeded": {"value": 4}, "mule.1.failed": {"value": 1}, "mule.1.spooled": {"value": 0},
    "mule.1.dead": {"value": 0}, "mule.1.run_ms": {"value": 2500}, "mule.1.queue_bytes": {"value": 768},
    "mule.1.running_ms": {"value": 1200}, "mule.1.pid": {"value": 101}, "mule.2.queued": {"value": 3},
    "farm.f.queued": {"value": 2}, "farm.f.queue_bytes": {"value": 0}, "worker.1.requests": {"value": 9}}}


def test_the_view_joins_metrics_and_status_files(tmp_path: Path) -> None:
    decl = declare(mules=[None, "x.py"], farms=[MuleFarm("f", [1])], stats="127.0.0.1:9191",
                   spool_dir=str(tmp_path))
    (tmp_path / "status").mkdir()
    (tmp_path / "status" / "1.json").write_text(json.dumps({
        "pid": 101, "time": time.time(), "running": "app:slow",
        "tasks": {"app:slow": {"started": 6, "succeeded": 4, "failed": 1, "run_ms": 2500}}}))
    view = snapshot(decl, STATS)
    first, second = view["mules"]
    assert first == {"id": 1, "kind": "dispatch", "farms": ["f"], "queued": 7, "started": 6, "succeeded": 4,
                     "failed": 1, "spooled": 0, "dead": 0, "run_ms": 2500, "queue_bytes": 768, "running_ms": 1200,
                     "pid": 101, "running": "app:slow",
                     "tasks": {"app:slow": {"started": 6, "succeeded": 4, "failed": 1, "run_ms": 2500}}}
    assert second == {"id": 2, "kind": "programmed", "farms": [], "queued": 3, "running": None, "tasks": {}}
    assert view["farms"] == [{"name": "f", "mules": [1], "queued": 2, "queue_bytes": 0}]
    text = render(view)
    lines = text.splitlines()
    assert lines[0].startswith("uWSGI 2.0.31 (master pid 100), stats 127.0.0.1:9191, ")
    assert lines[0].endswith("; mule counters since the last start or reload (a reload starts them at 0; TASK "
                             "counters go on)")
    assert lines[2].split() == ["MULE", "PID", "KIND", "FARMS", "QUEUED", "STARTED", "OK", "FAILED", "SPOOLED",
                                "DEAD", "RUN", "s", "QUEUE", "B", "RUNNING"]
    assert lines[3].split() == ["1", "101", "dispatch", "f", "7", "6", "4", "1", "0", "0", "2.5", "768", "app:slow",
                                "(1.2", "s)"]
    assert lines[4].split() == ["2", "-", "programmed", "-", "3", "-", "-", "-", "-", "-", "-", "-", "-"]
    first["queue_bytes"] = -1
    assert render(view).splitlines()[3].split()[11] == "?"  # not measured yet
    assert "app:slow  1     6        4   1       2.5" in text


def test_top_says_since_when_the_mule_counters_count() -> None:
    started = time.mktime((2026, 1, 2, 10, 20, 30, 0, 0, -1))
    workers = [{"id": 1, "last_spawn": int(started) + 1, "respawn_count": 1},
               {"id": 2, "last_spawn": int(started), "respawn_count": 1},
               {"id": 3, "last_spawn": int(started) - 50, "respawn_count": 2}]  # impossible, and ignored: respawned
    decl = declare(mules=1, stats="127.0.0.1:9191")
    view = snapshot(decl, dict(STATS, workers=workers))
    assert view["counting_since"] == started
    assert render(view).splitlines()[0].endswith(
        "; mule counters since 10:20:30 (a reload starts them at 0; TASK counters go on)")
    assert snapshot(decl, dict(STATS, workers=workers[2:]))["counting_since"] is None


def test_top_shows_the_results_stores_fill_and_evictions() -> None:
    decl = declare(mules=1, stats="127.0.0.1:9191", results={"items": 50, "name": "res"})
    caches = [{"name": "other", "items": 9, "full": 9},
              {"name": "res", "items": 50, "max_items": 51, "hits": 7, "miss": 2, "full": 70}]
    view = snapshot(decl, dict(STATS, caches=caches))
    assert view["results"] == {"name": "res", "items": 50, "max_items": 50, "evicted": 70, "hits": 7, "misses": 2}
    assert render(view).splitlines()[-1] == ("RESULTS STORE res: 50 of 50 items, 70 evicted since the last start or "
                                             "reload (full: the least recently used go first; declare more items)")
    caches[1].update(items=3, full=0)
    assert render(snapshot(decl, dict(STATS, caches=caches))).splitlines()[-1] == (
        "RESULTS STORE res: 3 of 50 items, 0 evicted since the last start or reload")
    assert snapshot(decl, STATS)["results"] is None  # no caches in the stats: no line
    assert snapshot(declare(mules=1, stats="127.0.0.1:9191"), dict(STATS, caches=caches))["results"] is None


def test_a_stale_status_file_says_nothing_of_what_runs(tmp_path: Path) -> None:
    decl = declare(mules=1, stats="127.0.0.1:9191", spool_dir=str(tmp_path))
    (tmp_path / "status").mkdir()
    (tmp_path / "status" / "1.json").write_text('{"pid": 101, "time": 1, "running": "app:slow", "tasks": {}}')
    assert snapshot(decl, STATS)["mules"][0]["running"] is None


def test_a_stats_server_that_is_not_there_is_named(tmp_path: Path) -> None:
    with pytest.raises(StatsError, match=r"cannot read the uWSGI stats server at .*stats\.sock"):
        read_stats(str(tmp_path / "stats.sock"))


def test_top_without_a_stats_server_is_one_line(tmp_path: Path) -> None:
    body = ("from uwsgiconf_mules import Section\nsection = Section()\nsection.workers.set_mules_params(mules=1)\n"
            "uwsgi_configuration = section.as_configuration()\n")
    assert_one_line_error(invoke_with(tmp_path, body, cli, "top", "--once"), "declares no stats server",
                          "stats='127.0.0.1:9191'")
    stats = str(tmp_path / "stats.sock")
    body = body.replace("mules=1", f"mules=1, stats={stats!r}")
    assert_one_line_error(invoke_with(tmp_path, body, cli, "top", "--once", "--json"),
                          f"cannot read the uWSGI stats server at {stats}")


class FakeMetrics:
    """Stands in for the uwsgi module's metric functions."""

    def __init__(self) -> None:
        self.values: dict[str, int] = {}

    def metric_inc(self, name: str, value: int = 1) -> bool:
        self.values[name] = self.values.get(name, 0) + value
        return True

    def metric_set(self, name: str, value: int) -> bool:
        self.values[name] = value
        return True


def test_a_mule_samples_its_counts_into_metrics_and_a_status_file(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = FakeMetrics()
    monkeypatch.setattr(_instance, "uwsgi", fake)
    counters = MuleCounters(1, declare(mules=1, stats="127.0.0.1:1"), str(tmp_path / "1.json"))
    cell = counters.cell(b"app:task")
    cell[0], cell[1], cell[2] = 3, 1, 0.25
    # The running call began 0.5 s ago, in a streak of calls of this task that began 0.75 s ago.
    counters.running[:] = [cell, time.perf_counter() - 0.5, time.perf_counter() - 0.75]
    counters.sample()
    assert fake.values["mule.1.started"] == 3 and fake.values["mule.1.failed"] == 1
    assert fake.values["mule.1.succeeded"] == 1  # one still running
    assert 1000 <= fake.values["mule.1.run_ms"] < 1100 and fake.values["mule.1.running_ms"] >= 500
    assert fake.values["mule.1.queue_bytes"] == -1  # its queue is not found yet: not measured
    status = json.loads((tmp_path / "1.json").read_text())
    assert 1000 <= status["tasks"]["app:task"]["run_ms"] < 1100
    counters.running[0] = None  # the streak ends, as the mule loop ends it: its time goes to the task
    cell[2] = 1.5
    counters.sample()
    assert (fake.values["mule.1.started"], fake.values["mule.1.succeeded"]) == (3, 2)  # increments, not totals
    assert fake.values["mule.1.run_ms"] == 1500
    status = json.loads((tmp_path / "1.json").read_text())
    assert status["tasks"] == {"app:task": {"started": 3, "failed": 1, "succeeded": 2, "run_ms": 1500}}
    again = MuleCounters(1, declare(mules=1, stats="127.0.0.1:1"), str(tmp_path / "1.json"))  # the mule respawned
    again.sample()
    assert fake.values["mule.1.started"] == 3  # the previous process flushed its counts already
    assert again.totals()["started"] == 3


def test_top_shows_a_spool_the_senders_refuse(tmp_path: Path) -> None:
    decl = declare(mules=1, stats="127.0.0.1:9191", spool_dir=str(tmp_path / "spool"))
    assert snapshot(decl, STATS)["spool_problem"] is None
    (tmp_path / "spool").mkdir(mode=0o777)
    (tmp_path / "spool").chmod(0o777)
    view = snapshot(decl, STATS)
    assert view["spool_problem"] == f"spool: {tmp_path / 'spool'} can be written by others (mode 777)"
    assert render(view).splitlines()[1] == (f"SPOOL UNUSABLE: {view['spool_problem']}: offloaded calls to dispatch "
                                            "mules are refused")


def test_the_spool_watcher_and_the_mule_set_the_spool_unusable_gauge(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from uwsgiconf_mules.runtime import spool_watch as _spool_watch

    fake = FakeMetrics()
    monkeypatch.setattr(_instance, "uwsgi", fake)
    monkeypatch.setattr(_spool_watch, "spool_problem", None)
    decl = declare(mules=1, stats="127.0.0.1:9191", spool_dir=str(tmp_path / "spool"))
    assert ("spool.unusable", "gauge") in decl.metric_names()
    assert "spool.unusable" not in dict(declare(mules=["reader:run"], stats="127.0.0.1:9191").metric_names())
    (tmp_path / "spool").mkdir()
    (tmp_path / "spool").chmod(0o777)
    _spool_watch.check_spool(decl)
    assert fake.values["spool.unusable"] == 1
    (tmp_path / "spool").chmod(0o700)
    fake.values["spool.unusable"] = 1  # as a mule may have left it
    _spool_watch.check_spool(decl)
    assert fake.values["spool.unusable"] == 0
    (tmp_path / "spool").chmod(0o777)
    _spool_watch.spool_gauge(decl)
    assert fake.values["spool.unusable"] == 1
