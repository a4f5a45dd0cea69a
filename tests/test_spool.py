"""The spool on a real filesystem: durable writes, one claim per call, oldest first, dead letters."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from uwsgiconf_mules import _spool


@pytest.fixture
def spool(tmp_path: Path) -> _spool.Spool:
    kept = _spool.Spool(str(tmp_path / "spool"))
    kept.create()
    return kept


def test_parts_are_private_to_the_user(spool: _spool.Spool) -> None:
    for part in _spool.PARTS:
        assert os.stat(spool.part(part)).st_mode & 0o777 == 0o700


def test_calls_are_claimed_once_oldest_first_and_only_for_their_targets(spool: _spool.Spool) -> None:
    for i, note in enumerate(["mule:1", "farm:fast", _spool.ANY, "mule:2", "farm:slow"]):
        spool.write("queue", f"ak:{i}\x00".encode(), note)
    mine = frozenset({"mule:1", "farm:fast", _spool.ANY})
    first, other = spool.claim(mine), spool.claim(mine)
    path, payload = next(first)
    assert payload == b"ak:0\x00"
    assert [p for _, p in other] == [b"ak:1\x00", b"ak:2\x00"]  # the one claimed first is skipped
    assert list(first) == []
    spool.done(path)
    assert sorted(_spool.read(p)[0] for p in spool.files("queue")) == ["farm:slow", "mule:2"]
    assert len(spool.files("claimed")) == 2


def test_a_write_interrupted_before_its_rename_leaves_nothing_a_mule_would_run(spool: _spool.Spool) -> None:
    # Killed mid-write: the partial file is in tmp/, never in queue/.
    code = ("import os, sys; from uwsgiconf_mules import _spool\n"
            "os.fsync = lambda fd: os._exit(9)\n"
            f"_spool.Spool({spool.path!r}).write('queue', b'a' * 100000)\n")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 9
    assert spool.files("queue") == [] and len(os.listdir(spool.part("tmp"))) == 1


def test_a_call_left_by_a_dead_mule_becomes_a_dead_letter_never_queued_again(spool: _spool.Spool) -> None:
    spool.write("queue", b"ak:x\x00")
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    dead_pid = int(proc.stdout)
    queued = spool.files("queue")[0]
    os.rename(queued, os.path.join(spool.part("claimed"), f"{dead_pid}-{os.path.basename(queued)}"))
    orphans = spool.orphans()
    assert len(orphans) == 1
    spool.bury(orphans[0], "the mule running it died")
    assert spool.files("queue") == [] and spool.files("claimed") == []
    assert _spool.read(spool.files("dead")[0]) == ("the mule running it died", b"ak:x\x00")


def test_other_files_are_not_spool_files(spool: _spool.Spool) -> None:
    path = Path(spool.part("queue")) / "1-2-3.call"
    path.write_bytes(b"not a spool file")
    with pytest.raises(ValueError, match="not a spool file"):
        _spool.read(str(path))
    assert list(spool.claim(frozenset({_spool.ANY}))) == []  # claimed, then set aside as a dead letter
    assert _spool.read(spool.files("dead")[0])[0].startswith("unreadable spool file")


@pytest.mark.parametrize("spoil", ["group-writable", "another user's", "a link", "below a world-writable directory"])
def test_a_spool_others_could_change_is_refused(tmp_path: Path, spoil: str) -> None:
    path = tmp_path / "shared" / "spool"
    path.parent.mkdir()
    if spoil == "below a world-writable directory":
        path.parent.chmod(0o777)  # no sticky bit: anyone could rename the spool away
    elif spoil == "a link":
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        path.symlink_to(tmp_path / "elsewhere")
    else:
        path.mkdir(mode=0o700)
        if spoil == "group-writable":
            path.chmod(0o770)
        elif os.geteuid() == 0:
            os.chown(path, 65534, 65534)
        else:
            pytest.skip("making a directory of another user's needs root")
    with pytest.raises(PermissionError, match=r"^spool: "):
        _spool.Spool(str(path)).create()


def test_a_sticky_world_writable_parent_is_fine_and_foreign_files_are_ignored(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # as /tmp and /var/tmp
    spool = _spool.Spool(str(shared / "spool"))
    spool.create()
    assert os.stat(spool.path).st_mode & 0o777 == 0o700
    os.mkdir(os.path.join(spool.part("queue"), "0-0-0.call"))  # not a regular file
    spool.write("queue", b"ak:x\x00")
    if os.geteuid() == 0:
        foreign = Path(spool.part("queue")) / "1-1-1.call"
        foreign.write_bytes(_spool.MAGIC + b"any\nak:forged\x00")
        os.chown(foreign, 65534, 65534)
    assert [payload for _, payload in spool.claim(frozenset({_spool.ANY}))] == [b"ak:x\x00"]
