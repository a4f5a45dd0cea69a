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
