"""The spool on a real filesystem: durable writes, one claim per call, oldest first, dead letters."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from uwsgiconf_mules.protocol import spool as _spool


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
    code = ("import os, sys; from uwsgiconf_mules.protocol import spool as _spool\n"
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


def _another_uid() -> int:
    if os.geteuid() != 0:
        pytest.skip("making a directory of another user's needs root")
    return 65534  # nobody


def test_a_parent_of_another_users_is_refused_whatever_its_mode(tmp_path: Path) -> None:
    # /var/tmp/uwsgiconf-mules-0 made first by another user, 0755: they can rename the spool away.
    squatted = tmp_path / "uwsgiconf-mules-0"
    squatted.mkdir(mode=0o755)
    os.chown(squatted, _another_uid(), _another_uid())
    with pytest.raises(PermissionError, match=r"^spool: .*uwsgiconf-mules-0 belongs to uid 65534, neither root"):
        _spool.Spool(str(squatted / "abc")).create()
    assert _spool.problem(str(squatted / "abc")) is not None
    assert not (squatted / "abc").exists()


def test_a_parent_that_is_another_users_link_is_refused(tmp_path: Path) -> None:
    # /var/tmp/uwsgiconf-mules-0 made first by another user as a link to a root directory (/tmp): its
    # owner could point it elsewhere between two lives, and the spool with its .stop records is gone.
    (tmp_path / "root-dir").mkdir(mode=0o755)
    squatted = tmp_path / "uwsgiconf-mules-0"
    squatted.symlink_to(tmp_path / "root-dir")
    os.lchown(squatted, _another_uid(), _another_uid())
    with pytest.raises(PermissionError, match=r"^spool: .*uwsgiconf-mules-0 is a link of uid 65534, neither root"):
        _spool.Spool(str(squatted / "abc")).create()
    assert _spool.problem(str(squatted / "abc")) is not None
    assert not (tmp_path / "root-dir" / "abc").exists()
    os.lchown(squatted, 0, 0)  # a root's link (as /var/run -> /run) is fine, and so is where it leads
    assert _spool.Spool(str(squatted / "abc")).create() is True


def test_a_link_of_the_users_own_to_below_another_users_directory_is_refused(tmp_path: Path) -> None:
    # The link itself is this user's, but it leads below a directory another user can rename away.
    squatted = tmp_path / "theirs"
    squatted.mkdir(mode=0o755)
    (squatted / "inner").mkdir(mode=0o700)
    os.chown(squatted, _another_uid(), _another_uid())
    mine = tmp_path / "mine"
    mine.symlink_to(squatted / "inner")
    with pytest.raises(PermissionError, match=r"^spool: .*theirs belongs to uid 65534, neither root"):
        _spool.Spool(str(mine / "abc")).create()
    assert _spool.problem(str(mine / "abc")) is not None
    os.chown(squatted, 0, 0)  # below root's directories, the same link is fine
    assert _spool.Spool(str(mine / "abc")).create() is True


def test_a_missing_parent_is_made_private_to_the_user(tmp_path: Path) -> None:
    spool = _spool.Spool(str(tmp_path / "uwsgiconf-mules-0" / "abc"))
    assert spool.create() is True  # a new, empty spool: said so at start
    assert os.stat(tmp_path / "uwsgiconf-mules-0").st_mode & 0o777 == 0o700
    assert spool.create() is False


def test_what_a_stop_kept_is_checked_at_the_next_start(spool: _spool.Spool) -> None:
    names = [os.path.basename(spool.write("queue", f"ak:{i}\x00".encode(), "mule:1")) for i in range(5)]
    spool.record_stop(1, names, {"the disk refused it (No space left on device)": 19})
    spool.record_stop(2, [], {})
    os.unlink(os.path.join(spool.part("queue"), names[0]))  # gone between two lives
    claimed = os.path.join(spool.part("claimed"), f"{os.getpid()}-{names[1]}")
    os.rename(os.path.join(spool.part("queue"), names[1]), claimed)  # claimed: still there
    assert spool.check_stops() == [(1, 5, 4, {"the disk refused it (No space left on device)": 19}), (2, 0, 0, {})]
    assert spool.check_stops() == []  # read once


def test_the_problems_of_a_spool_are_found_without_making_anything(tmp_path: Path) -> None:
    path = tmp_path / "spool"
    assert _spool.problem(str(path)) is None  # missing, but it can be made
    assert not path.exists()
    _spool.Spool(str(path)).create()
    assert _spool.problem(str(path)) is None
    (path / "queue").chmod(0o777)
    assert _spool.problem(str(path)) == f"spool: {path / 'queue'} can be written by others (mode 777)"
    (path / "queue").chmod(0o700)
    assert _spool.problem(str(path), needed=1 << 62).startswith(f"spool: the disk of {path} has ")
    path.rename(tmp_path / "elsewhere")
    path.symlink_to(tmp_path / "elsewhere")
    assert _spool.problem(str(path)) == f"spool: {path} is not a directory (a link or a file)"


def test_dead_letters_keep_their_quota_and_untrusted_bytes_are_not_kept(tmp_path: Path) -> None:
    spool = _spool.Spool(str(tmp_path / "spool"), limit=8 * 10_000)  # dead/: 10,000 bytes
    spool.create()
    said: list[str] = []
    letters = _spool.DeadLetters(spool, said.append)
    forged = b"\xfeUCM\x03" + b"x" * 200_000
    for _ in range(50):
        letters.keep(b"", _spool.untrusted_note(forged, "not sent by this uWSGI instance"), durable=False)
    note, payload = _spool.read(spool.files("dead")[0])
    assert payload == b""
    assert note.startswith(_spool.UNTRUSTED + "not sent by this uWSGI instance; 200005 bytes, sha256 ")
    for i in range(200):
        letters.keep(f"ak:{i}\x00".encode() + b"y" * 100, "unknown task")
    assert spool.size(("dead",)) <= spool.dead_limit
    assert _spool.read(spool.files("dead")[-1])[1].startswith(b"ak:199\x00")  # the newest stay
    assert said and "removed the" in said[0]
    assert spool.size(("queue",)) == 0


def test_a_flood_of_untrusted_messages_never_pushes_out_the_dead_letters_of_real_calls(tmp_path: Path) -> None:
    spool = _spool.Spool(str(tmp_path / "spool"), limit=8 * 20_000)  # dead/: 20,000 bytes
    spool.create()
    letters = _spool.DeadLetters(spool, [].append)
    for i in range(20):
        letters.keep(f"ak:{i}\x00".encode() + b"y" * 100, "unknown task")
    for _ in range(2_000):  # far past the quota: only other untrusted notes make room
        letters.keep(b"", _spool.untrusted_note(b"forged", "not sent by this uWSGI instance"), durable=False)
    payloads = [_spool.read(path)[1] for path in spool.files("dead")]
    assert [payload for payload in payloads if payload] == [f"ak:{i}\x00".encode() + b"y" * 100 for i in range(20)]
    assert spool.size(("dead",)) <= spool.dead_limit
    assert len(payloads) > 20  # the newest untrusted notes are kept too


def test_a_failure_storm_never_pushes_out_the_interrupted_calls(tmp_path: Path) -> None:
    spool = _spool.Spool(str(tmp_path / "spool"), limit=8 * 20_000)  # dead/: 20,000 bytes
    spool.create()
    letters = _spool.DeadLetters(spool, [].append)
    for i in range(5):
        letters.keep(f"ak:{i}\x00".encode(), f"interrupted: app:run{i} (in mule 1, pid 2) | the mule died")
    letters.keep(b"ak:refused\x00", "unknown task")
    for i in range(2_000):  # a task failing far past the quota: only failed letters make room
        letters.keep(f"ak:{i}\x00".encode() + b"y" * 50, f"failed: app:flaky (ValueError, attempt 1 of 1): {i}",
                     durable=False)
    notes = [_spool.read(path)[0] for path in spool.files("dead")]
    assert sum(note.startswith("interrupted: ") for note in notes) == 5
    assert "unknown task" in notes
    assert notes[-1].endswith(": 1999")  # the newest failed ones are kept
    assert spool.size(("dead",)) <= spool.dead_limit


def test_refusals_are_said_once_per_burst_with_a_count() -> None:
    said: list[str] = []
    burst = _spool.Burst(said.append, window=0.2)
    for _ in range(99):
        burst.note("refused a message: wrong token", "wrong token")
    burst.note("refused a message: unknown task", "unknown task")  # another reason: said in full once
    burst.note("refused a message: unknown task", "unknown task")
    assert said == ["refused a message: wrong token", "refused a message: unknown task"]
    import time

    time.sleep(0.5)
    assert len(said) == 3 and "99 more message(s) refused" in said[2]
    assert "98 x wrong token; 1 x unknown task" in said[2]
    time.sleep(0.3)
    burst.note("refused again", "wrong token")  # a new burst: said at once
    assert said[-1] == "refused again"


def test_files_of_another_user_or_links_in_queue_are_listed_as_strangers(spool: _spool.Spool) -> None:
    queue = Path(spool.part("queue"))
    (queue / "2-2-2.call").symlink_to("/etc/passwd")
    (queue / "3-3-3.call").mkdir()
    spool.write("queue", b"ak:x\x00")
    expected = [("2-2-2.call", "a symbolic link"), ("3-3-3.call", "not a regular file")]
    if os.geteuid() == 0:
        (queue / "1-1-1.call").write_bytes(_spool.MAGIC + b"any\nak:forged\x00")
        os.chown(queue / "1-1-1.call", 65534, 65534)
        expected.insert(0, ("1-1-1.call", "a file of uid 65534, not of this user"))
    assert spool.strangers() == expected
    assert spool.waiting(frozenset({_spool.ANY})) == 1


def test_a_message_refused_by_the_trust_check_is_noted_never_kept(tmp_path: Path) -> None:
    from uwsgiconf_mules.protocol import envelope as _protocol
    from uwsgiconf_mules.runtime import tasks as _tasks

    spool = _spool.Spool(str(tmp_path / "spool"))
    spool.create()
    _tasks.set_dead_letters(spool)
    try:
        assert _tasks.receive(_protocol.HEADER + b"x" * 1000) is None  # a wrong token
        assert _tasks.receive(_protocol.encoder("tasks:nope")((1,), {})) is None  # this instance's: kept whole
    finally:
        _tasks.set_dead_letters(None)
    (unknown, unknown_payload), (untrusted, untrusted_payload) = sorted(
        _spool.read(path) for path in spool.files("dead"))
    assert untrusted_payload == b"" and untrusted.startswith(_spool.UNTRUSTED)
    assert "; 1005 bytes, sha256 " in untrusted
    assert unknown.startswith("cannot import module 'tasks'") and unknown_payload.startswith(b"mtasks:nope\x00")


def test_a_flood_of_distinct_reasons_is_summed_up_in_a_bounded_line() -> None:
    said: list[str] = []
    burst = _spool.Burst(said.append, window=60)
    for i in range(5_000):
        burst.note(f"refused a message: reason {i}", f"reason {i} " + "x" * 100)
    assert len(said) == _spool.Burst.REASONS  # the first of each, up to the limit
    assert burst.flush()
    summary = said[-1]
    assert summary.startswith("uwsgiconf-mules: mule 0: 4980 more message(s) refused in the last 60 s: ")
    assert f": {4980 - _spool.Burst.REASONS} x other reasons; 1 x reason 20 " in summary  # the most first
    assert len(summary) < 3_000


def test_dead_letters_kept_from_two_threads_are_counted_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                ) -> None:
    # A dispatch mule keeps dead letters from its loop (failed calls) and its timer thread (interrupted
    # calls, see mule.timer.interrupted): the count of dead/ that keeps its quota stays exact. Here the
    # timer's letter comes while the loop's is being counted (the first keep counts dead/).
    import threading

    spool = _spool.Spool(str(tmp_path / "spool"))
    spool.create()
    letters = _spool.DeadLetters(spool, [].append)
    count = letters._count
    other = threading.Thread(target=lambda: letters.keep(b"ak:timer\x00", "interrupted: app:t (in mule 1)"))

    def counting() -> list[int]:
        found = count()
        if not other.is_alive() and other.ident is None:
            other.start()
            other.join(0.5)  # done by now without the lock; waits for it with the lock
        return found

    monkeypatch.setattr(letters, "_count", counting)
    letters.keep(b"ak:loop\x00", "failed: app:f (ValueError, attempt 1 of 1): x", durable=False)
    other.join(10)
    for i in range(20):
        letters.keep(f"ak:{i}\x00".encode(), "unknown task")
    assert letters.held == count() == [spool.size(("dead",)), 22]


def test_the_bytes_of_delayed_calls_are_counted_again_only_for_changed_folders(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from uwsgiconf_mules.protocol.spool import delayed

    spool = _spool.Spool(str(tmp_path / "spool"))
    spool.create()
    held = delayed.Held(spool)
    assert held.total() == 0
    time.sleep(0.05)
    first = delayed.write(spool, "farm:a", b"x" * 100, 10 ** 18)
    delayed.write(spool, "mule:1", b"y" * 50, 10 ** 18)
    assert held.total() == spool.size(("delayed/farm-a", "delayed/mule-1")) == os.path.getsize(first) + \
        os.path.getsize(spool.files("delayed/mule-1")[0])
    os.unlink(first)
    time.sleep(0.05)  # past the next listing allowed (twenty times as long as the last one took)
    assert held.total() == os.path.getsize(spool.files("delayed/mule-1")[0])  # a removal seen
    old = time.time_ns() - 10 * 10 ** 9
    for where in ("delayed/farm-a", "delayed/mule-1"):
        os.utime(spool.part(where), ns=(old, old))
    total = held.total()  # listed once more (their times changed), then not again
    measured: list[str] = []
    sizes = delayed.Held._sizes
    monkeypatch.setattr(delayed.Held, "_sizes", staticmethod(lambda where, before: measured.append(where) or
                                                             sizes(where, before)))
    assert held.total() == total
    assert measured == []  # unchanged folders: not listed again
