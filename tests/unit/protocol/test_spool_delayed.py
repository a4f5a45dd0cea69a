"""The spool's delayed part (protocol.spool.delayed): names by due time, one claimer, recovery of
the claims of dead mules; the notes of failed and interrupted calls."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from uwsgiconf_mules.protocol import envelope, spool as _spool
from uwsgiconf_mules.protocol.spool import delayed
from uwsgiconf_mules.runtime import policy


def test_a_delayed_call_folder_sorts_by_due_time_and_is_claimed_once(tmp_path: Path) -> None:
    kept = _spool.Spool(str(tmp_path / "spool"))
    kept.create()
    payload = envelope.stored(envelope.encoder("shop.tasks:mail")((1,), {}))
    late = delayed.write(kept, "farm:mail-out", payload, 3_000_000_000_000_000_000)
    early = delayed.write(kept, "farm:mail-out", payload, 2_000_000_000_000_000_000, attempt=2)
    assert delayed.pending(kept, "farm:mail-out") == [os.path.basename(early), os.path.basename(late)]
    assert os.stat(os.path.dirname(early)).st_mode & 0o777 == 0o700
    assert os.stat(early).st_mode & 0o777 == 0o600
    assert delayed.parse_note(_spool.read(early)[0]) == ("farm:mail-out", 2)
    assert delayed.due_of(os.path.basename(early)) == 2_000_000_000_000_000_000
    name = os.path.basename(early)
    claimed = delayed.claim(kept, "farm:mail-out", name)
    assert claimed is not None and delayed.claim(kept, "farm:mail-out", name) is None  # one claimer only
    assert delayed.split_claimed(os.path.basename(claimed)) == (os.getpid(), "due", "farm:mail-out", name)
    assert delayed.put_back(kept, claimed)
    assert delayed.pending(kept, "farm:mail-out") == [name, os.path.basename(late)]
    assert delayed.count(kept) == {"farm:mail-out": 2}
    with pytest.raises(ValueError, match="not a target"):
        delayed.folder("farm:../x")


def test_claims_of_a_dead_mule_go_back_unless_they_were_running(tmp_path: Path) -> None:
    kept = _spool.Spool(str(tmp_path / "spool"))
    kept.create()
    payload = envelope.stored(envelope.encoder("shop.tasks:mail")((1,), {}))
    names = [os.path.basename(delayed.write(kept, "mule:1", payload, 10 + i)) for i in range(2)]
    waiting, running = (delayed.claim(kept, "mule:1", name) for name in names)
    assert waiting is not None and running is not None
    running = delayed.start(running)
    dead_pid = 2 ** 22 + 12345  # above pid_max's default: no such process
    for path in (waiting, running):
        os.rename(path, path.replace(f"{os.getpid()}-", f"{dead_pid}-", 1))
    left = delayed.recover_claimed(kept)
    assert [os.path.basename(path).split("-")[1] for path in left] == ["run"]
    assert delayed.pending(kept, "mule:1") == names[:1]


def test_a_stale_spool_with_delayed_calls_is_kept(tmp_path: Path) -> None:
    kept = _spool.Spool(str(tmp_path / "spool"))
    kept.create()
    delayed.write(kept, "mule:1", b"mx:y\x00", 10)
    assert not _spool.stale(kept.path, now=10 ** 12)


def test_notes_of_failed_and_interrupted_calls_group_by_task() -> None:
    assert _spool.grouped("failed: shop.tasks:mail (KeyError, attempt 2 of 2): 'c' | Traceback...") == \
        "failed: shop.tasks:mail"
    assert _spool.grouped("interrupted: shop.tasks:mail (in mule 1, pid 5, after 1.0 s, attempt 1 of 1) | x") == \
        "interrupted: shop.tasks:mail"
    assert policy.task_name("uwsgiconf_mules.django:_run", ("shop.tasks.mail", 1)) == "shop.tasks.mail"


DEAD_PID = 2 ** 22 + 12345  # above pid_max's default: no such process


def _dead_claim(kept: _spool.Spool, state: str) -> str:
    payload = envelope.stored(envelope.encoder("shop.tasks:mail")((1,), {}))
    name = os.path.basename(delayed.write(kept, "mule:1", payload, 10))
    claimed = delayed.claim(kept, "mule:1", name)
    assert claimed is not None
    if state == "run":
        claimed = delayed.start(claimed)
    dead = claimed.replace(f"{os.getpid()}-", f"{DEAD_PID}-", 1)
    os.rename(claimed, dead)
    return dead


def test_orphans_of_the_queue_leave_the_claimed_delayed_calls_to_the_timer(tmp_path: Path) -> None:
    kept = _spool.Spool(str(tmp_path / "spool"))
    kept.create()
    waiting, running = _dead_claim(kept, "due"), _dead_claim(kept, "run")
    queued = os.path.join(kept.part("claimed"), f"{DEAD_PID}-{1:020d}-77-00000001.call")
    Path(queued).write_bytes(b"x")
    assert kept.orphans() == [queued]
    assert {waiting, running} <= set(os.path.join(kept.part("claimed"), n) for n in os.listdir(kept.part("claimed")))


def test_burying_a_file_another_mule_buried_first_writes_nothing_and_raises_nothing(tmp_path: Path) -> None:
    kept = _spool.Spool(str(tmp_path / "spool"))
    kept.create()
    kept.bury(os.path.join(kept.part("claimed"), f"{DEAD_PID}-gone.call"), "the mule running it died")
    assert os.listdir(kept.part("dead")) == []


def test_two_mules_recovering_one_dead_running_claim_handle_it_once(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from uwsgiconf_mules.mule import timer

    kept = _spool.Spool(str(tmp_path / "spool"))
    kept.create()
    _dead_claim(kept, "run")
    read = _spool.read
    other_mule = [True]

    def read_while_a_mate_recovers(path: str) -> tuple[str, bytes]:
        found = read(path)
        if other_mule[0]:  # the farm mate starts at the same moment, and recovers in between
            other_mule[0] = False
            timer.recover(kept, 2)
        return found

    monkeypatch.setattr(_spool, "read", read_while_a_mate_recovers)
    timer.recover(kept, 1)
    letters = os.listdir(kept.part("dead"))
    assert len(letters) == 1, letters  # one interrupted letter, not one per mule
    assert os.listdir(kept.part("claimed")) == []


def test_a_pid_reused_by_a_later_process_is_a_dead_mule_s(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess
    import sys
    import time

    from uwsgiconf_mules.protocol.spool import checks

    before = time.time()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        began = checks.started_at(child.pid)
        assert began is not None and before - 0.1 <= began <= time.time() + 0.1
        assert checks.alive(child.pid, since=time.time())
        assert not checks.alive(child.pid, since=before - 60)  # named with its pid before it started
    finally:
        child.kill()
        child.wait()
    kept = _spool.Spool(str(tmp_path / "spool"))
    kept.create()
    payload = envelope.stored(envelope.encoder("shop.tasks:mail")((1,), {}))
    name = os.path.basename(delayed.write(kept, "mule:1", payload, 10))
    assert delayed.claim(kept, "mule:1", name) is not None  # under this process's pid...
    assert delayed.recover_claimed(kept) == [] and delayed.pending(kept, "mule:1") == []  # ...alive: kept
    monkeypatch.setattr(checks, "started_at", lambda pid: time.time() + 10)  # ...a process that came later
    assert delayed.recover_claimed(kept) == [] and delayed.pending(kept, "mule:1") == [name]


def test_links_and_fifos_in_delayed_are_strangers_never_claimed_and_never_followed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from uwsgiconf_mules.mule import timer

    kept = _spool.Spool(str(tmp_path / "spool"))
    kept.create()
    payload = envelope.stored(envelope.encoder("shop.tasks:mail")((1,), {}))
    real = os.path.basename(delayed.write(kept, "mule:1", payload, 10))
    where = Path(kept.part("delayed/mule-1"))
    secret = tmp_path / "secret"
    secret.write_bytes(_spool.MAGIC + b"mule:1 attempt=1\nak:secret\x00")
    (where / "00000000000000000001-1-00000001.call").symlink_to(secret)
    os.mkfifo(where / "00000000000000000002-1-00000001.call")
    assert delayed.strangers(kept) == [("mule-1/00000000000000000001-1-00000001.call", "a symbolic link"),
                                       ("mule-1/00000000000000000002-1-00000001.call", "not a regular file")]
    scanned = timer.Timer(object(), kept, 1, ["mule:1"])
    assert [name for _, _, name in scanned.heap] == [real]  # the link and the FIFO are never claimed
    link = str(where / "00000000000000000001-1-00000001.call")
    with pytest.raises(OSError):  # read never follows a link (nor waits on a FIFO)
        _spool.read(link)
    kept.bury(link, "unreadable")
    assert [_spool.read(path)[1] for path in kept.files("dead")] == [b""]  # the link's target was not copied
    with pytest.raises(ValueError, match="not a regular file"):
        _spool.read(str(where / "00000000000000000002-1-00000001.call"))


def test_a_spool_whose_delayed_calls_all_ran_can_be_stale(tmp_path: Path) -> None:
    kept = _spool.Spool(str(tmp_path / "spool"))
    kept.create()
    path = delayed.write(kept, "mule:1", b"mx:y\x00", 10)
    os.unlink(path)  # ran: its folder stays
    assert _spool.stale(kept.path, now=10 ** 12)


@pytest.mark.skipif(os.geteuid() != 0, reason="a file of another user's is made by root only")
def test_a_delayed_call_of_another_user_s_is_buried_without_its_payload_and_never_replayed(tmp_path: Path) -> None:
    from uwsgiconf_mules.mule import timer

    kept = _spool.Spool(str(tmp_path / "spool"))
    kept.create()
    payload = envelope.stored(envelope.encoder("shop.tasks:mail")((1,), {}))
    planted = delayed.write(kept, "mule:1", payload, 10)
    os.chown(planted, 4242, 4242)  # planted by another user (a folder whose mode was loose, once)
    claimed = delayed.claim(kept, "mule:1", os.path.basename(planted))
    assert claimed is not None
    timer.run_claimed(kept, claimed, 0)  # never run: buried
    [(note, kept_payload)] = [_spool.read(path) for path in kept.files("dead")]
    assert kept_payload == b"" and "not a regular file of this user's" in note  # its bytes are not taken as ours
    assert kept.replay([]) == (0, 1) and kept.files("queue") == []  # untrusted: never replayed
