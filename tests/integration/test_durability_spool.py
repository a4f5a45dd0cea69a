"""The spool under attack on a real uWSGI: a spool it cannot trust or fill is said to the senders
(nothing is told True that a stop would lose), foreign bytes never fill it, and what went missing
between two lives is said at the next start."""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support.harness import APP_PRELUDE, Server, compile_config, declaration, free_port, launch
from uwsgiconf_mules.cli.top import read_stats

pytestmark = pytest.mark.integration

APP = '''
import time

from uwsgiconf_mules.protocol import envelope as _protocol
from uwsgiconf_mules.errors import DeliveryError


@mule_offload(1)
def work(i):
    time.sleep(0.02)
    record("work", i=i)


@route("/fill")
def fill(query):
    """Offload calls; say which the sender was told True for, and why the others were refused."""
    start, count = map(int, query.split(","))
    told, refused = [], []
    for i in range(start, start + count):
        try:
            if work(i):
                told.append(i)
        except DeliveryError as exc:
            refused.append(str(exc))
    return {"told": told, "refused": len(refused), "why": refused[:1]}


@route("/relay")
def relay(query):
    """Relay a client's bytes to the mule, as an app may (Mule.send never runs them): here bytes
    that start like an envelope, with a wrong token."""
    count, size = map(int, query.split(","))
    body = _protocol.HEADER + b"x" * size
    return sum(bool(Mule(1).send(body)) for _ in range(count))
'''

CALLS = 250
OTHER_UID = 65534  # nobody


def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: uWSGI must run as root, with directories of another user's")


def start(tmp_path: Path, spool: Path, more: str = "") -> tuple[Server, Path]:
    (tmp_path / "uwsgicfg.py").write_text(declaration(f"mules=1, spool_dir={str(spool)!r}, reload_mercy=20{more}"))
    (tmp_path / "app.py").write_text(APP_PRELUDE + APP)
    path, compiled = compile_config(tmp_path)
    assert compiled.returncode == 0, compiled.stderr
    return launch(path, tmp_path, expect_mules=1), path


def runs(server: Server) -> collections.Counter[int]:
    return collections.Counter(r["i"] for r in server.lines("work"))


def fill(server: Server, start: int, count: int = CALLS) -> dict[str, Any]:
    status, answer = server.get(f"/fill?{start},{count}", 60)
    assert status == 200, answer
    return dict(answer)


def stop(server: Server) -> str:
    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait(30)
    return server.log()


def figures(told: set[int], server: Server, timeout: float = 60) -> tuple[int, int, int]:
    """(told, ran, lost) once the calls told True had their chance to run."""
    with contextlib.suppress(AssertionError):
        server.wait_for(lambda: told <= set(runs(server)), timeout, f"{len(told)} calls run")
    time.sleep(0.3)
    counts = runs(server)
    assert [i for i, n in counts.items() if n > 1] == [], "a call ran twice"
    return len(told), len(told & set(counts)), len(told - set(counts))


@pytest.mark.parametrize("spoil", ["mode 0777", "a link", "another user's"])
def test_a_spool_the_mules_refuse_makes_senders_fail_until_it_is_fixed(tmp_path: Path, spoil: str) -> None:
    spool = tmp_path / "spool"
    real = tmp_path / "real-spool"
    real.mkdir(mode=0o700)
    if spoil == "mode 0777":
        spool.mkdir()
        spool.chmod(0o777)
    elif spoil == "a link":
        spool.symlink_to(real)
    else:
        needs_root()
        spool.mkdir(mode=0o700)
        os.chown(spool, OTHER_UID, OTHER_UID)
    server, path = start(tmp_path, spool)
    try:
        refused = fill(server, 0)
        assert (refused["told"], refused["refused"]) == ([], CALLS)
        assert f"spool: {spool}" in refused["why"][0] and "none is sent" in refused["why"][0]
        if spoil == "a link":
            spool.unlink()
        else:
            shutil.rmtree(spool)
        time.sleep(2.5)  # the workers check it once a second
        told = fill(server, CALLS)
        assert (len(told["told"]), told["refused"]) == (CALLS, 0)
        time.sleep(0.2)
        stop(server)
        server = launch(path, tmp_path, expect_mules=1)
        assert figures(set(told["told"]), server) == (CALLS, CALLS, 0)
    finally:
        server.stop()


