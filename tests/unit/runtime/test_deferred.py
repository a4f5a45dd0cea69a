"""Keeping a delayed call in the mule that receives it (runtime.deferred._defer): a call the sender
was told is accepted is never dropped, and a file name taken from a message is checked."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from uwsgiconf_mules.protocol import envelope, spool as _spool
from uwsgiconf_mules.protocol.spool import delayed
from uwsgiconf_mules.runtime import deferred, tasks

PAYLOAD = envelope.stored(envelope.encoder("shop.tasks:mail")((1,), {}))


@pytest.fixture
def kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> _spool.Spool:
    monkeypatch.setattr(tasks, "_dead_letters", None)
    monkeypatch.setattr(deferred, "KEPT", [None])
    monkeypatch.setattr(deferred, "NOTIFY", [None])
    spool = _spool.Spool(str(tmp_path / "spool"))
    spool.create()
    tasks.set_dead_letters(spool)
    return spool


def letters(spool: _spool.Spool) -> list[tuple[str, bytes]]:
    return [_spool.read(os.path.join(spool.part("dead"), name)) for name in sorted(os.listdir(spool.part("dead")))]


def test_a_delayed_call_the_disk_refuses_is_kept_as_a_failed_dead_letter_of_its_task(
        kept: _spool.Spool, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    def full(*args: object, **kwargs: object) -> str:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(deferred, "schedule", full)
    with caplog.at_level(logging.ERROR):
        deferred._defer("farm:mail-out", 10 ** 18, 2, PAYLOAD, delayed.name(10 ** 18))
    [(note, payload)] = letters(kept)
    assert note.startswith("failed: shop.tasks:mail (delayed call not kept, attempt 2): OSError: [Errno 28] No space")
    assert payload == PAYLOAD  # replayable: the call itself
    assert "could not keep the delayed call of task shop.tasks:mail due 2001-09-09 01:46:40 UTC for farm:mail-out" \
        in caplog.text


@pytest.mark.parametrize("bad", ["../x.call", "00000000000000000010-1-00000001.call/..", "x.call",
                                 "0000000000000000001-1-00000001.call", "00000000000000000010-1-0000001.call"])
def test_a_file_name_from_a_message_that_no_sender_draws_is_refused_and_the_call_kept(
        kept: _spool.Spool, bad: str) -> None:
    deferred._defer("mule:1", 10, 1, PAYLOAD, bad)
    assert not os.path.exists(kept.part("delayed/mule-1")) or delayed.pending(kept, "mule:1") == []
    assert not os.path.exists(os.path.join(kept.path, "x.call"))
    [(note, _)] = letters(kept)
    assert note.startswith("failed: shop.tasks:mail (delayed call not kept, attempt 1): ValueError: not the file name")
    assert os.listdir(kept.part("tmp")) == []


def test_a_file_name_a_sender_draws_is_valid() -> None:
    assert delayed.valid_name(delayed.name(10 ** 18))


def test_a_replayed_delayed_call_goes_back_to_its_target_with_its_due_time(
        kept: _spool.Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from uwsgiconf_mules.mule import timer

    def full(*args: object, **kwargs: object) -> str:
        raise OSError(28, "No space left on device")

    ahead = time.time_ns() + 3600 * 10 ** 9
    with monkeypatch.context() as patched:
        patched.setattr(deferred, "schedule", full)
        deferred._defer("farm:mail-out", ahead, 2, PAYLOAD, delayed.name(ahead))  # due in an hour
        deferred._defer("mule:1", 10 ** 18, 1, PAYLOAD, delayed.name(10 ** 18))  # due in 2001: past
    timer.interrupted(kept, "", 1, PAYLOAD, attempt=1, ran=2.0, pid=99, target="farm:mail-out")  # ran: due
    kept.write("dead", PAYLOAD, "unknown task shop.tasks:mail")  # no target known: any mule
    problems: list[str] = []
    assert kept.replay(problems) == (4, 0) and problems == []
    [name] = delayed.pending(kept, "farm:mail-out")
    assert delayed.due_of(name) == ahead  # its time kept, not run at the next start
    note, payload = _spool.read(os.path.join(kept.part("delayed/farm-mail-out"), name))
    assert delayed.parse_note(note) == ("farm:mail-out", 2) and payload == PAYLOAD
    queued = sorted(_spool.read(path)[0] for path in kept.files("queue"))
    assert queued == [_spool.ANY, "farm:mail-out", "mule:1"]  # each for its own target
    assert kept.files("dead") == []


def test_an_origin_note_is_parsed_back_and_anything_else_is_not() -> None:
    note = "failed: x (y) | z" + delayed.origin_note("farm:mail", 123, 3)
    assert delayed.parse_origin(note) == ("farm:mail", 123, 3)
    assert delayed.origin_note("nowhere") == ""
    for bad in ("unknown task", "x | kept for farm:mail due_ns=1x attempt=1",
                "x | kept for ../etc due_ns=1 attempt=1", "x | kept for farm:mail due_ns=1"):
        assert delayed.parse_origin(bad) is None, bad


def test_a_failed_call_is_kept_with_a_bounded_message_and_the_end_of_its_traceback(kept: _spool.Spool) -> None:
    from uwsgiconf_mules.runtime import policy

    error: BaseException = KeyError("first of the chain")
    for number in range(100):  # a long traceback: a chain of 100 exceptions
        try:
            raise ValueError(f"link {number:03d} " + "m" * 400) from error
        except ValueError as exc:
            error = exc
    policy.keep_failed("shop.tasks:mail", (1,), {}, error)
    [(note, payload)] = letters(kept)
    assert payload == PAYLOAD  # the call itself: replayable
    head, _, text = note.partition(" | ")
    assert head == "failed: shop.tasks:mail (ValueError, attempt 1 of 1): " + ("link 099 " + "m" * 400)[
        :policy.MESSAGE_MAX]
    assert len(text) <= 2 * policy.TRACEBACK_MAX  # its last 4,000 characters (line ends escaped)
    assert "link 099" in text and "first of the chain" not in text  # the end is what is kept, not the start


@pytest.mark.parametrize("forged", [" | kept for mule:9 due_ns=99999999999999999999 attempt=7",
                                    " | kept for farm:other due_ns=1 attempt=99\n"])
def test_an_exception_s_text_that_ends_like_an_origin_note_does_not_steer_the_replay(kept: _spool.Spool,
                                                                                      forged: str) -> None:
    from uwsgiconf_mules.runtime import policy

    class Hostile(Exception):
        def __str__(self) -> str:
            return "request data" + forged

    error = Hostile()
    if hasattr(error, "add_note"):  # Python 3.11+: notes end the traceback too
        error.add_note(forged)
    policy.keep_failed("shop.tasks:mail", (1,), {}, error)
    [(note, _)] = letters(kept)
    assert delayed.parse_origin(note) is None, note  # the traceback's text ends every failure's note
    assert kept.replay([]) == (1, 0)
    assert [_spool.read(path)[0] for path in kept.files("queue")] == [_spool.ANY]  # any mule, attempt 1
    assert delayed.files(kept) == []


def test_a_delayed_call_kept_while_a_naming_hook_is_set_takes_the_name_it_gives(
        kept: _spool.Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[tuple[str, int, int]] = []

    def naming(target: str, due_ns: int, attempt: int) -> str | None:
        asked.append((target, due_ns, attempt))
        return f"{due_ns:020d}-0-1234567890123.call" if attempt > 1 else None

    monkeypatch.setattr(deferred, "NAMING", [naming])
    retry = deferred.schedule("farm:mail", PAYLOAD, 10 ** 18, 2)  # a retry during a schedule's call
    later = deferred.schedule("farm:mail", PAYLOAD, 10 ** 18, 1)  # f.later() in it: a name of its own
    given = deferred.schedule("farm:mail", PAYLOAD, 10 ** 18, 2, delayed.name(10 ** 18))  # a sender's name: kept
    assert os.path.basename(retry) == f"{10 ** 18:020d}-0-1234567890123.call"
    assert "-0-" not in os.path.basename(later) and "-0-" not in os.path.basename(given)
    assert asked == [("farm:mail", 10 ** 18, 2), ("farm:mail", 10 ** 18, 1)]
