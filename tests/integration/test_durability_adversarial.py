"""Adversarial checks on a real uWSGI: durability across reloads under load, trust of the spool, mule start."""

from __future__ import annotations

import collections
import contextlib
import marshal
import os
import pickle
import signal
import threading
import time
from pathlib import Path

import pytest

from support.harness import APP_PRELUDE, Server, compile_config, declaration, launch

pytestmark = pytest.mark.integration

APP = '''
import time


@mule_offload({target!r})
def work(i):
    time.sleep({cost})
    record("work", i=i)


@route("/fill")
def fill(query):
    start, count = map(int, query.split(","))
    return sum(work(i) for i in range(start, start + count))


@route("/burst")
def burst(query):
    """Keep offloading while a reload happens: record what the sender was told True for."""
    start, count, pause = query.split(",")
    sent = 0
    for i in range(int(start), int(start) + int(count)):
        if work(i):
            record("sent", i=i)
            sent += 1
        time.sleep(float(pause))
    return sent
'''


def start(tmp_path: Path, params: str, *, target: object = 1, cost: float = 0.02, extra: tuple[str, ...] = (),
          mules: int = 1) -> Server:
    (tmp_path / "uwsgicfg.py").write_text(declaration(params))
    (tmp_path / "app.py").write_text(APP_PRELUDE + APP.format(target=target, cost=cost))
    path, compiled = compile_config(tmp_path)
    assert compiled.returncode == 0, compiled.stderr
    return launch(path, tmp_path, expect_mules=mules, extra_args=extra)


def runs(server: Server) -> collections.Counter[int]:
    return collections.Counter(r["i"] for r in server.lines("work"))


def spawns(server: Server) -> int:
    return server.log().count("spawned uWSGI mule ")


def check(server: Server, expected: set[int], timeout: float = 60) -> None:
    with contextlib.suppress(AssertionError):
        server.wait_for(lambda: expected <= set(runs(server)), timeout, f"{len(expected)} calls run")
    time.sleep(0.5)
    counts = runs(server)
    lost = sorted(expected - set(counts))
    dup = sorted(i for i, n in counts.items() if n > 1)
    assert (len(lost), len(dup)) == (0, 0), f"lost {len(lost)}: {lost[:20]}; duplicated {len(dup)}: {dup[:20]}"


def spool_params(tmp_path: Path, more: str = "") -> str:
    return f"spool_dir={str(tmp_path / 'spool')!r}, reload_mercy=20{more}"


# 1. Durability -------------------------------------------------------------------------------

def test_reload_while_a_request_is_still_sending(tmp_path: Path) -> None:
    server = start(tmp_path, "mules=1, " + spool_params(tmp_path), cost=0.001)
    try:
        result: list[object] = []
        thread = threading.Thread(target=lambda: result.append(server.get("/burst?0,300,0.01", 60)))
        thread.start()
        time.sleep(0.5)
        os.kill(server.proc.pid, signal.SIGHUP)
        thread.join(60)
        sent = {r["i"] for r in server.lines("sent")}
        assert result and result[0] == (200, len(sent))
        check(server, sent)
    finally:
        server.stop()


def test_farm_of_two_full_queue_sighup(tmp_path: Path) -> None:
    server = start(tmp_path, "mules=2, farms=[section.workers.mule_farm('f', [1, 2])], " + spool_params(tmp_path),
                   target="f", mules=2)
    try:
        told = server.get("/fill?0,500")
        assert told[0] == 200
        time.sleep(0.2)
        os.kill(server.proc.pid, signal.SIGHUP)
        server.wait_for(lambda: server.log().count("spawned uWSGI mule 2 ") >= 2, 30, "respawn")
        check(server, set(range(told[1])))
    finally:
        server.stop()


def write_spool(spool: Path, count: int, key: str = "app:work") -> None:
    for part in ("queue", "claimed", "dead", "tmp", "mules"):
        (spool / part).mkdir(parents=True, exist_ok=True, mode=0o700)
    for i in range(count):
        payload = b"m" + key.encode() + b"\x00" + marshal.dumps((i,))
        (spool / "queue" / f"{i:020d}-1-{i:08d}.call").write_bytes(b"UCMS1\nany\n" + payload)