def test_the_spool_unusable_gauge_reads_1_while_the_spool_is_spoiled_and_0_once_fixed(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    spool.chmod(0o777)
    stats = f"127.0.0.1:{free_port()}"
    server, _ = start(tmp_path, spool, f", stats={stats!r}")

    def gauge(value: int) -> None:
        server.wait_for(lambda: read_stats(stats)["metrics"]["spool.unusable"]["value"] == value, 10,
                        f"spool.unusable = {value}")

    try:
        gauge(1)  # the mule says it before any worker sent
        assert fill(server, 0)["refused"] == CALLS
        gauge(1)
        shutil.rmtree(spool)
        gauge(0)
        time.sleep(2.5)  # every worker checks once a second
        assert fill(server, CALLS)["refused"] == 0
        spool.mkdir(exist_ok=True)
        spool.chmod(0o777)  # spoiled again while running: the workers' watchers and the mule say it
        gauge(1)
        time.sleep(2.5)
        assert fill(server, 2 * CALLS)["refused"] == CALLS
    finally:
        server.stop()


def test_a_parent_squatted_by_another_user_is_refused_and_the_senders_told(tmp_path: Path) -> None:
    # Another local user made the default spool's parent first (/var/tmp/uwsgiconf-mules-0, 0755,
    # theirs): they could move the spool away between two lives. It is never used.
    needs_root()
    squatted = tmp_path / "uwsgiconf-mules-0"
    squatted.mkdir(mode=0o755)
    os.chown(squatted, OTHER_UID, OTHER_UID)
    server, _ = start(tmp_path, squatted / "0123456789abcdef")
    try:
        refused = fill(server, 0)
        assert (refused["told"], refused["refused"]) == ([], CALLS)
        assert f"{squatted} belongs to uid {OTHER_UID}" in refused["why"][0]
        assert list(squatted.iterdir()) == []
        assert server.log().count(f"cannot use the spool {squatted}") == 1
    finally:
        server.stop()


def test_a_parent_that_is_another_users_link_is_refused_and_the_senders_told(tmp_path: Path) -> None:
    # Another local user made the default spool's parent first as a link to a root directory: they
    # could point it elsewhere between two lives, and every call kept would be gone. It is never used.
    needs_root()
    (tmp_path / "root-dir").mkdir(mode=0o755)
    squatted = tmp_path / "uwsgiconf-mules-0"
    squatted.symlink_to(tmp_path / "root-dir")
    os.lchown(squatted, OTHER_UID, OTHER_UID)
    server, _ = start(tmp_path, squatted / "0123456789abcdef")
    try:
        refused = fill(server, 0)
        assert (refused["told"], refused["refused"]) == ([], CALLS)
        assert f"{squatted} is a link of uid {OTHER_UID}" in refused["why"][0]
        assert list((tmp_path / "root-dir").iterdir()) == []
    finally:
        server.stop()


@contextlib.contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    needs_root()
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "disk", "64k") as disk:
        yield disk


def test_a_stop_on_a_disk_that_filled_up_says_what_it_lost_at_the_next_start(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "disk", "4m") as disk:
        server, path = start(tmp_path, disk / "spool")
        try:
            told = fill(server, 0)
            assert len(told["told"]) == CALLS  # room enough for what the queue holds
            disk_info = os.statvfs(disk)
            filler = disk / "filler"
            with open(filler, "wb") as handle:  # something else fills the disk: 256 KiB are left
                handle.write(b"\0" * (disk_info.f_bavail * disk_info.f_frsize - 256 * 1024))
            before = stop(server)
            lost = [line for line in before.splitlines() if "LOST: the disk of the spool" in line]
            assert len(lost) == 1, before[-3000:]
            count = int(lost[0].split("; ")[1].split()[0])
            filler.unlink()
            server = launch(path, tmp_path, expect_mules=1)
            said = f"the last stop of mule 1 could not keep {count} queued call(s): the disk of the spool"
            server.wait_for(lambda: said in server.log(), 10, said)
            server.wait_for(lambda: "running " in server.log() and not list((disk / "spool" / "queue").iterdir()), 30,
                            "the calls kept run")
            ran = figures(set(told["told"]), server, timeout=1)
            print(f"told / ran / lost: {ran}, the stop said it lost {count}")
            assert ran[0] == CALLS and 0 < ran[2] <= count  # the calls it lost had a part run before the stop
        finally:
            server.stop()


def test_a_spool_on_a_disk_too_small_for_the_queues_makes_senders_fail(tmp_path: Path, small_disk: Path) -> None:
    server, _ = start(tmp_path, small_disk / "spool")
    try:
        refused = fill(server, 0)
        assert (refused["told"], refused["refused"]) == ([], CALLS)
        assert f"the disk of {small_disk / 'spool'} has " in refused["why"][0]
    finally:
        server.stop()


