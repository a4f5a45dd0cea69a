"""The envelope: round trips, kinds, and messages that are not ours."""

from __future__ import annotations

import pickle

import pytest

from uwsgiconf_mules import protocol


@pytest.mark.parametrize("args, kwargs, kind", [
    ((), {}, protocol.ARGS),
    ((1, 2.5, "é", b"\xff", None, True, 3j), {}, protocol.MARSHAL),
    ((bytearray(b"x"), [1]), {}, protocol.ARGS),  # buffers and containers are pickled, types kept
    ((1,), {"flag": True}, protocol.KWARGS),
])
def test_round_trip(args: tuple[object, ...], kwargs: dict[str, object], kind: bytes) -> None:
    message = protocol.encode("pkg.mod:Cls.method", args, kwargs)
    assert message.startswith(protocol.HEADER + kind + b"pkg.mod:Cls.method\x00")
    key, got_args, got_kwargs = protocol.decode(message)  # type: ignore[misc]
    assert (key, got_args, got_kwargs) == (b"pkg.mod:Cls.method", args, kwargs)
    assert [type(a) for a in got_args] == [type(a) for a in args]


def test_subclasses_are_pickled_not_marshalled() -> None:
    class Number(int):
        pass

    # A local class cannot be pickled: the point is that marshal is not tried (it would drop the type).
    with pytest.raises((pickle.PicklingError, AttributeError)):
        protocol.encode("m:f", (Number(3),), {})


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
