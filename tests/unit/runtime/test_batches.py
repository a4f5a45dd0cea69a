"""The sending side of batches (``f.map``, ``f.starmap``) under uWSGI, with a recording send: calls
packed in order within the size of a batch, each failure named by index with what was queued."""

from __future__ import annotations

from typing import Any

import pytest

from uwsgiconf_mules.errors import DeliveryError, PayloadError
from uwsgiconf_mules.protocol import envelope as _protocol
from uwsgiconf_mules.runtime import batches as _batches, instance as _instance
from uwsgiconf_mules.runtime.sending import Route

KEY = "tasks:batch"


def sender(monkeypatch: pytest.MonkeyPatch, full_after: int = -1) -> tuple[list[bytes], list[int], Any]:
    """(messages sent, the queued count cell, the ``current`` of a task) for a mule of 212,960 bytes."""
    monkeypatch.setattr(_instance, "uwsgi", object())
    sent: list[bytes] = []
    count = [0, 0]
    route = Route(1, "mule 1", 212_960, 0.01)

    def send(message: bytes, dest: int | bytes) -> bool:
        if len(sent) == full_after:
            return False
        sent.append(message)
        return True

    return sent, count, lambda: (route, send, 1, count)


def calls_of(sent: list[bytes]) -> list[bytes]:
    return [call for message in sent for call in (_protocol.split(message) if message.startswith(
        _protocol.BATCH_HEAD) else [message])]


def test_calls_are_packed_in_order_into_batches_of_at_most_32_kib(monkeypatch: pytest.MonkeyPatch) -> None:
    sent, count, current = sender(monkeypatch)
    encode = _protocol.encoder(KEY)
    assert _batches.send_calls(KEY, encode, current, ((i, "x" * (i % 100)) for i in range(3000))) == 3000
    assert len(sent) > 1 and all(len(message) <= _batches.BATCH_BYTES for message in sent)
    assert calls_of(sent) == [encode((i, "x" * (i % 100)), {}) for i in range(3000)]
    assert count[0] == 3000
    assert _batches.send_calls(KEY, encode, current, [[7, "list"]]) == 1  # any iterable of arguments
    assert sent[-1] == encode((7, "list"), {})  # one call: its envelope as it is


def test_a_call_that_cannot_be_sent_stops_the_batch_saying_what_was_queued(monkeypatch: pytest.MonkeyPatch) -> None:
    sent, count, current = sender(monkeypatch)
    encode = _protocol.encoder(KEY)
    calls: list[tuple[Any, ...]] = [(i, "y" * 50) for i in range(2000)]
    calls[1500] = (1500, lambda: 0)
    with pytest.raises(PayloadError, match=r"call 1500 of the batch cannot be sent .*pickled") as info:
        _batches.send_calls(KEY, encode, current, calls)
    queued = info.value.queued
    assert info.value.failed == (1500,) and queued is not None and 0 < queued < 1500
    assert calls_of(sent) == [encode(args, {}) for args in calls[:queued]] and count[0] == queued
    with pytest.raises(PayloadError, match="call 0 of the batch") as big:
        _batches.send_calls(KEY, encode, current, [(b"z" * 300_000,)])
    assert big.value.queued == 0


def test_a_queue_full_past_the_timeout_says_how_many_were_queued(monkeypatch: pytest.MonkeyPatch) -> None:
    sent, _, current = sender(monkeypatch, full_after=2)

    def stays_full(message: bytes, dest: int | bytes, what: str, timeout: float) -> bool:
        raise DeliveryError(f"{what}: the queue stayed full", target=dest)

    monkeypatch.setattr(_batches, "deliver", stays_full)
    with pytest.raises(DeliveryError, match=r"the first .* calls were queued, the others not") as info:
        _batches.send_calls(KEY, _protocol.encoder(KEY), current, ((i, "w" * 100) for i in range(5000)))
    assert info.value.queued == len(calls_of(sent)) > 0


class Iterable:
    """Arguments as an iterable that is no tuple (consumed once, as a generator is)."""

    def __init__(self, *args: Any) -> None:
        self.args, self.taken = args, False

    def __iter__(self) -> Any:
        assert not self.taken, "consumed twice"
        self.taken = True
        return iter(self.args)


