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

from ..errors import DeliveryError, PayloadError
from ..protocol.envelope import pack
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


def encoded(key: str, encode: Encoder, route: Route, calls: Iterable[tuple[Any, ...]]) -> list[bytes]:
    """The envelopes of ``calls``, each checked as a call of its own is.

    :param key: The task key.
    :param encode: The task's envelope encoder.
    :param route: Where the calls go.
    :param calls: The positional arguments of each call.
    :raises PayloadError: naming every call that cannot be sent, by index; ``failed`` lists them.
    """
    messages: list[bytes] = []
    failures: list[tuple[int, str]] = []
    limit, check = route.limit, route.check
    empty: dict[str, Any] = {}
    for index, given in enumerate(calls):
        try:
            args = given if type(given) is tuple else tuple(given)
            message = encode(args, empty)
            if len(message) > limit:
                route.check_size(len(message), key)
            if check is not None:
                check(key, args, empty)
        except (PayloadError, TypeError) as exc:
            failures.append((index, str(exc)))
            continue
        messages.append(message)
    if failures:
        shown = "; ".join(f"call {index}: {why}" for index, why in failures[:SHOWN])
        more = f"; and {len(failures) - SHOWN} more" if len(failures) > SHOWN else ""
        raise PayloadError(f"{key}: {len(failures)} of {len(messages) + len(failures)} calls cannot be sent, so none "
                           f"was: {shown}{more}", failed=tuple(index for index, _ in failures))
    return messages


def send_calls(key: str, encode: Encoder, current: Current, calls: Iterable[tuple[Any, ...]]) -> int:
    """Queue ``calls`` of task ``key`` (see the module docstring); returns how many were queued
    (all of them: anything else raises).

    :param key: The task key.
    :param encode: The task's envelope encoder.
    :param current: The task's route, send function, destination and ``queued`` count cell, resolved.
    :param calls: The positional arguments of each call, in order.
    :raises PayloadError: when a call cannot be sent (none was).
    :raises DeliveryError: when the queue stayed full (its ``queued``: how many were).
    """
    route, send, dest, count = current()
    messages = encoded(key, encode, route, calls)
    if not messages:
        return 0
    if route.sender is not None and send is route.sender:  # a farm routed to RQ: one pipeline
        return int(send.many(messages))  # type: ignore[attr-defined]
    if _instance.uwsgi is None:  # inline, or a test mode: each call on its own, in order
        for message in messages:
            send(message, dest)
        return len(messages)
    queued = 0
    for message, number in pack(messages, route.limit):
        if not send(message, dest):
            try:
                deliver(message, dest, f"{key} to {route.label}", route.timeout)
            except DeliveryError as exc:
                raise DeliveryError(f"{exc}; of a batch of {len(messages)} calls, the first {queued} were queued, "
                                    f"the {len(messages) - queued} others not", target=dest, queued=queued) from None
        count[0] += number
        queued += number
    return queued
