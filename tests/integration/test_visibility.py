"""Visibility on a real uWSGI: counters read back from the stats server, queue depth, failures
reported with their context and passed to the on_failure hook, and ``uwsgiconf-mules top``."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from support.harness import BIN, WORKER_READY, Server
from uwsgiconf_mules.cli.top import read_stats

APP = '''
import time

@mule_offload()
def ok(i):
    record("ok", i=i)


@mule_offload()
def fail(i, text="x"):
    raise ValueError(f"boom {i}")


@mule_offload("pair")
def on_farm(i):
    record("farm", i=i)


@mule_offload()
def hold(path):
    """Runs until `path` exists."""
    record("holding")
    deadline = time.monotonic() + 30
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    record("held")


@mule_offload()
def nap(seconds):
    time.sleep(seconds)
    record("napped")


@route("/nap")
def send_nap(query):
    return nap(float(query))


@route("/ok")
def send_ok(query):
    return sum(ok(i) for i in range(int(query)))


@route("/fail")
def send_fail(query):
    return sum(fail(i) for i in range(int(query))) + fail(-1, text="k" * 1000)


@route("/farm")
def send_farm(query):
    return sum(on_farm(i) for i in range(int(query)))


@route("/hold")
def send_hold(query):
    return hold(query)


@mule_offload()
def interrupt(i):
    raise KeyboardInterrupt(f"stop {i}")


@route("/interrupt")
def send_interrupt(query):
    return interrupt(int(query))


@route("/message")
def send_message(query):
    return Mule(3).send("hello")
'''

HOOKS = '''
import json
import os
import signal
import socket
import os
import signal


def report(key, args, kwargs, exc, mule_id):
    with open(os.path.join(os.environ["TEST_RESULTS"], "hook"), "a") as handle:
        handle.write(json.dumps({"key": key, "args": list(args), "kwargs": kwargs, "type": type(exc).__name__,
                                 "message": str(exc), "mule": mule_id}) + "\\n")


def broken(key, args, kwargs, exc, mule_id):
    raise RuntimeError("the hook itself fails")
'''

READER = '''
from uwsgiconf_mules.runtime import Mule

def run():
    while True:
        Mule.get_message()
'''


def config(stats: str, on_failure: str = "hooks:report", more: str = "") -> str:
    return f'''
from uwsgiconf_mules import Section
section = Section()
workers = section.workers
workers.set_mules_params(mules=[None, None, 'reader:run'], farms=workers.mule_farm('pair', [1, 2]),
                         stats={stats!r}, on_failure={on_failure!r}{more})
uwsgi_configuration = section.as_configuration()
'''


def metrics(server: Server, stats: str) -> dict[str, int]:
    data = read_stats(stats)
    return {name: value["value"] for name, value in data["metrics"].items()
            if name.startswith(("mule.", "farm."))}


def wait_metrics(server: Server, stats: str, expected: dict[str, int]) -> dict[str, int]:
    def matches() -> dict[str, int] | None:
        found = metrics(server, stats)
        return found if all(found.get(name) == value for name, value in expected.items()) else None

    try:
        return server.wait_for(matches, what=f"metrics {expected}")  # type: ignore[no-any-return]
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nmetrics: {metrics(server, stats)}") from None


def start(uwsgi_server: Callable[..., Server], tmp_path: Path, on_failure: str = "hooks:report",
          ) -> tuple[Server, str]:
    stats = str(tmp_path / "stats.sock")
    server = uwsgi_server(config(stats, on_failure), APP, modules={"hooks": HOOKS, "reader": READER})
    return server, stats


def test_counters_read_back_from_the_stats_server(uwsgi_server: Callable[..., Server], tmp_path: Path) -> None:
    server, stats = start(uwsgi_server, tmp_path)
    # -1 until the mule has found its queue (its first wait for messages), then the bytes waiting.
    assert server.wait_for(lambda: metrics(server, stats)["mule.1.queue_bytes"] in (-1, 0), what="a queue depth")
    assert server.get("/ok?20") == (200, 20)
    assert server.get("/fail?3") == (200, 4)
    assert server.get("/farm?6") == (200, 6)
    assert server.get("/message") == (200, True)
    server.wait_lines("ok", 20)
    server.wait_lines("farm", 6)
    farm_runs = {1: 0, 2: 0}
    for line in server.lines("farm"):
        farm_runs[line["mule"]] += 1
    found = wait_metrics(server, stats, {
        "mule.1.queued": 24, "farm.pair.queued": 6, "mule.3.queued": 1,
        "mule.1.started": 24 + farm_runs[1], "mule.1.succeeded": 20 + farm_runs[1], "mule.1.failed": 4,
        "mule.2.started": farm_runs[2], "mule.2.succeeded": farm_runs[2], "mule.2.failed": 0,
        "mule.1.pid": server.mule_pids()[1], "mule.2.pid": server.mule_pids()[2],
        "mule.1.running_ms": 0, "mule.1.queue_bytes": 0,
    })
    assert found["mule.1.spooled"] == found["mule.1.dead"] == 0
    # Run time: a call of 0.3 s, alone (the time of a call runs until the queue runs empty).
    assert server.get("/nap?0.3") == (200, True)
    server.wait_lines("napped", 1)
    ran = wait_metrics(server, stats, {"mule.1.started": 25 + farm_runs[1], "mule.1.running_ms": 0})
    assert 300 <= ran["mule.1.run_ms"] - found["mule.1.run_ms"] < 3000
    assert 300 <= top_json(server)["mules"][0]["tasks"]["app:nap"]["run_ms"] < 3000


def test_queue_depth_and_the_running_call(uwsgi_server: Callable[..., Server], tmp_path: Path) -> None:
    server, stats = start(uwsgi_server, tmp_path)
    assert server.get("/ok?1") == (200, 1)  # the mule finds its queues with its first call
    server.wait_lines("ok", 1)
    release = tmp_path / "release"
    assert server.get(f"/hold?{release}") == (200, True)
    server.wait_lines("holding", 1)
    try:
        assert server.get("/ok?10") == (200, 10)
        wait_metrics(server, stats, {"mule.1.queue_bytes": 10 * 768})  # small messages: 768 bytes each
        mule = top_json(server)["mules"][0]
        assert mule["running"] == "app:hold"
        assert mule["queue_bytes"] == 10 * 768
        server.wait_for(lambda: top_json(server)["mules"][0]["running_ms"] > 0, what="running_ms")
    finally:
        release.write_text("")  # else the mule finishes its call, and stops, only after 30 s
    server.wait_lines("ok", 11)
    wait_metrics(server, stats, {"mule.1.queue_bytes": 0, "mule.1.running_ms": 0, "mule.1.started": 12})
    assert top_json(server)["mules"][0]["running"] is None


def test_a_failure_reaches_the_hook_and_the_log(uwsgi_server: Callable[..., Server], tmp_path: Path) -> None:
    server, _ = start(uwsgi_server, tmp_path)
    assert server.get("/fail?2") == (200, 3)
    hooked = server.wait_lines("hook", 3)
    assert hooked[0] == {"key": "app:fail", "args": [0], "kwargs": {}, "type": "ValueError",
                         "message": "boom 0", "mule": 1}
    assert hooked[2]["kwargs"] == {"text": "k" * 1000}
    log = server.log()
    assert "uwsgiconf-mules: task app:fail failed in mule 1 after 0.0" in log
    assert "s: ValueError: boom 1; arguments (1)" in log
    long_line = next(line for line in log.splitlines() if "boom -1" in line)
    assert "arguments (-1, text='kkkk" in long_line
    assert len(long_line) < 500
    assert "Traceback" in log


def test_a_call_that_raises_keyboardinterrupt_is_reported_before_it_stops_the_mule(
        uwsgi_server: Callable[..., Server], tmp_path: Path) -> None:
    server, _ = start(uwsgi_server, tmp_path)
    pids = server.mule_pids()
    assert server.get("/interrupt?7") == (200, True)
    [hooked] = server.wait_lines("hook", 1)
    assert hooked == {"key": "app:interrupt", "args": [7], "kwargs": {}, "type": "KeyboardInterrupt",
                      "message": "stop 7", "mule": 1}
    assert "uwsgiconf-mules: task app:interrupt failed in mule 1 after 0.0" in server.log()
    server.wait_for(lambda: server.mule_pids().get(1) not in (None, pids[1]), what="mule 1 respawned")
    assert server.get("/ok?1") == (200, 1)
    server.wait_lines("ok", 1)


def test_a_failing_hook_never_kills_the_mule(uwsgi_server: Callable[..., Server], tmp_path: Path) -> None:
    server, _ = start(uwsgi_server, tmp_path, on_failure="hooks:broken")
    pids = server.mule_pids()
    assert server.get("/fail?1") == (200, 2)
    assert server.get("/ok?1") == (200, 1)
    server.wait_lines("ok", 1)
    assert "the on_failure hook failed on task app:fail (RuntimeError: the hook itself fails)" in server.log()
    assert server.mule_pids() == pids


def top_json(server: Server) -> dict[str, Any]:
    proc = subprocess.run([str(BIN / "uwsgiconf-mules"), "top", "--once", "--json", "uwsgicfg.py"],
                          cwd=server.directory, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def test_top_under_load(uwsgi_server: Callable[..., Server], tmp_path: Path) -> None:
    server, _ = start(uwsgi_server, tmp_path)
    # the farm's calls of start() are read: its gauge (flushed once a second) says so before the load
    server.wait_for(lambda: top_json(server)["farms"][0]["queue_bytes"] == 0, what="the farm's queue measured empty")
    stop = threading.Event()
    sent = []

    def load() -> None:
        while not stop.is_set():
            with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/ok?50", timeout=30) as response:
                sent.append(int(response.read()))

    threads = [threading.Thread(target=load) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        server.wait_for(lambda: len(sent) >= 2, what="load")

        def counting() -> dict[str, Any] | None:
            view = top_json(server)
            return view if view["mules"][0]["queued"] and view["mules"][0]["started"] else None

        views = [server.wait_for(counting, what="counts under load") for _ in range(2)]
        assert all(thread.is_alive() for thread in threads)  # still under load
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    pids = server.mule_pids()
    for view in views:
        assert [mule["id"] for mule in view["mules"]] == [1, 2, 3]
        assert [mule["kind"] for mule in view["mules"]] == ["dispatch", "dispatch", "programmed"]
        assert [mule["farms"] for mule in view["mules"]] == [["pair"], ["pair"], []]
        assert view["mules"][0]["pid"] == pids[1]
        assert view["farms"] == [{"name": "pair", "mules": [1, 2], "queued": 0, "queue_bytes": 0}]
    assert 0 < views[0]["mules"][0]["queued"] <= views[1]["mules"][0]["queued"]
    assert views[1]["mules"][0]["started"] > 0
    total = sum(sent)
    server.wait_lines("ok", total)

    def counted() -> dict[str, Any] | None:  # both sides flush once a second: the one may lag the other
        view = top_json(server)
        return view if view["mules"][0]["started"] == total == view["mules"][0]["queued"] else None

    final = server.wait_for(counted, what="all calls counted")
    assert final["mules"][0]["tasks"]["app:ok"] == {"started": total, "succeeded": total, "failed": 0,
                                                    "run_ms": final["mules"][0]["tasks"]["app:ok"]["run_ms"]}
    assert final["mules"][0]["queued"] == total


def test_uwsgi_pushes_the_counters_with_no_code_of_ours(uwsgi_server: Callable[..., Server], tmp_path: Path) -> None:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(20)
    port = receiver.getsockname()[1]
    pushed = config(str(tmp_path / "stats.sock")).replace("uwsgi_configuration =", (
        "section.monitoring.register_stats_pusher(section.monitoring.pushers.socket("
        f"'127.0.0.1:{port}', prefix='myapp'))\n"
        "section.monitoring.set_stats_params(push_interval=1)\n"
        "uwsgi_configuration ="))
    server = uwsgi_server(pushed, APP, modules={"hooks": HOOKS, "reader": READER})
    with receiver:
        assert server.get("/ok?5") == (200, 5)
        server.wait_lines("ok", 5)
        seen: dict[str, str] = {}
        deadline = time.monotonic() + 20
        while seen.get("myapp.mule.1.succeeded") != "5" or seen.get("myapp.mule.1.queued") != "5":
            assert time.monotonic() < deadline, seen
            name, _, value = receiver.recv(4096).decode().partition(" ")
            seen[name] = value.partition(" ")[2]  # "<type> <value>"
    assert seen["myapp.farm.pair.queued"] == "0"


WORKERS_ONLY = '''
import uwsgi

from uwsgiconf_mules.runtime import mule_offload

if uwsgi.worker_id():  # registered in the workers only: the mule refuses its calls, as dead letters
    @mule_offload()
    def nowhere():
        pass
'''

SPOOL_APP = APP + '''

@route("/nowhere")
def send_nowhere(query):
    import workers_only

    return workers_only.nowhere()
'''


def test_spooled_calls_and_dead_letters_are_counted(uwsgi_server: Callable[..., Server], tmp_path: Path) -> None:
    stats, reload_file, release = str(tmp_path / "stats.sock"), tmp_path / "mules-reload", tmp_path / "release"
    reload_file.write_text("")
    os.utime(reload_file, (time.time() - 60,) * 2)  # so that touching it now changes its second
    more = f", touch_reload={str(reload_file)!r}, spool_dir={str(tmp_path / 'spool')!r}"
    server = uwsgi_server(config(stats, more=more), SPOOL_APP,
                          modules={"hooks": HOOKS, "reader": READER, "workers_only": WORKERS_ONLY})
    time.sleep(1.5)  # uWSGI's master reads the touch files' times in its first cycles
    assert server.get("/nowhere") == (200, True)
    wait_metrics(server, stats, {"mule.1.dead": 1, "mule.1.started": 0})
    assert server.get(f"/hold?{release}") == (200, True)
    server.wait_lines("holding", 1)
    assert server.get("/ok?5") == (200, 5)
    since = server.log_size()
    reload_file.touch()
    try:
        server.wait_for(lambda: "mules reload !!!" in server.log(since), what="the mules reload")
        time.sleep(0.5)  # the stop signal reaches the mule, which finishes its call and spools the rest
    finally:
        release.write_text("")
    server.wait_lines("ok", 5)  # run by the next mule, from the spool
    wait_metrics(server, stats, {"mule.1.spooled": 5, "mule.1.started": 6, "mule.1.succeeded": 6,
                                 "mule.1.dead": 1, "mule.1.queued": 7})
    assert "5 queued call(s) kept in the spool" in server.log()
    # The per-task counters continue across the respawn: the call held ran in the mule before it.
    def succeeded() -> dict[str, int] | None:
        tasks = top_json(server)["mules"][0]["tasks"]
        return {key: counts["succeeded"] for key, counts in tasks.items()} if "app:ok" in tasks else None

    assert server.wait_for(succeeded, what="the new mule's status file") == {"app:hold": 1, "app:ok": 5}


def test_calls_that_waited_for_room_are_counted_once(uwsgi_server: Callable[..., Server], tmp_path: Path) -> None:
    server, stats = start(uwsgi_server, tmp_path)
    release, calls = tmp_path / "release", 600  # more than the queue holds (about 278 small messages)
    assert server.get(f"/hold?{release}") == (200, True)
    server.wait_lines("holding", 1)
    sent: list[object] = []
    sender = threading.Thread(target=lambda: sent.append(server.get(f"/ok?{calls}")))
    sender.start()
    try:
        server.wait_for(lambda: "MULE MSG QUEUE IS FULL" in server.log(), what="a full queue")
    finally:
        release.write_text("")
        sender.join(30)
    assert sent == [(200, calls)]
    server.wait_lines("ok", calls)
    wait_metrics(server, stats, {"mule.1.queued": calls + 1, "mule.1.started": calls + 1,
                                 "mule.1.succeeded": calls + 1, "mule.1.queue_bytes": 0})


def test_a_worker_that_ends_flushes_its_counts(uwsgi_server: Callable[..., Server], tmp_path: Path) -> None:
    stats, fifo = str(tmp_path / "stats.sock"), tmp_path / "fifo"
    server = uwsgi_server(config(stats), APP, modules={"hooks": HOOKS, "reader": READER},
                          extra_args=("--master-fifo", str(fifo)))
    assert server.get("/ok?5") == (200, 5)
    # Once the worker logged the request (uWSGI skips Python's exit handlers for a worker that is
    # busy when it exits), reload the workers: well within the second before their first flush.
    server.wait_for(lambda: "GET /ok?5 " in server.log(), what="the request's log line")
    fifo.write_bytes(b"w")
    server.wait_lines("ok", 5)
    # New workers accepting (one stopped before its accepting loop would outlive the test's stop).
    server.wait_for(lambda: server.ready_count(WORKER_READY) >= 4, what="the workers' reload")
    wait_metrics(server, stats, {"mule.1.queued": 5, "mule.1.succeeded": 5})


def test_top_redraws_until_interrupted(uwsgi_server: Callable[..., Server], tmp_path: Path) -> None:
    server, _ = start(uwsgi_server, tmp_path)
    proc = subprocess.Popen([str(BIN / "uwsgiconf-mules"), "top", "--interval", "0.2", "uwsgicfg.py"],
                            cwd=server.directory, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    try:
        time.sleep(1.5)
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    frames = out.split("\x1b[H\x1b[2J")[1:]  # each view starts by moving home and clearing the screen
    assert len(frames) >= 3
    assert all(frame.splitlines()[2].split()[:3] == ["MULE", "PID", "KIND"] for frame in frames)
