"""Many calls of one task in few sends: ``f.map(iterable)`` and ``f.starmap(iterable_of_tuples)``.

Every call is encoded as a call of its own is (its envelope carries the token, and is checked by
the mule as any call), then the calls are packed in order into messages of at most
:data:`BATCH_BYTES` (``uwsgiconf_mules.protocol.envelope.batch``), each sent as soon as it is full:
a batch of small calls costs the mule one queue read per message, not one per call, and the mule
starts on the first calls while the next ones are encoded. A dispatch mule runs them one after the
other, in order; told to stop mid-batch, it finishes the running call and keeps the rest in the
spool, as it keeps what is still queued.

The calls are taken a message's worth at a time. A run of calls whose arguments are all of exactly
``MARSHAL_SAFE`` types (the check a call alone makes, on every argument's type) is encoded by C
loops (a ``map`` of ``marshal.dumps``, one ``join`` per message) into the envelopes each call would
get alone, byte for byte; any other run (arguments of other types, a call too large for a message
of a batch, a call without arguments) is encoded call by call, as each call alone is. Every message
holds as many calls as fit, as packing them call by call does (``envelope.pack``), but where a run
encoded call by call is followed by a packed run: its message is sent as it is.

Nothing is accepted then dropped:

* a call that cannot be encoded or is too large raises :class:`~uwsgiconf_mules.errors.PayloadError`
  naming it by index (its ``failed``); the calls of the messages sent before it stay queued (its
  ``queued`` says how many), it and the calls after it are not sent;
* a full queue is waited on as for one call (``send_timeout``, within the request's budget); when
  the wait runs out, :class:`~uwsgiconf_mules.errors.DeliveryError` says how many calls were queued
  (its ``queued``: the first ones, in order) and that the others were not sent.

Elsewhere: a farm routed to RQ gets every call checked first, then all the jobs in one pipeline
(``Queue.enqueue_many``: all accepted or none); outside uWSGI (inline calls, the test modes) each
call is handled as a call of its own, in order: ``capture`` records each, ``eager`` runs each (a
task's exception propagates at its call, the earlier ones having run).
"""

from __future__ import annotations

from bisect import bisect_right
from itertools import accumulate, chain, islice, repeat
from marshal import dumps as _marshal

from ..errors import DeliveryError, PayloadError
from ..protocol.envelope import (
    BATCH_HEAD,
    BATCH_ITEM as ITEM,
    BATCH_LIST,
    MARSHAL_SAFE,
    MARSHAL_VERSION,
    batch,
    marshal_parts,
)
from ..protocol.limits import MALLOC_MAPPED
from . import instance as _instance
from .sending import deliver

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: workers import this module, keep it cheap
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Any

    from ..protocol.envelope import Encoder
    from .sending import Route

    Current = Callable[[], tuple[Route, Callable[[bytes, int | bytes], bool], int | bytes, list[int]]]

SHOWN = 5
"""Failed calls a ``PayloadError`` of a batch names one by one (it counts the others)."""
BATCH_BYTES = 32768
"""Largest message of a batch (at most the target's limit): the mule starts on the first calls while
the sender encodes the next ones (benchmarks/README.md)."""
FIRST = 64
"""Calls taken first, before the size of a call is known (then: as many as fill a message)."""
EMPTY_BODY = len(_marshal((), MARSHAL_VERSION))
"""Length of a marshal-ed empty tuple: no other tuple is this short (a call without arguments has
an envelope of its own, see ``envelope.encoder``)."""


def send_calls(key: str, encode: Encoder, current: Current, calls: Iterable[tuple[Any, ...]]) -> int:
    """Queue ``calls`` of task ``key`` (see the module docstring); returns how many were queued
    (all of them: anything else raises).

    :param key: The task key.
    :param encode: The task's envelope encoder.
    :param current: The task's route, send function, destination and ``queued`` count cell, resolved.
    :param calls: The positional arguments of each call, in order.
    :raises PayloadError: when a call cannot be sent (its ``failed``, ``queued``: the calls before it
        that were queued).
    :raises DeliveryError: when the queue stayed full (its ``queued``: how many were).
    """
    route, send, dest, count = current()
    if _instance.uwsgi is None or route.sender is not None:  # inline, a test mode, a farm routed to RQ
        return _one_by_one(key, encode, route, send, dest=dest, calls=calls)
    packer = _Packer(key, encode, route, send, dest=dest, count=count)
    source = iter(calls)
    safe, flat = MARSHAL_SAFE.issuperset, chain.from_iterable
    while True:
        given = list(islice(source, packer.want))  # what the iterable raises propagates as it is
        if not given:
            break
        chunk: list[tuple[Any, ...]] = []
        try:  # as tuples: a tuple stays itself, another iterable is consumed once
            chunk.extend(map(tuple, given))
        except TypeError as exc:  # a call that is no iterable: the calls before it go as usual, it is refused
            packer.one_by_one(chunk)
            raise packer.refused(exc) from None
        if not safe(map(type, flat(chunk))) or not packer.packed(chunk):
            packer.one_by_one(chunk)
    packer.flush()
    return packer.queued