def test_reload_during_replay_of_a_big_spool(tmp_path: Path) -> None:
    write_spool(tmp_path / "spool", 2000)
    server = start(tmp_path, "mules=1, " + spool_params(tmp_path), cost=0.002)
    try:
        server.wait_for(lambda: len(runs(server)) > 100, 30, "replay under way")
        os.kill(server.proc.pid, signal.SIGHUP)
        check(server, set(range(2000)))
    finally:
        server.stop()


def test_two_quick_sighups_with_a_full_queue(tmp_path: Path) -> None:
    server = start(tmp_path, "mules=1, " + spool_params(tmp_path))
    try:
        told = server.get("/fill?0,250")
        time.sleep(0.2)
        os.kill(server.proc.pid, signal.SIGHUP)
        time.sleep(0.3)
        os.kill(server.proc.pid, signal.SIGHUP)
        check(server, set(range(told[1])))
    finally:
        server.stop()


def test_touch_mules_reload_under_constant_load(tmp_path: Path) -> None:
    touch = tmp_path / "mr"
    touch.write_text("")
    os.utime(touch, (time.time() - 60,) * 2)
    server = start(tmp_path, f"mules=1, touch_reload={str(touch)!r}, " + spool_params(tmp_path), cost=0.001)
    try:
        time.sleep(1.5)
        result: list[object] = []
        thread = threading.Thread(target=lambda: result.append(server.get("/burst?0,400,0.005", 60)))
        thread.start()
        for _ in range(3):
            time.sleep(0.6)
            os.utime(touch, None)
            time.sleep(1.1)
        thread.join(60)
        sent = {r["i"] for r in server.lines("sent")}
        check(server, sent)
    finally:
        server.stop()


def test_lazy_apps_sighup_with_a_full_queue(tmp_path: Path) -> None:
    server = start(tmp_path, "mules=1, " + spool_params(tmp_path), extra=("--lazy-apps",))
    try:
        told = server.get("/fill?0,250")
        time.sleep(0.2)
        os.kill(server.proc.pid, signal.SIGHUP)
        check(server, set(range(told[1])))
    finally:
        server.stop()


# 2. Trust ------------------------------------------------------------------------------------

class _Exploit:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def test_a_spool_writable_by_others_is_not_trusted(tmp_path: Path) -> None:
    """The spool is trusted "through its directory's permissions (0700, the uWSGI user)", but an
    existing spool directory is used whatever its owner and mode: someone who created it first
    (/var/tmp/uwsgiconf-mules-<uid> is a predictable name in a world-writable directory) can put a
    call in queue/, and the mule unpickles it."""
    spool = tmp_path / "spool"
    write_spool(spool, 0)
    for path in (spool, *spool.iterdir()):
        path.chmod(0o777)  # as another local user's squatted directory would be
    marker = tmp_path / "pwned"
    forged = b"UCMS1\nany\na" + b"app:anything\x00" + pickle.dumps((_Exploit(str(marker)),))
    (spool / "queue" / "00000000000000000001-1-00000001.call").write_bytes(forged)
    if os.getuid() == 0:  # make the forged file really another user's
        os.chown(spool / "queue" / "00000000000000000001-1-00000001.call", 65534, 65534)
    server = start(tmp_path, "mules=1, " + spool_params(tmp_path))
    try:
        time.sleep(2)
        assert not marker.exists(), "a call forged in a world-writable spool ran in the mule"
    finally:
        server.stop()


# 3. Mule start -------------------------------------------------------------------------------

def test_a_stray_file_in_claimed_does_not_make_the_mule_respawn_in_a_loop(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    write_spool(spool, 3)
    (spool / "claimed" / "stray.call").write_bytes(b"junk")
    (tmp_path / "uwsgicfg.py").write_text(declaration("mules=1, " + spool_params(tmp_path)))
    (tmp_path / "app.py").write_text(APP_PRELUDE + APP.format(target=1, cost=0.001))
    path, _ = compile_config(tmp_path)
    server = launch(path, tmp_path, expect_mules=1)
    try:
        time.sleep(3)
        assert spawns(server) == 1, f"mule spawned {spawns(server)} times in 3 s"
        check(server, {0, 1, 2}, timeout=5)
    finally:
        server.stop()


def test_a_directory_in_queue_does_not_block_the_spool_forever(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    write_spool(spool, 0)
    (spool / "queue" / "00000000000000000000-0-00000000.call").mkdir()
    write_spool(spool, 3)  # named after it: replayed after it
    server = start(tmp_path, "mules=1, " + spool_params(tmp_path))
    try:
        check(server, {0, 1, 2}, timeout=5)
    finally:
        server.stop()