def test_foreign_bytes_relayed_never_fill_the_spool_and_are_said_once_per_burst(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    server, path = start(tmp_path, spool)
    try:
        assert server.get("/relay?300,200000", 120) == (200, 300)  # 60 MB of forged envelopes
        server.wait_for(lambda: "more message(s) refused" in server.log(), 30, "the burst's summary")
        dead = sum(entry.stat().st_size for entry in (spool / "dead").iterdir())
        assert 0 < dead < 300 * 200  # notes: size, reason, hash; not their bytes
        refusals = [line for line in server.log().splitlines() if "refused a " in line or "more message(s)" in line]
        assert len(refusals) < 20, refusals
        told = fill(server, 0)
        time.sleep(0.2)
        before = stop(server)
        assert "LOST" not in before
        server = launch(path, tmp_path, expect_mules=1)
        assert figures(set(told["told"]), server) == (CALLS, CALLS, 0)
        assert "mule 1: running " in server.log() and " call(s) from the spool " in server.log()
        assert "uwsgiconf_mules: uwsgiconf-mules:" not in before + server.log()
    finally:
        server.stop()


@pytest.mark.parametrize("vanished", ["the calls", "the whole spool"])
def test_calls_that_vanish_between_two_lives_are_said_at_the_next_start(tmp_path: Path, vanished: str) -> None:
    spool = tmp_path / "spool"
    server, path = start(tmp_path, spool)
    try:
        fill(server, 0)
        time.sleep(0.2)
        stop(server)
        kept = list((spool / "queue").iterdir())
        assert len(kept) > CALLS // 2
        if vanished == "the calls":
            for entry in kept:
                entry.unlink()
        else:
            spool.rename(tmp_path / "moved-away")
        server = launch(path, tmp_path, expect_mules=1)
        if vanished == "the calls":
            expected = f"expected {len(kept)} kept call(s), found 0"
        else:
            expected = f"mule 1 made a new, empty spool {spool}"
        server.wait_for(lambda: expected in server.log(), 10, expected)
    finally:
        server.stop()


def test_a_reload_with_nothing_queued_says_nothing_of_the_spool(tmp_path: Path) -> None:
    server, _ = start(tmp_path, tmp_path / "spool")
    try:
        os.kill(server.proc.pid, signal.SIGHUP)
        server.wait_for(lambda: server.log().count("spawned uWSGI mule 1 ") >= 2, 30, "the respawn")
        time.sleep(0.5)
        assert "queued call(s) kept" not in server.log()
    finally:
        server.stop()


SLOW_APP = '''
import time


@mule_offload(1)
def slow(i):
    record("began", i=i)
    time.sleep(1.0)
    record("work", i=i)


@route("/slow")
def slow_calls(query):
    return sum(slow(i) for i in range(int(query)))
'''


def test_sighup_mid_call_finishes_the_call_and_keeps_the_queued_ones(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    (tmp_path / "uwsgicfg.py").write_text(declaration(f"mules=1, spool_dir={str(spool)!r}, reload_mercy=20"))
    (tmp_path / "app.py").write_text(APP_PRELUDE + SLOW_APP)
    path, compiled = compile_config(tmp_path)
    assert compiled.returncode == 0, compiled.stderr
    server = launch(path, tmp_path, expect_mules=1)
    try:
        assert server.get("/slow?5") == (200, 5)
        server.wait_for(lambda: server.lines("began"), 10, "the first call under way")
        os.kill(server.proc.pid, signal.SIGHUP)  # mid-call
        assert figures(set(range(5)), server) == (5, 5, 0)
        assert "mule 1 stopped; 4 queued call(s) kept in the spool" in server.log()
    finally:
        server.stop()


def test_files_planted_in_queue_never_run_and_are_said_once(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    for part in ("queue", "claimed", "dead", "tmp", "mules"):
        (spool / part).mkdir(parents=True, mode=0o700)
    spool.chmod(0o700)
    forged = b"UCMS1\nany\nm" + b"app:work\x00" + __import__("marshal").dumps((-7,))
    (tmp_path / "elsewhere.call").write_bytes(forged)
    (spool / "queue" / "00000000000000000001-1-00000001.call").symlink_to(tmp_path / "elsewhere.call")
    if os.geteuid() == 0:
        planted = spool / "queue" / "00000000000000000002-1-00000002.call"
        planted.write_bytes(forged)
        os.chown(planted, OTHER_UID, OTHER_UID)
    server, _ = start(tmp_path, spool)
    try:
        said = "mule 1 ignores "
        server.wait_for(lambda: said in server.log(), 10, "the planted files said")
        assert server.get("/fill?0,3")[0] == 200
        assert figures({0, 1, 2}, server) == (3, 3, 0)
        assert -7 not in runs(server)
        assert server.log().count(said) == 1
        expected = 2 if os.geteuid() == 0 else 1
        assert f"{said}{expected} file(s) in {spool / 'queue'}" in server.log()
    finally:
        server.stop()
