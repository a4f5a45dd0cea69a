"""How a dispatch mule runs a batch (``f.map(...)``, ``f.starmap(...)``; see
``uwsgiconf_mules.protocol.envelope.pack``): the calls one after the other, from the buffer the loop
read the batch into.

Each call of a batch is a whole envelope, token included, and is looked up as the loop's fast path
looks up a call: by its first ``LOOKUP_SIZE`` bytes (the token among them), in the heads of the
registered tasks (``uwsgiconf_mules.runtime.tasks.HEADS``), its body decoded from the buffer, up to
the end of the call. A call the fast path would not take (keyword arguments, an unknown task, a
task whose tag another shares), every call when a harakiri is declared (armed per call) or the
counters are on (counted per call), takes :func:`uwsgiconf_mules.runtime.tasks.run`, as a single
call would. A failed call is reported as any failed call, and the next one runs.

Told to stop (a reload, a stop), the mule finishes the call it is running and returns where the
next call starts: the loop keeps the rest of the batch (:func:`rest`) in the spool, with what is
still queued.
"""

from __future__ import annotations

from ..protocol.envelope import BATCH_HEAD, BATCH_ITEM, BATCH_LIST, HEAD_SIZE, LOOKUP_SIZE, lookup_ok
from ..runtime import tasks as _tasks

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: mules import this module, keep it cheap
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any


BYTES = ord("s")
"""marshal's code of a bytes object, before each envelope of a batch."""


def run(buffer: Any, view: memoryview, size: int, *, harakiri: int, counted: bool, stopping: Callable[[], bool]) -> int:
    """Run the calls of the batch in ``buffer[:size]``; return where the first call not run starts
    (``size`` once all ran, or the rest was refused): see :func:`rest`.

    :param buffer: The loop's buffer (it starts with ``BATCH_HEAD``).
    :param view: A memoryview of it.
    :param size: The batch's size.
    :param harakiri: Seconds each call may run before uWSGI kills the mule; 0 for no limit.
    :param counted: Whether the counters are on.
    :param stopping: Whether the mule was told to stop.
    """
    heads, now_running = _tasks.HEADS, _tasks.LOOP_CALL
    entries: dict[bytes, tuple[Any, ...] | None] = {}  # for this batch: registering a task meanwhile changes HEADS
    from_bytes, run_one, failed, returned = int.from_bytes, _tasks.run, _tasks.failed, _tasks.returned
    where = BATCH_LIST
    slow = harakiri > 0 or counted
    last = b""  # the lookup of the calls run with `entry` (a streak of calls of one task, as f.map() sends)
    entry: tuple[Any, ...] | None = None
    func = loads = None
    offset = smallest = 0
    try:
        while where < size:
            if not heads and stopping():  # the stop handler empties HEADS: one test while not told
                return where
            length = from_bytes(buffer[where + 1:where + BATCH_ITEM], "little")
            start = where + BATCH_ITEM
            where = end = start + length
            if end > size or length < LOOKUP_SIZE or buffer[start - BATCH_ITEM] != BYTES:
                _damaged(size, start - BATCH_ITEM)
                return size
            lookup = buffer[start:start + LOOKUP_SIZE]
            if lookup != last:  # the token is in the lookup: a call without it is no entry's
                try:
                    entry = entries[lookup]
                except KeyError:
                    entry = entries[lookup] = None if slow else _entry(heads, lookup)
                last = lookup
                now_running[0] = entry
                if entry is not None:
                    func, loads, offset, smallest = entry[:4]
            if entry is None or length < smallest:
                now_running[0] = None
                last = b""
                run_one(buffer[start:end], harakiri)
                continue
            try:
                result = func(*loads(view[start + offset:end])) if length > smallest else func()  # type: ignore[misc]
                if result is not None:
                    returned(entry[4], result)
            except KeyboardInterrupt:  # see tasks.run: said as a failure, then it stops the mule
                _failed(view[start:end], entry, failed)
                raise
            except BaseException:
                _failed(view[start:end], entry, failed)
        return size
    finally:
        now_running[0] = None


def rest(buffer: Any, where: int, size: int) -> bytes:
    """The batch of the calls of the batch in ``buffer[:size]`` from ``where`` (see :func:`run`).

    :param buffer: The loop's buffer.
    :param where: Where the first call not run starts.
    :param size: The batch's size.
    """
    count = 0
    at = where
    while at < size:
        at += BATCH_ITEM + int.from_bytes(buffer[at + 1:at + BATCH_ITEM], "little")
        count += 1
    calls: bytes = buffer[where:size]
    return BATCH_HEAD + b"[" + count.to_bytes(4, "little") + calls


def _entry(heads: dict[bytes, Any], lookup: bytes) -> tuple[Any, ...] | None:
    """(function, body decoder, offset of the body, size of a call without arguments, task key)
    for the calls that start with ``lookup``; None when the fast path does not take them."""
    found = heads.get(lookup[:HEAD_SIZE])
    if found is None or not lookup_ok(lookup):
        return None
    func, loads, start, key, smallest = found
    return func, loads, start, smallest, key


def _failed(call: memoryview, entry: tuple[Any, ...], failed: Callable[..., None]) -> None:
    try:
        args = tuple(entry[1](call[entry[2]:])) if len(call) > entry[3] else ()
    except Exception:
        args = ()
    failed(entry[4], args, None)


def _damaged(size: int, where: int) -> None:
    _tasks.log().error("uwsgiconf-mules: mule %d refused the rest of a damaged batch from byte %d of %d: not run",
                       _tasks.current_mule(), where, size)
