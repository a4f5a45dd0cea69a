"""Schedules on a real uWSGI (see mule.schedules): once per tick whatever the workers and mules,
with and without --lazy-apps, no overlap, across reloads and stops."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from support.harness import APP_PRELUDE, BIN, Server, compile_config, launch

APP = '''
import time


@mule_offload("ticks")
def tick(label):
    record("tick", label=label, at=time.time(), pid=os.getpid())


@mule_offload("ticks")
def slow(label):
    record("slow", label=label, at=time.time())
    time.sleep(3.5)
'''


def config(spool: Path, schedules: str, mules: int = 2, params: str = "") -> str:
    return (
        "from datetime import timedelta\n"
        "from uwsgiconf_mules import Section\n"
        "section = Section()\n"
        f"section.workers.set_mules_params(mules={mules}, farms=[section.workers.mule_farm('ticks', "
        f"{list(range(1, mules + 1))})], spool_dir={str(spool)!r}, reload_mercy=20{params})\n"
        f"{schedules}\n"
        "uwsgi_configuration = section.as_configuration()\n"
    )


def start(tmp_path: Path, schedules: str, *, workers: int = 4, mules: int = 2, extra_args: tuple[str, ...] = (),
          env: dict[str, str] | None = None, params: str = "") -> tuple[Server, Path]:
    spool = tmp_path / "spool"
    (tmp_path / "uwsgicfg.py").write_text(config(spool, schedules, mules, params))
    (tmp_path / "app.py").write_text(APP_PRELUDE + APP)
    path, compiled = compile_config(tmp_path)
    assert compiled.returncode == 0, compiled.stderr
    return launch(path, tmp_path, expect_mules=mules, workers=workers, extra_args=extra_args, env=env), path


def state(tmp_path: Path) -> dict[str, object]:
    (found,) = (tmp_path / "spool" / "schedules").glob("*.json")
    return dict(json.loads(found.read_text()))


def seconds_of(runs: list[dict[str, object]]) -> list[int]:
    return [round(float(str(run["at"]))) for run in runs]


@pytest.mark.parametrize("lazy", [False, True], ids=["prefork", "lazy-apps"])
def test_an_every_second_schedule_runs_once_per_second_with_4_workers_and_2_mules(tmp_path: Path,
                                                                                  lazy: bool) -> None:
    server, _ = start(tmp_path, "section.workers.schedule('app:tick', every=1, farm='ticks', args=['s'])",
                      extra_args=("--lazy-apps",) if lazy else ())
    try:
        began = time.time()
        time.sleep(10)
        ended = time.time()
        runs = [run for run in server.lines("tick") if began <= float(run["at"]) <= ended]
        assert 9 <= len(runs) <= 11, runs  # once per second, +-1 at the edges of the window
        seconds = seconds_of(runs)
        assert len(set(seconds)) == len(seconds), seconds  # never twice in one tick
        assert {run["label"] for run in runs} == {"s"}
    finally:
        server.stop()


def test_a_long_run_is_not_overlapped_and_the_skips_are_counted(tmp_path: Path) -> None:
    stats = tmp_path / "stats.sock"
    server, _ = start(tmp_path, "section.workers.schedule('app:slow', every=1, farm='ticks', args=['x'])",
                      workers=1, params=f", stats={str(stats)!r}")
    try:
        runs = server.wait_lines("slow", 3, timeout=20)  # the third run has just begun: 3.5 s to read top
        top = subprocess.run([str(BIN / "uwsgiconf-mules"), "top", "--once", "uwsgicfg.py"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=30, check=False)
        read_within = time.time() - float(runs[-1]["at"])
        assert top.returncode == 0, top.stderr
        lines = top.stdout.splitlines()
        at = next(index for index, line in enumerate(lines) if line.startswith("SCHEDULE"))
        header, row = lines[at], lines[at + 1]
        assert header.split() == ["SCHEDULE", "TARGET", "RUNS", "FAILED", "SKIPPED", "MISSED", "LAST", "RUN",
                                  "OUTCOME", "NEXT"]
        assert read_within < 3.4, (read_within, runs)  # top read while the third run still ran
        # RUNS counts the runs that ended (noted after the task returns): the two before, not the third
        assert row.split()[1:3] == ["farm:ticks", "2"], (row, runs)
        assert "succeeded" in row
        runs = server.lines("slow")
        assert len(runs) == 3, runs  # a 3.5 s run every 4 ticks: never two at once
        gaps = [b["at"] - a["at"] for a, b in itertools.pairwise(runs)]
        assert all(gap >= 3.5 for gap in gaps), gaps
        assert int(state(tmp_path).get("skipped", 0)) >= 4, state(tmp_path)
        assert "the tick of" in server.log() and "is skipped, its previous run has not finished" in server.log()
    finally:
        server.stop()


def left_in_spool(spool: Path, file_id: str) -> list[int]:
    """The ticks whose calls are still in the spool, made and not run (kept for the next start):
    in ``delayed/``, or claimed and not started (a claim marked running has run its task's line)."""
    suffix = f"-0-{file_id}.call"
    names = [path.name for path in [*spool.glob("delayed/*/*"), *spool.glob("claimed/*-due-*")]]
    return sorted(int(name[:-len(suffix)][-20:]) for name in names if name.endswith(suffix))


def test_sighup_every_2_s_neither_drops_nor_doubles_a_tick(tmp_path: Path) -> None:
    server, _ = start(tmp_path, "section.workers.schedule('app:tick', every=1, farm='ticks', args=['h'])",
                      workers=2)
    try:
        for _ in range(5):
            time.sleep(2)
            os.kill(server.proc.pid, signal.SIGHUP)
        time.sleep(3)  # the last reload ends, its late ticks run (grace)
        reloads = server.log().count("gracefully reloading") or server.log().count("...gracefully killing")
    finally:
        server.stop()  # no tick made or run after this: the runs, the state and the spool are read at rest
    found = state(tmp_path)
    (state_file,) = (tmp_path / "spool" / "schedules").glob("*.json")
    left = left_in_spool(tmp_path / "spool", state_file.stem)
    runs = server.lines("tick")
    first = int(float(runs[0]["at"]))  # the first tick ran within a second of its time
    made = max([int(str(found["made"])), *left]) // 1_000_000_000  # a mule stopped before it noted its tick
    seen = (first, made, [round(float(run["at"]), 2) for run in runs], [tick // 10**9 for tick in left], found,
            [line for line in server.log().splitlines() if "skipped" in line or "missed" in line])
    assert len(runs) + len(left) == made - first + 1, seen  # each tick once: run, or kept for the next start
    assert found.get("skipped", 0) == 0 and found.get("missed", 0) == 0, seen
    assert made - first >= 11, seen  # 13 s of ticks
    assert reloads >= 1, server.log()[-3000:]


@pytest.mark.parametrize("missed", ["skip", "once"])
def test_ticks_missed_across_a_stop_follow_the_declared_policy(tmp_path: Path, missed: str) -> None:
    server, path = start(tmp_path, f"section.workers.schedule('app:tick', every=4, farm='ticks', args=['m'], "
                                   f"grace=1, missed={missed!r})", workers=1)
    try:
        server.wait_lines("tick", 1, timeout=10)
    finally:
        server.stop()
    time.sleep(9 - time.time() % 4 + 0.6)  # down across two ticks at least; back at 0.6 s past a tick
    runs_before = len(server.lines("tick"))
    server = launch(path, tmp_path, expect_mules=2, workers=1)
    try:
        time.sleep(2.5)
        after = server.lines("tick")[runs_before:]
        off_tick = [run for run in after if 0.6 < float(run["at"]) % 4 < 3.9]  # not a tick's own run
        found = state(tmp_path)
        assert int(found["missed"]) >= 2, found
        if missed == "skip":
            assert off_tick == [], after
        else:
            assert len(off_tick) == 1, after  # one run for all the missed ticks
            assert "one run for them" in server.log()
        assert f"missed {found['missed']} tick(s)" in server.log() or "missed" in server.log()
    finally:
        server.stop()


FAILING = '''

from uwsgiconf_mules.runtime import current_attempt


@mule_offload("ticks", retries=1, retry_for=ValueError, retry_backoff=0.2, retry_jitter=False)
def flaky(label):
    record("flaky", label=label, attempt=current_attempt(), at=time.time())
    if current_attempt() == 1:
        raise ValueError("first attempt")


@mule_offload("ticks")
def broken(label):
    raise RuntimeError(f"broken {label}")
'''

HOOKS = '''
import json, os


def report(key, args, kwargs, exc, mule_id):
    with open(os.path.join(os.environ["TEST_RESULTS"], "hook"), "a") as out:
        out.write(json.dumps({"key": key, "args": list(args), "error": str(exc)}) + "\\n")
'''


def test_retries_and_the_failure_hook_apply_to_scheduled_calls(tmp_path: Path) -> None:
    (tmp_path / "hooks.py").write_text(HOOKS)
    schedules = ("section.workers.schedule('app:flaky', every=2, farm='ticks', args=['f'])\n"
                 "section.workers.schedule('app:broken', every=2, farm='ticks', args=['b'])\n"
                 "section.workers.schedule('app:missing', every=2, farm='ticks')")
    spool = tmp_path / "spool"
    (tmp_path / "uwsgicfg.py").write_text(config(spool, schedules, 2, ", on_failure='hooks:report'"))
    (tmp_path / "app.py").write_text(APP_PRELUDE + APP + FAILING)
    path, compiled = compile_config(tmp_path)
    assert compiled.returncode == 0, compiled.stderr
    server = launch(path, tmp_path, expect_mules=2, workers=1)
    try:
        runs = server.wait_lines("flaky", 4, timeout=15)
        hooked = server.wait_lines("hook", 1, timeout=10)
        assert [run["attempt"] for run in runs[:2]] == [1, 2]  # each tick's call retried once, then done
        assert runs[1]["at"] - runs[0]["at"] >= 0.15
        assert {(line["key"], line["error"]) for line in hooked} == {("app:broken", "broken b")}
        states = states_of(spool)
        assert states["app:broken"]["failed"] >= 1 and states["app:broken"]["outcome"] == "failed"
        assert "task app:broken failed in mule" in server.log()
        assert "schedule app:missing names no task (unknown task app:missing" in server.log()  # said at start
        server.wait_for(lambda: states_of(spool)["app:missing"].get("outcome") == "refused", what="a refusal")
        assert "refused a" in server.log() and "unknown task app:missing" in server.log()
    finally:
        server.stop()


def states_of(spool: Path) -> dict[str, dict[str, object]]:
    found = [json.loads(path.read_text()) for path in (spool / "schedules").glob("*.json")]
    return {str(state["name"]): state for state in found}


RETRIED = '''

from uwsgiconf_mules.runtime import current_attempt


@mule_offload("ticks", retries=1, retry_for=ValueError, retry_backoff=2.5, retry_jitter=False)
def retried(label):
    record("retried", label=label, attempt=current_attempt(), at=time.time())
    if current_attempt() == 1:
        raise ValueError("first attempt")
'''


def test_a_tick_whose_retry_is_pending_is_still_running_so_the_next_ticks_are_skipped(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    (tmp_path / "uwsgicfg.py").write_text(config(spool, "section.workers.schedule('app:retried', every=1, "
                                                        "farm='ticks', args=['r'])"))
    (tmp_path / "app.py").write_text(APP_PRELUDE + APP + RETRIED)
    path, compiled = compile_config(tmp_path)
    assert compiled.returncode == 0, compiled.stderr
    server = launch(path, tmp_path, expect_mules=2, workers=1)
    try:
        runs = server.wait_lines("retried", 5, timeout=20)  # 3 ticks' first attempts and 2 retries
        time.sleep(0.3)
        found = state(tmp_path)
    finally:
        server.stop()
    runs = server.lines("retried")
    attempts = [run["attempt"] for run in runs]
    assert attempts[:5] == [1, 2, 1, 2, 1], runs  # no tick while the previous one's retry waits or runs
    assert all(b["at"] >= a["at"] for a, b in itertools.pairwise(runs)), runs
    assert all(runs[i + 1]["at"] - runs[i]["at"] >= 2.4 for i in range(0, 4, 2)), runs  # the retry's backoff
    assert int(found.get("skipped", 0)) >= 4, found  # two ticks skipped during each retry's backoff
    assert found.get("runs") == attempts.count(1) or found.get("runs") == attempts.count(1) - 1, (found, attempts)
    assert found.get("failed", 0) == 0, found
    assert "its previous run has not finished" in server.log()
