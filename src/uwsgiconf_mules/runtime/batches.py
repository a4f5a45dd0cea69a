"""Many calls of one task in few sends: ``f.map(iterable)`` and ``f.starmap(iterable_of_tuples)``.

Every call is encoded as a call of its own is (its envelope carries the token, and is checked by
the mule as any call), then the calls are packed in order into as few messages as the target
reads whole (``uwsgiconf_mules.protocol.envelope.pack``): a batch of small calls costs the mule one
queue read, not one per call. A dispatch mule runs them one after the other, in order; told to
stop mid-batch, it finishes the running call and keeps the rest in the spool, as it keeps what is
still queued.

Nothing is accepted then dropped:

* every call is encoded and checked (its size, its arguments; a farm routed to RQ with JSON: what
  JSON gives back) before anything is sent; any that fails raises
  :class:`~uwsgiconf_mules.errors.PayloadError` naming the calls at fault by index (its
  ``failed``), and no call is sent;
* a full queue is waited on as for one call (``send_timeout``, within the request's budget); when
  the wait runs out, :class:`~uwsgiconf_mules.errors.DeliveryError` says how many calls were queued
  (its ``queued``: the first ones, in order) and that the others were not sent.

Elsewhere: a farm routed to RQ gets all the jobs in one pipeline (``Queue.enqueue_many``: all
accepted or none); outside uWSGI (inline calls, the test modes) each call is handled as a call
of its own, in order: ``capture`` records each, ``eager`` runs each (a task's exception propagates
at its call, the earlier ones having run).
"""

from __future__ import annotations

from marshal import dumps as _marshal

from ..errors import DeliveryError, PayloadError
from ..protocol.envelope import BATCH_ITEM as ITEM, BATCH_LIST, MARSHAL_SAFE, MARSHAL_VERSION, batch, marshal_parts
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
    check_size, label = route.check_size, f"{key} to {route.label}"
    small = min(route.limit, MALLOC_MAPPED)  # larger: checked (see Route.check_size)
    room = min(route.limit, BATCH_BYTES) - BATCH_LIST
    parts: list[bytes] = []
    append = parts.append
    size = queued = 0
    empty: dict[str, Any] = {}
    header, trailer = marshal_parts(encode)
    safe, dumps, join = MARSHAL_SAFE, _marshal, b"".join
    for given in calls:  # the hot loop of a batch: its index is queued + len(parts)
        try:
            args = given if type(given) is tuple else tuple(given)
            for arg in args:  # encode(args, {}), inlined for positional calls of marshal-safe values
                if type(arg) not in safe:
                    message = encode(args, empty)
                    break
            else:
                message = join((header, dumps(args, MARSHAL_VERSION), trailer)) if args else encode(args, empty)
        except (PayloadError, TypeError) as exc:
            raise _refused(key, queued + len(parts), queued, exc) from None
        size += len(message) + ITEM
        if size > room:  # every message larger than `small` gets here (room < small)
            if len(message) > small:
                try:
                    check_size(len(message), key)
                except PayloadError as exc:
                    raise _refused(key, queued + len(parts), queued, exc) from None
            if parts:
                queued += _send(parts, send, dest, label, timeout=route.timeout, queued=queued)
                count[0] += len(parts)
                parts.clear()
                size = len(message) + ITEM
        append(message)
    if parts:
        queued += _send(parts, send, dest, label, timeout=route.timeout, queued=queued)
        count[0] += len(parts)
    return queued


def _refused(key: str, index: int, queued: int, exc: Exception) -> PayloadError:
    return PayloadError(f"{key}: call {index} of the batch cannot be sent ({exc}); the {queued} calls sent before it "
                        "stay queued, it and the calls after it were not sent", failed=(index,), queued=queued)


def _send(parts: list[bytes], send: Callable[[bytes, int | bytes], bool], dest: int | bytes, label: str, *,
          timeout: float, queued: int) -> int:
    """Send one message of the calls in ``parts`` (their envelopes); returns how many calls."""
    message = batch(parts)
    if not send(message, dest):
        try:
            deliver(message, dest, label, timeout)
        except DeliveryError as exc:
            raise DeliveryError(f"{exc}; of the batch, the first {queued} calls were queued, the others not",
                                target=dest, queued=queued) from None
    return len(parts)


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
