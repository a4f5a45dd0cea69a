"""Durability on a real uWSGI: calls queued when uWSGI reloads or stops are kept in the spool and
run once by the next mules; calls that cannot run become dead letters; a killed mule is reported."""

from __future__ import annotations

import collections
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from support.harness import APP_PRELUDE, QUEUED_WORK_APP, Server, compile_config, declaration, launch

# One dispatch mule whose queue holds the calls of one /fill request: 250 calls of 20 ms each,
# sent at once (the queue takes about 278 small messages), so that when the trigger comes,
# nearly all of them are still queued.
CALLS = 250

def config(spool: Path, touch: Path) -> str:
    return declaration(f"mules=1, spool_dir={str(spool)!r}, touch_reload={str(touch)!r}, reload_mercy=20")


def start(tmp_path: Path, extra: tuple[str, ...] = ()) -> tuple[Server, Path]:
    spool, mules_reload = tmp_path / "spool", tmp_path / "mules-reload"
    for name in ("mules-reload", "reload"):
        (tmp_path / name).write_text("")
        touch(tmp_path / name, ago=60)  # so that touching it now changes its second
    (tmp_path / "uwsgicfg.py").write_text(config(spool, mules_reload))
    (tmp_path / "app.py").write_text(APP_PRELUDE + QUEUED_WORK_APP)
    path, compiled = compile_config(tmp_path)
    assert compiled.returncode == 0, compiled.stderr
    return launch(path, tmp_path, expect_mules=1, extra_args=extra), path


def runs(server: Server) -> collections.Counter[int]:
    return collections.Counter(r["i"] for r in server.lines("work") if r["i"] >= 0)


def wait_respawned(server: Server, spawns: int) -> None:
    server.wait_for(lambda: server.log().count("spawned uWSGI mule 1 ") >= spawns, 30, f"mule spawn {spawns}")


def touch(path: Path, ago: float = 0) -> None:
    """Set the file's modification time (uWSGI compares whole seconds, and no later than now)."""
    when = time.time() - ago
    os.utime(path, (when, when))


def reload_master(server: Server, how: str, tmp_path: Path) -> None:
    if how == "SIGHUP":
        os.kill(server.proc.pid, signal.SIGHUP)
    elif how == "touch-reload":
        touch(tmp_path / "reload")
    elif how == "fifo r":
        (tmp_path / "fifo").write_bytes(b"r")


TRIGGERS = {
    # name: (extra uWSGI options, how it restarts the mule)
    "SIGHUP": ((), "master"),
    "touch-reload": (("--touch-reload", "{tmp}/reload"), "master"),
    "fifo r": (("--master-fifo", "{tmp}/fifo"), "master"),
    "touch-mules-reload": ((), "mules"),
    "fifo c (chain reload)": (("--master-fifo", "{tmp}/fifo"), "chain"),
    "fifo c (chain reload) with --lazy-apps": (("--master-fifo", "{tmp}/fifo", "--lazy-apps"), "chain"),
    "SIGINT, then start": ((), "stop"),
    "SIGTERM, then start": ((), "stop"),
}


@pytest.mark.parametrize("trigger", sorted(TRIGGERS))
def test_a_full_queue_loses_nothing_and_runs_nothing_twice(tmp_path: Path, trigger: str) -> None:
    extra, kind = TRIGGERS[trigger]
    server, path = start(tmp_path, tuple(arg.format(tmp=tmp_path) for arg in extra))
    before = ""  # the log of the first server, when it is stopped and started again
    try:
        if "touch" in trigger:
            time.sleep(1.5)  # uWSGI's master reads the files' times in its first cycles, after start
        assert server.get(f"/fill?{CALLS}") == (200, CALLS)
        time.sleep(0.2)  # the mule is running the first calls; the rest are queued
        assert len(runs(server)) < CALLS // 2
        if kind == "master":
            reload_master(server, trigger, tmp_path)
            wait_respawned(server, 2)
        elif kind == "mules":
            touch(tmp_path / "mules-reload")
            wait_respawned(server, 2)
        elif kind == "chain":
            (tmp_path / "fifo").write_bytes(b"c")
        else:
            server.proc.send_signal(signal.SIGTERM if "SIGTERM" in trigger else signal.SIGINT)
            server.proc.wait(30)
            before = server.log()
            server = launch(path, tmp_path, expect_mules=1)
        server.wait_for(lambda: len(runs(server)) >= CALLS, 60, f"{CALLS} calls run")
        time.sleep(0.3)  # a duplicate would show up now
        counts = runs(server)
        assert sorted(counts) == list(range(CALLS)), f"lost: {sorted(set(range(CALLS)) - set(counts))}"
        assert [i for i, n in counts.items() if n > 1] == []
        if kind in ("master", "stop"):
            assert "queued call(s) kept in the spool" in before + server.log()
        # And the next call goes through as always.
        assert server.get("/ping-mule") == (200, True)
        server.wait_for(lambda: any(r["i"] == -1 for r in server.lines("work")), 30, "a call after the restart")
    finally:
        server.stop()


