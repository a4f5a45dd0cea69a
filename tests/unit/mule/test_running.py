"""The record of the running call: a mapped file on the spool's disk, whose blocks are reserved."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = '''
import sys
from uwsgiconf_mules.mule import running
from uwsgiconf_mules.protocol.spool import Spool

spool = Spool(sys.argv[1])
spool.create()
mapped = running.buffer(spool, 1, 4 * 1024 * 1024)  # more than the disk has free
if mapped is None:
    print("no record")
else:
    mapped[0][:] = b"x" * len(mapped[0])  # the loop reads messages into it
    print("record")
'''


def test_a_disk_too_full_for_the_record_keeps_no_record_and_says_so_instead_of_crashing(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(disk)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        probe = subprocess.run([sys.executable, "-c", PROBE, str(disk / "spool")], capture_output=True, text=True,
                               timeout=60, stdin=subprocess.DEVNULL, check=False)
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
    assert probe.returncode == 0, (probe.returncode, probe.stderr)  # a sparse mapping died of SIGBUS (-7)
    assert probe.stdout == "no record\n"
    assert "mule 1 keeps no record of its running call (" in probe.stderr
    assert "No space left on device): a call interrupted by a kill is not reported" in probe.stderr


def _record_of(tmp_path: Path, pid: int, started: int) -> object:
    from uwsgiconf_mules.mule import running
    from uwsgiconf_mules.protocol import envelope
    from uwsgiconf_mules.protocol.spool import Spool

    spool = Spool(str(tmp_path / "spool"))
    spool.create()
    mapped = running.buffer(spool, 1, 4096)
    assert mapped is not None
    body, words = mapped
    message = envelope.encoder("shop.tasks:mail")((1,), {})
    body[:len(message)] = message
    words[running.SIZE], words[running.PID], words[running.START] = len(message), pid, started
    found = running.read(spool, 1)
    return found[0] if found is not None else None


def test_a_record_under_this_process_s_own_pid_is_a_predecessor_s(tmp_path: Path) -> None:
    # a container's restart gives the mule the pid it had: what the record names was interrupted
    assert _record_of(tmp_path, os.getpid(), 0) == os.getpid()


def test_a_record_whose_pid_is_now_an_unrelated_process_s_is_a_dead_mule_s(tmp_path: Path) -> None:
    from uwsgiconf_mules.protocol.spool import checks

    parent = os.getppid()
    assert _record_of(tmp_path, parent, checks.start_ticks(parent) + 1) == parent  # same pid, started another time
    assert _record_of(tmp_path, parent, checks.start_ticks(parent)) is None  # that mule still runs


def test_a_delayed_call_once_kept_is_no_longer_the_running_call(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # killed after _defer's rename, the next start must not write it again (a farm mate may have run it)
    from uwsgiconf_mules.mule import running
    from uwsgiconf_mules.protocol import envelope
    from uwsgiconf_mules.protocol.spool import Spool, delayed
    from uwsgiconf_mules.runtime import deferred, tasks

    for module, name in ((running, "_header"), (running, "_buffer"), (tasks, "_dead_letters")):
        monkeypatch.setattr(module, name, getattr(module, name))
    monkeypatch.setattr(deferred, "KEPT", [None])
    monkeypatch.setattr(deferred, "NOTIFY", [None])
    spool = Spool(str(tmp_path / "spool"))
    spool.create()
    tasks.set_dead_letters(spool)
    mapped = running.buffer(spool, 1, 4096)
    assert mapped is not None
    words = mapped[1]
    words[running.SIZE] = 100  # the _defer call runs
    name = delayed.name(10)
    deferred._defer("mule:1", 10, 1, envelope.stored(envelope.encoder("shop.tasks:mail")((1,), {})), name)
    assert delayed.pending(spool, "mule:1") == [name]
    assert words[running.SIZE] == 0
