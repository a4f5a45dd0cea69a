"""The envelope: one encoder, the decoder and the fast path's heads agree; foreign messages."""

from __future__ import annotations

import marshal
import pickle
import subprocess
import sys

import pytest

from uwsgiconf_mules.errors import PayloadError
from uwsgiconf_mules.protocol import envelope as protocol

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
    assert message.startswith(protocol.PREFIX + kind + protocol.tag(KEY.encode()))
    assert message.endswith(b"\x00" + KEY.encode())
    key, got_args, got_kwargs = protocol.decode(message)  # type: ignore[misc]
    assert (key, got_args, got_kwargs) == (KEY.encode(), args, kwargs)
    assert [type(a) for a in got_args] == [type(a) for a in args]


@pytest.mark.parametrize(("args", "kwargs", "kind"), [call for call in CALLS if call[2] != protocol.KWARGS])
def test_heads_decode_positional_calls_as_the_decoder_does(
        args: tuple[object, ...], kwargs: dict[str, object], kind: bytes) -> None:
    message = protocol.encoder(KEY)(args, kwargs)
    loads, start = protocol.heads(KEY)[message[:protocol.HEAD_SIZE]]  # the mule loop's lookup: a fixed length
    assert protocol.lookup_ok(message[:protocol.LOOKUP_SIZE])
    size = protocol.call_size(KEY)
    assert len(message) > size if args else len(message) == size
    # The loop decodes from the body's start to the end of its buffer: what follows is ignored.
    assert (loads(memoryview(message + b"older bytes")[start:]) if len(message) > size else ()) == args


def test_a_token_with_nul_bytes_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    # About 6 % of tokens hold a NUL byte: heads, keys and bodies are found after the token.
    token = b"\x00" * 8 + bytes(range(1, 9))
    monkeypatch.setattr(protocol, "TOKEN", token)
    monkeypatch.setattr(protocol, "PREFIX", protocol.HEADER + token)
    for args, kwargs, _ in CALLS:
        message = protocol.encoder(KEY)(args, kwargs)
        assert protocol.decode(message) == (KEY.encode(), args, kwargs)
        assert (message[:protocol.HEAD_SIZE] in protocol.heads(KEY)) is not bool(kwargs)


def test_keyword_calls_never_match_a_head() -> None:
    message = protocol.encoder(KEY)((1,), {"flag": True})
    assert message[:protocol.HEAD_SIZE] not in protocol.heads(KEY)


def test_tags_are_a_stable_hash_of_the_key() -> None:
    # FNV-1a 64 (published test vectors): the same in every process and version, no seed.
    assert protocol.tag(b"") == (0xCBF29CE484222325).to_bytes(8, "little")
    assert protocol.tag(b"a") == (0xAF63DC4C8601EC8C).to_bytes(8, "little")
    assert protocol.tag(b"foobar") == (0x85944171F73967E8).to_bytes(8, "little")
    assert len({protocol.tag(f"pkg.mod:task_{i}".encode()) for i in range(10_000)}) == 10_000


def test_the_spool_form_has_no_token_nor_tag_and_comes_back_whole() -> None:
    for args, kwargs, kind in CALLS:
        message = protocol.encoder(KEY)(args, kwargs)
        kept = protocol.stored(message)
        body = message[protocol.HEAD_SIZE if kind == protocol.MARSHAL else protocol.LOOKUP_SIZE:-len(KEY) - 1]
        assert kept == kind + KEY.encode() + b"\x00" + body
        assert protocol.restored(kept) == message
    # Written by the versions before tags: the same form, read as it was written.
    assert protocol.decode(protocol.restored(b"m" + KEY.encode() + b"\x00" + marshal.dumps((1, "x")))) == (
        KEY.encode(), (1, "x"), {})
    assert protocol.decode(protocol.restored(b"a" + KEY.encode() + b"\x00")) == (KEY.encode(), (), {})


def test_the_fast_path_takes_small_tuples_and_pickles_only() -> None:
    encode = protocol.encoder(KEY)
    assert protocol.lookup_ok(encode(tuple(range(255)), {})[:protocol.LOOKUP_SIZE])
    assert protocol.lookup_ok(encode(([1],), {})[:protocol.LOOKUP_SIZE])
    assert protocol.lookup_ok(encode((), {})[:protocol.LOOKUP_SIZE])
    many = encode(tuple(range(256)), {})  # more than 255 arguments: by key, the way of everything else
    assert not protocol.lookup_ok(many[:protocol.LOOKUP_SIZE])
    assert protocol.decode(many)[1] == tuple(range(256))
    flipped = bytearray(encode((1,), {}))  # a count that a flipped bit made huge: never the fast path
    flipped[protocol.HEAD_SIZE + 4] ^= 0x40
    assert not protocol.lookup_ok(bytes(flipped[:protocol.LOOKUP_SIZE]))


EDGE_VALUES = (0, -1, 2**64, -(2**200), 0.0, -0.0, float("inf"), 1e-310, 3j, complex(-0.0, 2), "", "a" * 300,
               "\ud800 surrogate", "interned", b"", b"\x00" * 300, True, False, None)


def test_marshalled_calls_give_back_equal_values_of_the_same_types() -> None:
    message = protocol.encoder(KEY)(EDGE_VALUES, {})
    assert message.startswith(protocol.PREFIX + protocol.MARSHAL)
    _, args, _ = protocol.decode(message)  # type: ignore[misc]
    assert [(type(a), repr(a)) for a in args] == [(type(a), repr(a)) for a in EDGE_VALUES]
    assert str(args[13]) == "interned" and args[7] == 1e-310