UNRUNNABLE = '''
import uwsgi
from uwsgiconf_mules.protocol import envelope as _protocol


@route("/unrunnable")
def unrunnable(query):
    return [uwsgi.mule_msg(_protocol.encoder("app:no_such_task")((1,), {}), 1),
            uwsgi.mule_msg(_protocol.HEADER + bytes(16) + b"m" + bytes(8) + b"\\x00os:system", 1)]
'''


def test_calls_that_cannot_run_are_dead_letters_and_a_killed_mule_is_reported(
        tmp_path: Path, uwsgi_server: Callable[..., Server]) -> None:
    spool = tmp_path / "spool"
    server = uwsgi_server(declaration(f"mules=1, spool_dir={str(spool)!r}"), UNRUNNABLE)
    assert server.get("/unrunnable") == (200, [True, True])
    server.wait_for(lambda: len(list((spool / "dead").iterdir())) == 2, what="two dead letters")
    notes = sorted((spool / "dead" / name).read_bytes().split(b"\n")[1] for name in os.listdir(spool / "dead"))
    assert notes[0].startswith(b"unknown task app:no_such_task")
    assert notes[1].startswith(b"untrusted: not sent by this uWSGI instance")
    pid = server.mule_pids()[1]
    os.kill(pid, signal.SIGKILL)
    server.wait_for(lambda: server.mule_pids()[1] != pid, 30, "the respawn")
    server.wait_for(lambda: f"mule 1 (pid {pid}) ended without a clean stop" in server.log(), 30, "the report")


SIGNALS_UNDER_LOAD = '''
import time
import uwsgi


def on_signal(signum):
    record("signal", received=time.time())


uwsgi.register_signal(21, "mule1", on_signal)


@mule_offload()
def busy(i):
    time.sleep(0.001)


@route("/stream")
def stream(query):
    """Keep the mule's queue from running empty for about as long as asked."""
    end = time.monotonic() + float(query)
    sent = 0
    while time.monotonic() < end:
        busy(sent)
        sent += 1
    return sent


@route("/signal")
def send_signal(query):
    sent = time.time()
    uwsgi.signal(21)
    return sent
'''


def test_signals_reach_a_busy_dispatch_mule_within_100_ms(uwsgi_server: Callable[..., Server]) -> None:
    import threading

    server = uwsgi_server(declaration("mules=1"), SIGNALS_UNDER_LOAD)
    streaming = threading.Thread(target=server.get, args=("/stream?6", 60))
    streaming.start()
    try:
        time.sleep(1.0)  # the queue is full by now, and stays so
        sent = [server.get("/signal")[1] for _ in range(5) if not time.sleep(0.5)]
        received = server.wait_lines("signal", 5, 30)
        assert streaming.is_alive()  # the stream was still going when the signals were handled
    finally:
        streaming.join(60)
    latencies = [r["received"] - s for r, s in zip(received, sent, strict=True)]
    assert max(latencies) < 0.1, latencies


TASKS = '''
import json, os
from uwsgiconf_mules.runtime import mule_offload


@mule_offload()
def versioned(tag):
    with open(os.path.join(os.environ["TEST_RESULTS"], "versions"), "a") as handle:
        handle.write(json.dumps({{"tag": tag, "version": {version}}}) + "\\n")
'''

DEPLOYED_APP = '''
import tasks


@route("/versioned")
def run_versioned(query):
    return tasks.versioned(query)
'''


@pytest.mark.parametrize(("mode", "extra"), [("reload", ()), ("chain", ("--lazy-apps",))])
def test_a_deploy_runs_the_new_task_version_in_the_mules(
        tmp_path: Path, uwsgi_server: Callable[..., Server], mode: str, extra: tuple[str, ...]) -> None:
    deploy = tmp_path / "deploy"
    deploy.write_text("")
    touch(deploy, ago=60)
    server = uwsgi_server(declaration(f"mules=1, deploy_touch={str(deploy)!r}, deploy_mode={mode!r}"), DEPLOYED_APP,
                          modules={"tasks": TASKS.format(version=1)}, extra_args=extra)

    def version_of(tag: str) -> int:
        line = server.wait_for(lambda: [r for r in server.lines("versions") if r["tag"] == tag], 30, tag)
        return int(line[0]["version"])

    assert server.get("/versioned?before") == (200, True)
    assert version_of("before") == 1
    app_dir = next(path for path in tmp_path.iterdir() if (path / "tasks.py").exists())
    (app_dir / "tasks.py").write_text(TASKS.format(version=2))
    time.sleep(1.5)  # uWSGI's master reads the files' times in its first cycles, after start
    touch(deploy)
    wait_respawned(server, 2)
    server.wait_for(lambda: server.get("/versioned?after")[0] == 200, 30, "the app after the deploy")
    assert version_of("after") == 2
