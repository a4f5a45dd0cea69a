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
