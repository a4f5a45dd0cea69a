"""The envelope: one encoder, the decoder and the fast path's heads agree; foreign messages."""

from __future__ import annotations

import pickle

import pytest

from uwsgiconf_mules import _protocol as protocol
from uwsgiconf_mules.errors import PayloadError

KEY = "pkg.mod:Cls.method"
CALLS = [
    ((), {}, protocol.ARGS),
    ((1, 2.5, "é", b"\xff", None, True, 3j), {}, protocol.MARSHAL),
    ((bytearray(b"x"), [1]), {}, protocol.ARGS),  # buffers and containers are pickled, types kept
    ((1,), {"flag": True}, protocol.KWARGS),
    ((), {"only": b"kw"}, protocol.KWARGS),
]


@pytest.mark.parametrize(("args", "kwargs", "kind"), CALLS)
def test_round_trip(args: tuple[object, ...], kwargs: dict[str, object], kind: bytes) -> None:
    message = protocol.encoder(KEY)(args, kwargs)
    assert message.startswith(protocol.HEADER + kind + KEY.encode() + b"\x00")
    key, got_args, got_kwargs = protocol.decode(message)  # type: ignore[misc]
    assert (key, got_args, got_kwargs) == (KEY.encode(), args, kwargs)
    assert [type(a) for a in got_args] == [type(a) for a in args]


@pytest.mark.parametrize(("args", "kwargs", "kind"), [call for call in CALLS if call[2] != protocol.KWARGS])
def test_heads_decode_positional_calls_as_the_decoder_does(
        args: tuple[object, ...], kwargs: dict[str, object], kind: bytes) -> None:
    message = protocol.encoder(KEY)(args, kwargs)
    end = message.index(b"\x00")
    loads = protocol.heads(KEY)[message[:end]]
    body = memoryview(message)[end + 1:]
    assert (loads(body) if body else ()) == args


def test_keyword_calls_never_match_a_head() -> None:
    message = protocol.encoder(KEY)((1,), {"flag": True})
    assert message[:message.index(b"\x00")] not in protocol.heads(KEY)


def test_subclasses_are_pickled_not_marshalled() -> None:
    class Number(int):
        pass

    # A local class cannot be pickled: the point is that marshal is not tried (it would drop the type).
    with pytest.raises(PayloadError, match=f"{KEY}: arguments cannot be pickled"):
        protocol.encoder(KEY)((Number(3),), {})


def test_foreign_messages_are_not_envelopes() -> None:
    for message in (b"hello", b"", pickle.dumps({"service": "uwsgi_mulefunc"}), "text é".encode()):
        assert protocol.decode(message) is None


def test_other_version_and_damaged_envelopes_are_errors() -> None:
    with pytest.raises(ValueError, match="protocol version"):
        protocol.decode(protocol.MAGIC + b"\x09akey\x00")
    with pytest.raises(ValueError, match="damaged envelope"):
        protocol.decode(protocol.HEADER + b"akey-without-end")
    with pytest.raises(ValueError, match="damaged envelope"):
        protocol.decode(protocol.HEADER + b"zkey\x00")
