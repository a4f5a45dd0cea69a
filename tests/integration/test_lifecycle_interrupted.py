"""Interrupted calls and time limits on a real uWSGI (see mule.running, mule.timer, runtime.timelimits)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from support.harness import APP_PRELUDE, BIN, Server, compile_config, declaration, launch

APP = '''
import signal
import socket
import time

from uwsgiconf_mules.errors import TimeLimitExceeded
from uwsgiconf_mules.runtime import current_attempt

MARKER = os.path.join(RESULTS, "marker")


def die():
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(10)


@mule_offload()
def dies(tag):
    record("dies", tag=tag, attempt=current_attempt())
    time.sleep(0.3)
    die()


@mule_offload(acks_late=True)
def dies_once(tag):
    record("dies_once", tag=tag, attempt=current_attempt())
    if not os.path.exists(MARKER):
        open(MARKER, "w").close()
        die()
    record("dies_once_done", tag=tag)


@mule_offload(acks_late=True, retries=2)
def dies_always(tag):
    record("dies_always", tag=tag, attempt=current_attempt())
    os._exit(3)


@mule_offload(time_limit=1)
def stuck(tag):
    record("stuck", tag=tag)
    time.sleep(30)
    record("stuck_done", tag=tag)


@mule_offload(soft_time_limit=0.5, retries=1, retry_for=TimeLimitExceeded, retry_backoff=0.2)
def slow_python(tag):
    started = time.time()
    try:
        while True:
            sum(range(1000))
    except TimeLimitExceeded:
        record("soft", tag=tag, how="python", after=time.time() - started, attempt=current_attempt())
        raise


@mule_offload(soft_time_limit=0.5)
def slow_c(tag):
    started = time.time()
    left, right = socket.socketpair()
    try:
        left.recv(10)  # blocks in C: nothing is ever sent
    except TimeLimitExceeded:
        record("soft", tag=tag, how="socket", after=time.time() - started)
        raise
    finally:
        left.close()
        right.close()


@mule_offload(soft_time_limit=0.5)
def sleeps_c(tag):
    started = time.time()
    try:
        time.sleep(20)
    except TimeLimitExceeded:
        record("soft", tag=tag, how="sleep", after=time.time() - started)


@mule_offload()
def after(tag):
    record("after", tag=tag)


for _name in ("dies", "dies_once", "dies_always", "stuck", "slow_python", "slow_c", "sleeps_c", "after"):
    route("/" + _name)((lambda task: lambda query: task(query))(globals()[_name]))
'''


def start(tmp_path: Path) -> tuple[Server, Path]:
    spool = tmp_path / "spool"
    (tmp_path / "uwsgicfg.py").write_text(declaration(f"mules=1, spool_dir={str(spool)!r}, reload_mercy=20"))
    (tmp_path / "app.py").write_text(APP_PRELUDE + APP)
    path, compiled = compile_config(tmp_path)
    assert compiled.returncode == 0, compiled.stderr
    return launch(path, tmp_path, expect_mules=1), path


def notes(tmp_path: Path) -> list[str]:
    dead = tmp_path / "spool" / "dead"
    return [path.read_bytes().split(b"\n", 2)[1].decode() for path in sorted(dead.glob("*.call"))]


def spawns(server: Server) -> int:
    return server.log().count("spawned uWSGI mule 1 ")


def test_a_killed_call_is_kept_as_an_interrupted_dead_letter_and_replays(tmp_path: Path) -> None:
    server, path = start(tmp_path)
    try:
        assert server.get("/dies?a") == (200, True)
        server.wait_for(lambda: any(n.startswith("interrupted: app:dies ") for n in notes(tmp_path)), 20,
                        "the interrupted dead letter")
        assert server.get("/after?x") == (200, True)
        server.wait_lines("after", 1)
        assert len(server.lines("dies")) == 1  # not run again
        note = next(n for n in notes(tmp_path) if n.startswith("interrupted: app:dies "))
        assert "(in mule 1, pid " in note and "attempt 1 of 1)" in note
        log = server.log()
        assert "task app:dies was interrupted in mule 1 (pid " in log
        assert "kept as an interrupted dead letter" in log
        listed = subprocess.run([str(BIN / "uwsgiconf-mules"), "spool", "list", str(path)], capture_output=True,
                                text=True, cwd=tmp_path, check=False)
        assert "1 x app:dies (interrupted: app:dies)" in listed.stdout, listed.stdout + listed.stderr
        replayed = subprocess.run([str(BIN / "uwsgiconf-mules"), "spool", "replay", str(path)], capture_output=True,
                                  text=True, cwd=tmp_path, check=False)
        assert "replayed 1 dead letter(s)" in replayed.stdout, replayed.stdout + replayed.stderr
        assert not notes(tmp_path)
    finally:
        server.stop()


def test_an_acks_late_call_runs_again_exactly_once(tmp_path: Path) -> None:
    server, _ = start(tmp_path)
    try:
        assert server.get("/dies_once?b") == (200, True)
        server.wait_lines("dies_once_done", 1, timeout=20)
        time.sleep(1.5)
        assert [run["attempt"] for run in server.lines("dies_once")] == [1, 2]
        assert len(server.lines("dies_once_done")) == 1
        assert "it declares acks_late, so it runs again" in server.log()
        assert not notes(tmp_path)
    finally:
        server.stop()


def test_a_call_that_kills_its_mule_every_time_stops_after_its_attempts(tmp_path: Path) -> None:
    server, _ = start(tmp_path)
    try:
        assert server.get("/dies_always?c") == (200, True)
        server.wait_for(lambda: any(n.startswith("interrupted: app:dies_always ") for n in notes(tmp_path)), 30,
                        "the interrupted dead letter")
        assert server.get("/after?y") == (200, True)
        server.wait_lines("after", 1)
        time.sleep(1.5)
        assert [run["attempt"] for run in server.lines("dies_always")] == [1, 2, 3]
        assert spawns(server) == 4  # the first mule and three respawns, no more
        note = next(n for n in notes(tmp_path) if n.startswith("interrupted: app:dies_always "))
        assert "attempt 3 of 3; no attempt left)" in note, note
    finally:
        server.stop()


def test_a_hard_time_limit_stops_the_mule_and_keeps_the_call(tmp_path: Path) -> None:
    server, _ = start(tmp_path)
    try:
        started = time.monotonic()
        assert server.get("/stuck?d") == (200, True)
        server.wait_for(lambda: any(n.startswith("interrupted: app:stuck ") for n in notes(tmp_path)), 20,
                        "the interrupted dead letter")
        assert time.monotonic() - started < 6
        assert "HARAKIRI" in server.log().upper()
        assert not server.lines("stuck_done")
    finally:
        server.stop()


def test_a_soft_time_limit_raises_in_python_code_in_a_sleep_and_in_a_socket_read(tmp_path: Path) -> None:
    server, _ = start(tmp_path)
    try:
        for name in ("slow_python", "slow_c", "sleeps_c"):
            assert server.get(f"/{name}?{name}") == (200, True)
        runs = server.wait_lines("soft", 4, timeout=30)
        by_how = {}
        for run in runs:
            by_how.setdefault(run["how"], []).append(run)
        assert [run["attempt"] for run in by_how["python"]] == [1, 2]  # retry_for=TimeLimitExceeded
        for run in runs:
            assert 0.45 <= run["after"] <= 1.0, run
        assert len(by_how["socket"]) == 1 and len(by_how["sleep"]) == 1
        server.wait_for(lambda: any(n.startswith("failed: app:slow_python (TimeLimitExceeded, attempt 2 of 2)")
                                    for n in notes(tmp_path)), 10, "the failed dead letter")
        assert spawns(server) == 1  # soft limits never kill the mule
    finally:
        server.stop()
