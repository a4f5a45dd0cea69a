"""How a dispatch mule runs a batch (``f.map(...)``, ``f.starmap(...)``; see
``uwsgiconf_mules.protocol.envelope.pack``): the calls one after the other, in order.

Each call of a batch is a whole envelope, token included, and is looked up as the loop's fast path
looks up a call: by its first ``LOOKUP_SIZE`` bytes (the token among them), in the heads of the
registered tasks (``uwsgiconf_mules.runtime.tasks.HEADS``); the calls of a streak of one task are
each checked to start with those same bytes (one ``startswith``). A call the fast path would not
take (keyword arguments, an unknown task, a task whose tag another shares), and every call when a
harakiri is declared (armed per call) or the counters are on (counted per call), takes
:func:`uwsgiconf_mules.runtime.tasks.run`, as a single call would. A failed call is reported as
any failed call, and the next one runs. A batch whose calls all start with the same lookup (what
``f.map()`` sends: one task, the token in every call's first bytes, checked for every call at once)
and all carry arguments runs in a loop of its own (:func:`_streak`), whose bodies are cut and
decoded by C loops.

Told to stop (a reload, a stop), the mule finishes the call it is running and returns the batch of
the calls not run: the loop keeps it in the spool (one file), with what is still queued.
"""

from __future__ import annotations

from itertools import repeat
from operator import getitem

from ..protocol.envelope import HEAD_SIZE, LOOKUP_SIZE, PREFIX, batch, lookup_ok, split
from ..runtime import tasks as _tasks

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: mules import this module, keep it cheap
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any


def run(view: memoryview, size: int, *, harakiri: int, counted: bool, stopping: Callable[[], bool]) -> bytes | None:
    """Run the calls of the batch in ``view[:size]``; return the batch of the calls not run when
    told to stop, else None.

    :param view: The loop's buffer (it starts with ``BATCH_HEAD``).
    :param size: The batch's size.
    :param harakiri: Seconds each call may run before uWSGI kills the mule; 0 for no limit.
    :param counted: Whether the counters are on.
    :param stopping: Whether the mule was told to stop.
    """
    try:
        calls = split(view[:size])  # one C call for the list: cheaper than walking it here
    except Exception as exc:
        _tasks.refuse(bytes(view[:size]), f"cannot decode the batch ({type(exc).__name__}: {exc})")
        return None
    heads, now_running = _tasks.HEADS, _tasks.LOOP_CALL
    slow = harakiri > 0 or counted
    if not slow and calls:
        lookup = calls[0][:LOOKUP_SIZE]
        one = _entry(heads, lookup) if len(lookup) == LOOKUP_SIZE else None
        if one is not None and all(map(bytes.startswith, calls, repeat(lookup))) and min(map(len, calls)) > one[3]:
            return _streak(calls, one, stopping)  # what f.map() sends: calls of one task, each with arguments
    entries: dict[bytes, tuple[Any, ...] | None] = {}  # for this batch: registering a task meanwhile changes HEADS
    run_one, failed, returned = _tasks.run, _tasks.failed, _tasks.returned
    last = NEVER  # the lookup of the calls run with `entry` (a streak of calls of one task, as f.map() sends)
    entry: tuple[Any, ...] | None = None
    func = loads = None
    offset = smallest = 0
    try:
        for index, call in enumerate(calls):
            if not heads and stopping():  # the stop handler empties HEADS: one test while not told
                return batch(calls[index:])
            if not call.startswith(last):  # the token is in the lookup: a call without it is no entry's
                lookup = call[:LOOKUP_SIZE]
                try:
                    entry = entries[lookup]
                except KeyError:
                    entry = entries[lookup] = None if slow or len(lookup) < LOOKUP_SIZE else _entry(heads, lookup)
                now_running[0] = entry
                if entry is None:
                    last = NEVER
                else:
                    last, (func, loads, offset, smallest) = lookup, entry[:4]
            if entry is None or len(call) < smallest:
                now_running[0] = None
                run_one(call, harakiri) if call.startswith(PREFIX) else _tasks.refuse(
                    call, "a call of a batch without this instance's token")
                continue
            try:
                result = func(*loads(call[offset:])) if len(call) > smallest else func()  # type: ignore[misc]
                if result is not None:
                    returned(entry[4], result)
            except KeyboardInterrupt:  # see tasks.run: said as a failure, then it stops the mule
                _failed(call, entry, failed)
                raise
            except BaseException:
                _failed(call, entry, failed)
        return None
    finally:
        now_running[0] = None


def _streak(calls: list[bytes], entry: tuple[Any, ...], stopping: Callable[[], bool]) -> bytes | None:
    """:func:`run` for a batch whose calls all start with the lookup of ``entry`` (the token among
    its bytes: checked for every call by the caller) and all carry arguments: their bodies cut and
    decoded by C loops, each call run in order, each failure reported, the rest returned on a stop."""
    heads, now_running, failed, returned = _tasks.HEADS, _tasks.LOOP_CALL, _tasks.failed, _tasks.returned
    func, loads, offset = entry[0], entry[1], slice(entry[2], None)
    now_running[0] = entry
    try:
        for index, body in enumerate(map(getitem, calls, repeat(offset))):
            if not heads and stopping():  # the stop handler empties HEADS: one test while not told
                return batch(calls[index:])
            try:
                result = func(*loads(body))
                if result is not None:
                    returned(entry[4], result)
            except KeyboardInterrupt:  # see tasks.run: said as a failure, then it stops the mule
                _failed(calls[index], entry, failed)
                raise
            except BaseException:
                _failed(calls[index], entry, failed)
        return None
    finally:
        now_running[0] = None


NEVER = b"\x00never"
"""What no envelope starts with."""


def _entry(heads: dict[bytes, Any], lookup: bytes) -> tuple[Any, ...] | None:
    """(function, body decoder, offset of the body, size of a call without arguments, task key)
    for the calls that start with ``lookup``; None when the fast path does not take them."""
    found = heads.get(lookup[:HEAD_SIZE])
    if found is None or not lookup_ok(lookup):
        return None
    func, loads, start, key, smallest = found
    return func, loads, start, smallest, key


def _failed(call: bytes, entry: tuple[Any, ...], failed: Callable[..., None]) -> None:
    try:
        args = tuple(entry[1](call[entry[2]:])) if len(call) > entry[3] else ()
    except Exception:
        args = ()
    failed(entry[4], args, None)