def test_every_kind_of_call_gets_the_envelope_it_gets_alone_in_order_and_in_batches_as_batch_writes_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    sent, count, current = sender(monkeypatch)
    encode = _protocol.encoder(KEY)
    calls: list[Any] = [(i, 2**40 * i, -1.5, None, True) for i in range(700)]  # one length (packed by C loops)
    calls += [(i, "é" * (i % 37), b"\x00" * (i % 5)) for i in range(900)]  # lengths that vary
    calls += [(i, bytearray(b"b"), [i]) for i in range(90)]  # pickled: call by call
    calls += [(), (1,), [2, "list"], Iterable(3, "it"), ("s" * 40_000,), (b"x" * 150_000,)]  # odd ones, large
    calls += [(i, i + 0.5) for i in range(300)] + [(7, bytearray(b"once"))] + [(i, "z") for i in range(300)]
    calls += [(True, 1, 1.0, complex(1, 1), "(\x03\x00\x00\x00", b"(\x02\x00\x00\x00s")] * 50
    calls += [(1,), (), ("no arguments between",)] * 40  # an envelope of its own (kind a) for ()
    assert _batches.send_calls(KEY, encode, current, iter(calls)) == len(calls) == count[0]
    expected = [encode(tuple(call.args) if isinstance(call, Iterable) else tuple(call), {}) for call in calls]
    assert calls_of(sent) == expected
    for message in sent:
        if message.startswith(_protocol.BATCH_HEAD):  # byte for byte what envelope.batch() writes
            assert _protocol.batch(_protocol.split(message)) == message and len(_protocol.split(message)) > 1
            assert len(message) <= _batches.BATCH_BYTES
        else:  # a call alone: one that fits no batch, or the only one of its message
            assert message in expected
    assert sum(len(message) > _batches.BATCH_BYTES for message in sent) == 2  # the two large calls


def test_a_target_with_messages_smaller_than_a_batch_gets_messages_it_reads_whole(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_instance, "uwsgi", object())
    sent: list[bytes] = []
    route = Route(1, "mule 1", 2000, 0.01)
    current = lambda: (route, lambda message, dest: sent.append(message) or True, 1, [0, 0])  # noqa: E731
    encode = _protocol.encoder(KEY)
    calls = [(i, "y" * (i % 300)) for i in range(2000)]
    assert _batches.send_calls(KEY, encode, current, calls) == 2000
    assert all(len(message) <= 2000 for message in sent) and len(sent) > 100
    assert calls_of(sent) == [encode(call, {}) for call in calls]


def test_a_call_that_is_no_iterable_is_refused_by_index_after_the_runs_before_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    sent, count, current = sender(monkeypatch)
    encode = _protocol.encoder(KEY)
    calls: list[Any] = [(i, "v" * 20) for i in range(5000)]
    calls[4100] = Iterable(4100, "once")
    calls[4101] = 5
    with pytest.raises(PayloadError, match="call 4101 of the batch cannot be sent") as info:
        _batches.send_calls(KEY, encode, current, calls)
    queued = info.value.queued
    assert info.value.failed == (4101,) and queued is not None and 0 < queued <= 4101
    assert calls_of(sent) == [encode((4100, "once") if i == 4100 else calls[i], {}) for i in range(queued)]
    assert count[0] == queued


def test_map_queues_one_call_per_item(monkeypatch: pytest.MonkeyPatch) -> None:
    from uwsgiconf_mules.runtime import offload as _offload

    sent, count, current = sender(monkeypatch)
    encode = _protocol.encoder(KEY)
    map_, _ = _offload._batches(KEY, encode, current, None)
    assert map_(range(1000)) == 1000 == count[0]
    assert calls_of(sent) == [encode((i,), {}) for i in range(1000)]


def test_what_the_iterable_of_calls_raises_propagates_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    sent, count, current = sender(monkeypatch)

    def calls() -> Any:
        yield from ((i, "u" * 30) for i in range(3000))
        raise TypeError("the caller's own")

    with pytest.raises(TypeError, match="the caller's own"):
        _batches.send_calls(KEY, _protocol.encoder(KEY), current, calls())
    assert 0 < len(calls_of(sent)) == count[0] < 3000


def test_runs_of_marshal_safe_calls_fill_each_message_as_packing_call_by_call_does(
        monkeypatch: pytest.MonkeyPatch) -> None:
    sent, count, current = sender(monkeypatch)
    encode = _protocol.encoder(KEY)
    calls: list[Any] = [(i, 10_000, b"") for i in range(2000)] + [(i, "t" * (i % 77)) for i in range(3000)]
    calls += [(i,) for i in range(10)] + [(i, 1.5) for i in range(999)]
    calls += [(i, "w" * 300 if i % 300 else "") for i in range(3000)]  # chunks taken for the short ones: cut
    calls += [(i, bytearray(b"pickled, call by call")) for i in range(300)]  # the message filling goes on
    assert _batches.send_calls(KEY, encode, current, (call for call in calls)) == len(calls) == count[0]
    expected = [encode(call, {}) for call in calls]
    assert sent == [message for message, _ in _protocol.pack(expected, _batches.BATCH_BYTES)]
    sent.clear()
    assert _batches.send_calls(KEY, encode, current, calls[:3]) == 3 and sent == [_protocol.batch(expected[:3])]