def test_marshalled_bodies_carry_no_reference_table() -> None:
    # Version 2: the fast path's format (versions 3 and later flag every object for a table of
    # references, which costs more than the small call itself); one repeated object shows it.
    repeated = "x" * 20
    message = protocol.encoder(KEY)((repeated, repeated), {})
    body = message[protocol.HEAD_SIZE:-len(KEY) - 1]
    assert body == marshal.dumps((repeated, repeated), 2) != marshal.dumps((repeated, repeated))
    assert not any(code & 0x80 for code in (body[0], body[5], body[30]))  # tuple, then each string: no FLAG_REF


def test_subclasses_are_pickled_not_marshalled() -> None:
    class Number(int):
        pass

    # A local class cannot be pickled: the point is that marshal is not tried (it would drop the type).
    with pytest.raises(PayloadError, match=f"{KEY}: arguments cannot be pickled"):
        protocol.encoder(KEY)((Number(3),), {})


def test_the_token_is_random_per_instance_and_starts_every_envelope() -> None:
    assert len(protocol.TOKEN) == 16 and protocol.PREFIX == protocol.HEADER + protocol.TOKEN
    code = "from uwsgiconf_mules.protocol import envelope as _protocol; print(_protocol.TOKEN.hex())"
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
    assert protocol.refusal(protocol.MAGIC + b"\x09akey\x00") == "envelope of protocol version 9, this runtime reads 3"
    assert protocol.refusal(protocol.MAGIC) == "truncated envelope"
    for forged in (protocol.HEADER + b"akey\x00", protocol.HEADER + bytes(16) + b"mos:system\x00",
                   protocol.HEADER + protocol.TOKEN[:-1]):
        assert protocol.refusal(forged) == "not sent by this uWSGI instance (wrong or missing token)"


def test_damaged_envelopes_are_errors() -> None:
    with pytest.raises(ValueError, match="damaged envelope"):
        protocol.decode(protocol.PREFIX + b"a" + bytes(8) + b"\x01key-without-start")
    with pytest.raises(ValueError, match="damaged envelope"):
        protocol.decode(protocol.PREFIX + b"z" + bytes(8) + protocol.PAD + b"\x00key")
    with pytest.raises(ValueError, match="damaged envelope"):  # a pickled call without its pad
        protocol.decode(protocol.PREFIX + b"a" + bytes(8) + b"\x00key")
    # A tuple claiming 2**31 - 1 items in a 9-byte body (one flipped bit): refused before marshal
    # would allocate it.
    for code in (b"(", b"\xa8", b"["):
        with pytest.raises(ValueError, match="damaged envelope"):
            protocol.decode(protocol.task_header(KEY, protocol.MARSHAL) + code + b"\xff\xff\xff\x7fi\x01\x00\x00\x00"
                            + b"\x00" + KEY.encode())


def test_kind_and_is_call_read_the_envelope_once_for_every_reader() -> None:
    call = protocol.encoder("jobs:send")((1, 2), {})
    keyword = protocol.encoder("jobs:send")((), {"to": "x"})
    assert protocol.kind(call) in protocol.CALL_KINDS and protocol.is_call(call)
    assert protocol.kind(keyword) == protocol.KWARGS and protocol.is_call(keyword)
    wrapped = protocol.data(protocol.PREFIX + b"plain")  # data that looks like an envelope gets wrapped
    assert protocol.kind(wrapped) == protocol.DATA and not protocol.is_call(wrapped)
    assert protocol.kind(protocol.PROBE) == protocol.PROBE[-1:] and not protocol.is_call(protocol.PROBE)
    for other in (b"plain", b"", protocol.PREFIX, protocol.HEADER + bytes(16) + protocol.ARGS):
        assert not protocol.is_call(other)
    assert protocol.kind(b"plain") is None and protocol.kind(protocol.PREFIX) == b""


def test_calls_are_packed_in_order_into_batches_within_the_limit() -> None:
    encode = protocol.encoder("tasks:batch")
    calls = [encode((i, "x" * (i % 50)), {}) for i in range(500)]
    packed = protocol.pack(calls, 4096)
    assert sum(number for _, number in packed) == 500 and len(packed) > 1
    assert all(len(message) <= 4096 for message, _ in packed)
    found = []
    for message, number in packed:
        if number == 1:
            found.append(message)
            continue
        assert message.startswith(protocol.BATCH_HEAD)
        inner = protocol.split(message)
        assert len(inner) == number
        found += inner
    assert found == calls
    assert protocol.pack(calls[:1], 4096) == [(calls[0], 1)]  # one call: its envelope as it is
    assert protocol.pack([], 4096) == []


def test_a_batch_is_kept_in_the_spool_as_one_payload_and_restored_with_the_token() -> None:
    encode = protocol.encoder("tasks:batch")
    calls = [encode((i,), {}) for i in range(3)] + [encode((), {"k": 1})]
    (batch, number), = protocol.pack(calls, 65536)
    assert number == 4
    payload = protocol.stored(batch)
    assert protocol.TOKEN not in payload and payload[:1] == protocol.BATCH
    assert protocol.restored(payload) == batch
    with pytest.raises(ValueError, match="damaged batch"):
        protocol.split(batch[:len(protocol.BATCH_HEAD) + 1] + (10**6).to_bytes(4, "little"))
    with pytest.raises(ValueError, match="damaged batch"):
        protocol.split(protocol.BATCH_HEAD + marshal.dumps([1, 2], 2))
