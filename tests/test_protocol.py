"""The envelope: one encoder, the decoder and the fast path's heads agree; foreign messages."""

from __future__ import annotations

import pickle
import subprocess
import sys

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
    assert message.startswith(protocol.PREFIX + kind + KEY.encode() + b"\x00")
    key, got_args, got_kwargs = protocol.decode(message)  # type: ignore[misc]
    assert (key, got_args, got_kwargs) == (KEY.encode(), args, kwargs)
    assert [type(a) for a in got_args] == [type(a) for a in args]


@pytest.mark.parametrize(("args", "kwargs", "kind"), [call for call in CALLS if call[2] != protocol.KWARGS])
def test_heads_decode_positional_calls_as_the_decoder_does(
        args: tuple[object, ...], kwargs: dict[str, object], kind: bytes) -> None:
    message = protocol.encoder(KEY)(args, kwargs)
    end = message.index(b"\x00", protocol.KEY_START)  # the mule loop's search: the token may hold NULs
    loads = protocol.heads(KEY)[message[:end]]
    body = memoryview(message)[end + 1:]
    assert (loads(body) if body else ()) == args


def test_a_token_with_nul_bytes_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    # About 6 % of tokens hold a NUL byte: heads, keys and bodies are found after the token.
    token = b"\x00" * 8 + bytes(range(1, 9))
    monkeypatch.setattr(protocol, "TOKEN", token)
    monkeypatch.setattr(protocol, "PREFIX", protocol.HEADER + token)
    for args, kwargs, _ in CALLS:
        message = protocol.encoder(KEY)(args, kwargs)
        assert protocol.decode(message) == (KEY.encode(), args, kwargs)
        head = message[:message.index(b"\x00", protocol.KEY_START)]
        assert (head in protocol.heads(KEY)) is not bool(kwargs)


def test_keyword_calls_never_match_a_head() -> None:
    message = protocol.encoder(KEY)((1,), {"flag": True})
    assert message[:message.index(b"\x00", protocol.KEY_START)] not in protocol.heads(KEY)


def test_subclasses_are_pickled_not_marshalled() -> None:
    class Number(int):
        pass

    # A local class cannot be pickled: the point is that marshal is not tried (it would drop the type).
    with pytest.raises(PayloadError, match=f"{KEY}: arguments cannot be pickled"):
        protocol.encoder(KEY)((Number(3),), {})


def test_the_token_is_random_per_instance_and_starts_every_envelope() -> None:
    assert len(protocol.TOKEN) == 16 and protocol.PREFIX == protocol.HEADER + protocol.TOKEN
    code = "from uwsgiconf_mules import _protocol; print(_protocol.TOKEN.hex())"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert bytes.fromhex(other) != protocol.TOKEN
    assert protocol.PROBE.startswith(protocol.PREFIX)


def test_plain_data_that_looks_like_ours_is_wrapped_and_nothing_else_is() -> None:
    for plain in (b"hello", b"", protocol.MAGIC + b"\x02forged", protocol.HEADER + bytes(16) + b"a"):
        assert protocol.data(plain) is plain
    envelope = protocol.encoder(KEY)((1,), {})
    assert protocol.data(envelope) == protocol.PREFIX + protocol.DATA + envelope


def test_foreign_messages_are_not_refused_as_envelopes() -> None:
    for message in (b"hello", b"", pickle.dumps({"service": "uwsgi_mulefunc"}), "text é".encode()):
        assert protocol.refusal(message) is None


def test_messages_claiming_to_be_envelopes_without_the_token_are_refused() -> None:
    assert protocol.refusal(protocol.MAGIC + b"\x09akey\x00") == "envelope of protocol version 9, this runtime reads 2"
    assert protocol.refusal(protocol.MAGIC) == "truncated envelope"
    for forged in (protocol.HEADER + b"akey\x00", protocol.HEADER + bytes(16) + b"mos:system\x00",
                   protocol.HEADER + protocol.TOKEN[:-1]):
        assert protocol.refusal(forged) == "not sent by this uWSGI instance (wrong or missing token)"


def test_damaged_envelopes_are_errors() -> None:
    with pytest.raises(ValueError, match="damaged envelope"):
        protocol.decode(protocol.PREFIX + b"akey-without-end")
    with pytest.raises(ValueError, match="damaged envelope"):
        protocol.decode(protocol.PREFIX + b"zkey\x00")
