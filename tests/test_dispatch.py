"""A stopping dispatch mule's keeper, on a real spool: calls kept within the limit, the rest counted."""

from __future__ import annotations

import os
from pathlib import Path

from uwsgiconf_mules import _dispatch, _protocol, _spool


def signed(key: str, *args: object) -> bytes:
    return _protocol.encoder(key)(args, {})


def test_calls_are_kept_for_their_queue_and_other_messages_are_not(tmp_path: Path) -> None:
    spool = _spool.Spool(str(tmp_path / "spool"))
    spool.create()
    keep = _dispatch._Keeper(spool)
    assert keep(signed("tasks:a", 1), 1) == 1
    assert keep(signed("tasks:b", 2), b"fast") == 1
    assert keep(signed("tasks:c"), None) == 1
    assert keep(_protocol.PROBE + bytes(12), 1) == 0
    assert keep(_protocol.HEADER + bytes(16) + b"mos:system\x00", 1) == 0  # a forgery is never kept as a call
    kept = [_spool.read(path) for path in spool.files("queue")]
    assert kept == [("mule:1", signed("tasks:a", 1)[len(_protocol.PREFIX):]),
                    ("farm:fast", signed("tasks:b", 2)[len(_protocol.PREFIX):]),
                    (_spool.ANY, signed("tasks:c")[len(_protocol.PREFIX):])]
    assert (keep.kept, keep.lost) == (3, {})


def test_past_its_limit_or_when_the_disk_refuses_the_spool_keeps_nothing_and_says_how_much(tmp_path: Path) -> None:
    spool = _spool.Spool(str(tmp_path / "spool"), limit=100)
    spool.create()
    keep = _dispatch._Keeper(spool)
    assert keep(signed("tasks:a", "x" * 40), 1) == 1
    assert keep(signed("tasks:a", "x" * 40), 1) == 0  # over 100 bytes
    os.rmdir(spool.part("tmp"))
    Path(spool.part("tmp")).write_text("not a directory")
    keep.room = 10_000
    assert keep(signed("tasks:a", "y"), 1) == 0
    assert keep.kept == 1
    assert keep.lost == {f"the spool {spool.path} holds its limit of 100 bytes": 1,
                         "the disk refused it (Not a directory)": 1}