class _Packer:
    """What a batch sent so far (``queued``, the calls of a message still filling), and how it sends
    the next calls: :meth:`packed` for a run of calls of marshal-safe arguments, :meth:`one_by_one`
    for any others."""

    def __init__(self, key: str, encode: Encoder, route: Route, send: Callable[[bytes, int | bytes], bool], *,
                 dest: int | bytes, count: list[int]) -> None:
        self.key, self.encode, self.route, self.send, self.dest, self.count = key, encode, route, send, dest, count
        self.header, self.trailer = marshal_parts(encode)
        self.room = min(route.limit, BATCH_BYTES) - BATCH_LIST  # what the envelopes of a message may take
        self.fixed = len(self.header) + len(self.trailer) + ITEM  # what a call takes beyond its body
        self.prefixes: dict[int, bytes] = {}  # body length -> what comes before the body in a batch
        self.parts: list[bytes] = []  # envelopes of the message filling (one_by_one)
        self.carry: list[bytes] = []  # or the bodies of its calls (packed), their lengths, the least and largest
        self.carry_sizes: list[int] = []
        self.carry_span = (0, 0)
        self.size = 0  # their size in the message
        self.queued = 0
        self.want = FIRST

    def packed(self, chunk: list[tuple[Any, ...]]) -> bool:
        """Add ``chunk`` (calls whose arguments are all of marshal-safe types) to the message filling,
        sending each message once the next call does not fit; False, with nothing done, when a call
        needs :meth:`one_by_one` (too large for a message of a batch, or without arguments)."""
        bodies = list(map(_marshal, chunk, repeat(MARSHAL_VERSION)))
        sizes = list(map(len, bodies))
        lo, hi = min(sizes), max(sizes)
        fixed, room = self.fixed, self.room
        if lo <= EMPTY_BODY or hi + fixed > room:
            return False
        self.flush(parts_only=True)  # the calls before these go first
        for size in (lo,) if lo == hi else set(sizes).difference(self.prefixes):
            if size not in self.prefixes:  # marshal's bytes code, the envelope's length, its header
                self.prefixes[size] = b"s" + (fixed - ITEM + size).to_bytes(4, "little") + self.header
        if self.carry:  # the calls of the message filling come first
            bodies[:0], sizes[:0] = self.carry, self.carry_sizes
            lo, hi = min(lo, self.carry_span[0]), max(hi, self.carry_span[1])
        start = 0
        if lo == hi:  # one length: as many calls a message as fit
            per = room // (lo + fixed)
            while len(bodies) - start > per:
                self._message(bodies[start:start + per], sizes[start:start + per], same=True)
                start += per
            left = (len(bodies) - start) * (lo + fixed)
        else:
            ends = list(accumulate(map(fixed.__add__, sizes)))  # the size of the calls up to each
            taken = 0
            while ends[-1] - taken > room:
                stop = bisect_right(ends, taken + room, start)
                self._message(bodies[start:stop], sizes[start:stop], same=False)
                start, taken = stop, ends[stop - 1]
            left = ends[-1] - taken
        self.carry, self.carry_sizes = bodies[start:], sizes[start:]
        self.carry_span = (min(self.carry_sizes), max(self.carry_sizes)) if lo != hi and self.carry else (lo, hi)
        self.want = (room - left) // (lo + fixed) + 1  # enough to fill it
        return True

    def _message(self, bodies: list[bytes], sizes: list[int], *, same: bool) -> None:
        """Send the calls of ``bodies`` (their marshal-ed arguments) in one message: a batch, or the
        envelope of a single call as it is (as ``envelope.batch`` makes them)."""
        header, trailer, join = self.header, self.trailer, b"".join
        if len(bodies) == 1:
            self._send(join((header, bodies[0], trailer)), 1)
            return
        head = BATCH_HEAD + b"[" + len(bodies).to_bytes(4, "little")  # marshal's list, as batch() writes it
        if same or min(sizes) == max(sizes):  # every call but the first is preceded by the trailer of the one before
            prefix = self.prefixes[sizes[0]]
            self._send(join((head, prefix, (trailer + prefix).join(bodies), trailer)), len(bodies))
        else:
            self._send(join((head, join(chain.from_iterable(zip(map(self.prefixes.__getitem__, sizes), bodies,
                                                                  repeat(trailer)))))), len(bodies))

    def one_by_one(self, given: list[Any]) -> None:
        """Encode the calls of ``given`` one by one, as each would be alone, adding them to the message
        filling, which is sent once the next call does not fit."""
        key, encode, check_size, room = self.key, self.encode, self.route.check_size, self.room
        small = min(self.route.limit, MALLOC_MAPPED)  # larger: checked (see Route.check_size)
        parts = self.parts
        if self.carry:  # the message filling goes on, as envelopes
            parts += map(b"".join, zip(repeat(self.header), self.carry, repeat(self.trailer)))
            self.size = sum(self.carry_sizes) + len(self.carry) * self.fixed
            self.carry, self.carry_sizes = [], []
        empty: dict[str, Any] = {}
        append, size = parts.append, self.size
        for call in given:
            try:
                message = encode(call if type(call) is tuple else tuple(call), empty)
            except (PayloadError, TypeError) as exc:
                raise self.refused(exc) from None
            size += len(message) + ITEM
            if size > room:  # every message larger than `small` gets here (room < small)
                if len(message) > small:
                    try:
                        check_size(len(message), key)
                    except PayloadError as exc:
                        raise self.refused(exc) from None
                if parts:
                    self.flush()
                    size = len(message) + ITEM
            append(message)
        self.size = size

    def refused(self, exc: Exception) -> PayloadError:
        """The error of the next call, which cannot be sent (``exc``: why); the calls of the message
        filling are not sent either."""
        return _refused(self.key, self.queued + len(self.parts) + len(self.carry), self.queued, exc)

    def flush(self, *, parts_only: bool = False) -> None:
        """Send the message filling, if any calls are in it.

        :param parts_only: Only if :meth:`one_by_one` added them (not :meth:`packed`).
        """
        if self.parts:
            self._send(batch(self.parts), len(self.parts))
            self.parts.clear()
            self.size = 0
        elif self.carry and not parts_only:
            self._message(self.carry, self.carry_sizes, same=False)
            self.carry, self.carry_sizes = [], []

    def _send(self, message: bytes, calls: int) -> None:
        """Send one message of ``calls`` calls, waiting for room as a call alone does."""
        if not self.send(message, self.dest):
            try:
                deliver(message, self.dest, f"{self.key} to {self.route.label}", self.route.timeout)
            except DeliveryError as exc:
                raise DeliveryError(f"{exc}; of the batch, the first {self.queued} calls were queued, the others not",
                                    target=self.dest, queued=self.queued) from None
        self.queued += calls
        self.count[0] += calls


