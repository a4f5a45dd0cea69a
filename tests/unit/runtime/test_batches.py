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
