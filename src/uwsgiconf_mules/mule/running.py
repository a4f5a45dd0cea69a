"""The record of the call a dispatch mule runs, for its successor to find if the mule dies.

The mule reads every message into one buffer (see :class:`~uwsgiconf_mules.mule.queues.Queues`);
here that buffer is a shared mapping of a file of the spool, ``mules/<id>.run``, so the bytes of
the running call are in the file's pages (the kernel's page cache, which outlives a process killed
with SIGKILL) without a copy. The file's first page is a header of 64-bit words (:data:`SIZE`
...): before each call, the loop stores the call's size in the header (one store into shared
memory: no system call, no flush), and stores 0 when its queues run empty. A thread of the mule
(the timer's, every :data:`~uwsgiconf_mules.mule.timer.RESCAN` seconds) notes a heartbeat and when
the running call was first seen, which tells the successor how long it had run (at least); the
same look writes the ``running`` record of a call with a result that has run a few milliseconds.

At start (:func:`recover`), a mule whose predecessor's header names a running call and whose
pid is gone reads the call back from the file: it is an *interrupted* call
(:func:`uwsgiconf_mules.mule.timer.interrupted`). Between two calls of a stream, the header may
still name a call that has just ended: a mule killed in that instant leaves a call that may have
run whole; the dead letter says so.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import time

from ..protocol import envelope as _protocol, spool as _spool
from ..protocol.spool import checks as _checks
from ..runtime import results as _results

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: mules import this module, keep it cheap
if TYPE_CHECKING:
    from typing import Any

PAGE = mmap.ALLOCATIONGRANULARITY
SIZE, PID, BEAT, SEEN, MAGIC, SIGN, START = range(7)
"""Words of the header: size of the running call (0: none), pid of the mule, its last heartbeat
and when it first saw the running call (ns since the epoch), a magic number, a sign of the call
seen (for the heartbeat), when the mule's process started (clock ticks since boot, see
:func:`~uwsgiconf_mules.protocol.spool.checks.start_ticks`: with the pid, who wrote the record)."""
MAGIC_VALUE = 0x55434D52554E0001  # "UCMRUN", version 1
SUFFIX = ".run"

_header: Any = None  # this mule's header (a memoryview of 64-bit words), once made
_buffer: mmap.mmap | None = None


def path_of(spool: _spool.Spool, mule_id: int) -> str:
    """The record file of mule ``mule_id``.

    :param spool: The spool.
    :param mule_id: The mule.
    """
    return os.path.join(spool.part("mules"), f"{mule_id}{SUFFIX}")


def read(spool: _spool.Spool, mule_id: int) -> tuple[int, bytes, int, int] | None:
    """What the record of a mule that is gone says: (pid, the running call's envelope, its
    heartbeat, when its call was first seen), or None when it names no running call (or is no
    record, or its mule still runs).

    :param spool: The spool.
    :param mule_id: The mule.
    """
    path = path_of(spool, mule_id)
    try:
        info = os.lstat(path)
        if not os.path.isfile(path) or os.path.islink(path) or info.st_uid != os.geteuid():
            return None
        with open(path, "rb") as handle:
            head = handle.read(PAGE)
            if len(head) < PAGE:
                return None
            words = memoryview(head).cast("Q")
            size, pid = words[SIZE], words[PID]
            if words[MAGIC] != MAGIC_VALUE or not size or _runs(pid, words[START]):
                return None
            message = handle.read(size)
    except OSError:
        return None
    if len(message) != size:
        return None
    return pid, message, words[BEAT], words[SEEN]


def _runs(pid: int, started: int) -> bool:
    """Whether the mule that wrote a record still runs: its pid is alive and is the same process
    (its start time); never this process, which reads records at start, before it writes its own."""
    if pid == os.getpid() or not _spool.alive(pid):
        return False
    now = _checks.start_ticks(pid)
    return not (started and now and now != started)


def buffer(spool: _spool.Spool | None, mule_id: int, size: int) -> tuple[mmap.mmap, Any] | None:
    """This mule's message buffer, mapped from its record file (made anew), and the header (64-bit
    words, see :data:`SIZE`); None without a spool, or when the file cannot be made (the loop then
    keeps no record).

    :param spool: The spool.
    :param mule_id: This mule.
    :param size: Bytes of the buffer.
    """
    global _header, _buffer
    if spool is None:
        return None
    path = path_of(spool, mule_id)
    try:
        tmp = os.path.join(spool.part("tmp"), f"{mule_id}{SUFFIX}")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            # Blocks reserved, not a sparse file: a full disk says so here (no record kept), never
            # as SIGBUS when the loop first writes to a page of the mapping.
            os.posix_fallocate(fd, 0, PAGE + size)
            head = mmap.mmap(fd, PAGE)
            body = mmap.mmap(fd, size, offset=PAGE)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except OSError as exc:
        from ..runtime import tasks as _tasks

        with contextlib.suppress(OSError):  # what was made of it
            os.unlink(os.path.join(spool.part("tmp"), f"{mule_id}{SUFFIX}"))

        _tasks.log().warning("uwsgiconf-mules: mule %d keeps no record of its running call (%s: %s): a call "
                             "interrupted by a kill is not reported", mule_id, path, exc.strerror or exc)
        return None
    words = memoryview(head).cast("Q")
    words[PID] = os.getpid()
    words[START] = _checks.start_ticks(os.getpid())
    words[MAGIC] = MAGIC_VALUE
    _header, _buffer = words, body
    from ..runtime import deferred as _deferred

    _deferred.KEPT[0] = clear
    return body, words


def beat() -> None:
    """Note a heartbeat, and when the running call was first seen (the timer thread, a few times a
    second); a call with a result that has run a few milliseconds gets its ``running`` record
    (:func:`uwsgiconf_mules.runtime.results.beat`)."""
    _results.beat()
    words, body = _header, _buffer
    if words is None or body is None:
        return
    now = time.time_ns()
    size = words[SIZE]
    sign = hash((size, body[:64])) & 0xFFFFFFFFFFFFFFFF if size else 0
    if sign != words[SIGN]:
        words[SIGN] = sign
        words[SEEN] = now
    words[BEAT] = now


def idle() -> bool | None:
    """Whether the loop runs no call now (the record's size is 0); None without a record."""
    words = _header
    return None if words is None else not words[SIZE]


def clear() -> None:
    """Say that no call runs (a clean stop)."""
    if _header is not None:
        _header[SIZE] = 0


def key_args(payload: bytes) -> tuple[str, tuple[Any, ...]]:
    """(task key, positional arguments) of a kept call, ``(key, ())`` when its arguments cannot be
    decoded, ``("", ())`` when nothing can.

    :param payload: The call without the token.
    """
    try:
        key, args, _ = _protocol.decode(_protocol.restored(payload))
        return key.decode(), tuple(args)
    except Exception:
        end = payload.find(b"\x00", 1)
        return (payload[1:end].decode("utf-8", "replace") if end > 0 else ""), ()


def recover(spool: _spool.Spool, mule_id: int) -> None:
    """At start: handle the call the predecessor of this mule was running when it died.

    :param spool: The spool.
    :param mule_id: This mule.
    """
    found = read(spool, mule_id)
    if found is None:
        return
    pid, message, beat_ns, seen_ns = found
    from ..runtime import deferred as _deferred, tasks as _tasks
    from . import timer as _timer

    kind = message[len(_protocol.PREFIX):len(_protocol.PREFIX) + 1]
    if not message.startswith(_protocol.MAGIC) or kind not in _protocol.CALL_KINDS:
        return  # a probe, plain data, a refusal: nothing of ours ran
    payload = _protocol.stored(message)
    key, _ = key_args(payload)
    if key == _timer.RUN_DUE_KEY:
        return  # the delayed call it ran has a record of its own (see mule.timer)
    if key == _deferred.DEFER_KEY:  # keeping a delayed call: done again (it writes the same file)
        _tasks.run(_protocol.restored(payload))
        return
    ran = (beat_ns - seen_ns) / 1e9 if beat_ns and seen_ns and beat_ns >= seen_ns else None
    _timer.interrupted(spool, "", mule_id, payload, attempt=1, ran=ran, pid=pid)