def _refused(key: str, index: int, queued: int, exc: Exception) -> PayloadError:
    return PayloadError(f"{key}: call {index} of the batch cannot be sent ({exc}); the {queued} calls sent before it "
                        "stay queued, it and the calls after it were not sent", failed=(index,), queued=queued)


def _one_by_one(key: str, encode: Encoder, route: Route, send: Callable[[bytes, int | bytes], bool], *,
                dest: int | bytes, calls: Iterable[tuple[Any, ...]]) -> int:
    """Outside uWSGI, in a test mode, or to a farm routed to RQ: every call checked first (none sent
    if one fails), then sent one by one in order, or to RQ in one pipeline."""
    messages: list[bytes] = []
    failures: list[tuple[int, str]] = []
    empty: dict[str, Any] = {}
    for index, given in enumerate(calls):
        try:
            args = given if type(given) is tuple else tuple(given)
            message = encode(args, empty)
            route.check_size(len(message), key)
            if route.check is not None:
                route.check(key, args, empty)
        except (PayloadError, TypeError) as exc:
            failures.append((index, str(exc)))
            continue
        messages.append(message)
    if failures:
        shown = "; ".join(f"call {index}: {why}" for index, why in failures[:SHOWN])
        more = f"; and {len(failures) - SHOWN} more" if len(failures) > SHOWN else ""
        raise PayloadError(f"{key}: {len(failures)} of {len(messages) + len(failures)} calls cannot be sent, so none "
                           f"was: {shown}{more}", failed=tuple(index for index, _ in failures), queued=0)
    if route.sender is not None and send is route.sender and messages:  # a farm routed to RQ: one pipeline
        return int(send.many(messages))  # type: ignore[attr-defined]
    for message in messages:
        send(message, dest)
    return len(messages)
