"""The message loop of dispatch mules.

The builders declare dispatch mules as ``mule = .../uwsgiconf_mules/dispatch_mule.py``, a
script that calls :func:`mule_loop`. The loop reads the mule's own queue and the queues of its
farms (messages up to the socket limit, beyond uWSGI's 64 KiB hook buffer), directly where
:class:`~uwsgiconf_mules.mule.queues.QueueFinder` found them; handles uWSGI signals while waiting;
runs offloaded calls of this instance under the declared harakiri; refuses, with a log line,
messages that claim to be calls but do not carry this instance's token; and passes other
messages on to ``uwsgi.mule_msg_hook``.

With the counters on (a declared stats server), the fast path counts each call per task and
adds up its time (per streak of calls of one task), one clock read per call, for
:mod:`uwsgiconf_mules.runtime.metrics` to flush; without them it runs as it did, plus the clock read
that gives a failed call's duration.

uWSGI signals sent to the mule (``mule``, ``muleN``, ``mules`` targets, timers) are handled by a
thread of their own as they arrive, concurrently with the call being run: within milliseconds,
not when the queues next run empty.

Its life, around the loop (see :mod:`uwsgiconf_mules.protocol.spool`): at start, the mule reports a
predecessor that died without a clean stop, and runs the calls kept in the spool for it. Told to
stop (SIGHUP, SIGTERM or SIGINT: a reload, a stop, a mules reload), it finishes the call it is
running, takes no new one, moves every call still queued in its queues into the spool, keeps
doing so while workers may still be sending (at most :data:`LINGER` seconds, within the declared
mercy), and exits.
"""

from __future__ import annotations

import _thread
import os
import signal
import time

from .. import _threads
from ..errors import MulesError, NotInMuleError
from ..protocol import envelope as _protocol, spool as _spool
from ..protocol.envelope import BATCH_HEAD, HEAD_SIZE, LOOKUP_SIZE, lookup_ok
from ..protocol.limits import MALLOC_MAPPED, socket_message_limit, steady_heap
from ..protocol.spool import claims as _claims, delayed as _delayed, letters as _letters, store as _store  # noqa: F401 - a mule writes there: loaded with this layer
from ..runtime import instance as _instance, metrics as _metrics, tasks as _tasks
from . import batch as _batch, signals as _signals, timer as _timer
from .queues import STREAK, Queues, polled_destinations, probe_destinations

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: workers and mules import this module, keep it cheap
if TYPE_CHECKING:
    from typing import Any

    from ..declarations import Declarations

LINGER = 5.0
"""Longest time a stopping mule keeps moving newly queued calls to the spool while workers are
busy (a worker finishing its request during a graceful reload may still offload)."""
QUIET = 0.3
"""A stopping mule leaves once no call arrived and no worker was busy for this long."""
STOP_SIGNALS = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)
BLOCK = 4096
"""Bytes of disk a spooled call is counted to take on top of its own (a file takes whole blocks)."""

_stopping = False

_queues: Queues | None = None  # this dispatch mule's queues, once mule_loop() runs


def current_queues() -> Queues | None:
    """The queues of this dispatch mule (which it reads directly, see ``Queues.direct``); None
    before :func:`mule_loop` runs."""
    return _queues


def _stop(signum: int, frame: Any) -> None:
    """Handler of the stop signals: the loop stops after the running call. Clearing the fast
    path's table sends every next message through the loop's slow path, which checks the flag."""
    global _stopping
    _stopping = True
    _tasks.HEADS.clear()
    _tasks.TABLE.clear()
    if _queues is not None:  # a wait on the queues (a poll, which Python resumes after this handler) ends now
        _queues.interrupt()


def _targets(mule_id: int, declarations: Declarations | None) -> frozenset[str]:
    farms = declarations.farms_of(mule_id) if declarations else ()
    return frozenset([_spool.ANY, f"mule:{mule_id}", *(f"farm:{farm.name}" for farm in farms)])


def _note(dest: int | bytes | None) -> str:
    if dest is None:
        return _spool.ANY
    return f"mule:{dest}" if isinstance(dest, int) else f"farm:{dest.decode()}"


def _delayed_held(spool: _spool.Spool) -> int:
    """Bytes the delayed calls of ``spool`` hold (0 when they cannot be counted)."""
    from ..protocol.spool import delayed as _delayed

    try:
        return _delayed.Held(spool).total()
    except OSError:
        return 0


class _Keeper:
    """What a stopping mule does with each message it takes from a queue: a call goes to the
    spool, within its size limit; anything else is handled as while running. Counts what it kept
    and what it could not keep (the spool is full, or the disk refused).

    :param spool: The instance's spool, or None when it cannot be used.
    """

    def __init__(self, spool: _spool.Spool | None) -> None:
        self.spool = spool
        self.kept: list[str] = []  # names of the files written
        self.lost: dict[str, int] = {}  # why -> how many
        # dead/ has its own quota; delayed calls count against the limit as queued ones do
        self.room = spool.limit - spool.size(("queue",)) - _delayed_held(spool) if spool is not None else 0
        self.free = spool.disk_free() if spool is not None else 0  # what the disk takes, less room for the record

    def __call__(self, message: bytes, dest: int | bytes | None) -> int:
        if not _protocol.is_call(message) and not message.startswith(BATCH_HEAD):  # a batch: kept whole, in one file
            rest = _tasks.receive(message)  # a probe, foreign bytes or a forgery: never a call here
            if rest is not None:
                _tasks.pass_on(rest)
            return 0
        if self.spool is None:
            return self._lose("there is no usable spool")
        if len(message) > self.room:
            return self._lose(f"the spool {self.spool.path} holds its limit of {self.spool.limit} bytes")
        if len(message) + BLOCK > self.free:
            self.free = self.spool.disk_free()  # counted down, checked again before giving up
            if len(message) + BLOCK > self.free:
                return self._lose(f"the disk of the spool {self.spool.path} is full")
        try:
            path = self.spool.write("queue", _protocol.stored(message), _note(dest))
        except OSError as exc:
            return self._lose(f"the disk refused it ({exc.strerror or exc})")
        self.room -= len(message)
        self.free -= len(message) + BLOCK
        self.kept.append(os.path.basename(path))
        return 1

    def _lose(self, why: str) -> int:
        self.lost[why] = self.lost.get(why, 0) + 1
        return 0


def _busy_workers(uwsgi: Any) -> bool:
    try:
        return any(worker["pid"] and worker["status"] == b"busy" for worker in uwsgi.workers())
    except Exception:
        return False


def _shut_down(uwsgi: Any, queues: Queues, pending: bytes | None, spool: _spool.Spool | None,
               declarations: Declarations | None) -> None:
    """Spool what is queued, linger while workers may still send, and exit."""
    started = time.monotonic()
    _timer.stop()  # claims no more delayed calls, puts back those not started; no call runs
    mercy = (declarations.reload_mercy if declarations and declarations.reload_mercy else 60)
    hard = started + max(0.5, min(LINGER, mercy - 1.0))
    mule_id = _tasks.current_mule()
    if spool is None:  # unusable at start: perhaps fixed since
        spool = _open_spool(declarations, mule_id, quiet=True)
    keep = _Keeper(spool)
    if pending is not None:
        keep(pending, None)
    quiet_until = started + QUIET
    while True:
        moved = sum(keep(message, dest) for dest, message in queues.drain())
        now = time.monotonic()
        if moved or _busy_workers(uwsgi):
            quiet_until = now + QUIET
        if now >= quiet_until or now >= hard:
            break
        time.sleep(0.02)
    for dest, message in queues.drain():
        keep(message, dest)
    counters = _tasks.COUNTING
    if counters is not None:
        counters.spooled += len(keep.kept)
        _metrics.flush()
    if _tasks._burst is not None:
        _tasks._burst.flush()
    log = _tasks.log()
    if keep.kept:
        log.info("uwsgiconf-mules: mule %d stopped; %d queued call(s) kept in the spool %s", mule_id, len(keep.kept),
                 spool.path if spool else "(none)")
    for why, count in keep.lost.items():
        log.error("uwsgiconf-mules: mule %d stopped; %d queued call(s) LOST: %s", mule_id, count, why)
    if spool is not None:
        try:
            spool.record_stop(mule_id, keep.kept, keep.lost)
        except OSError as exc:
            log.error("uwsgiconf-mules: mule %d could not record what it kept in the spool %s (%s): the next start "
                      "cannot check it", mule_id, spool.path, exc)
        spool.forget_pid(mule_id)
    import logging

    logging.shutdown()
    os._exit(0)


def _start(spool: _spool.Spool, mule_id: int, targets: frozenset[str], harakiri: int) -> None:
    """Report a predecessor that died without a clean stop, set orphaned calls aside, and run
    the calls kept for this mule."""
    previous = spool.previous_pid(mule_id)
    if previous and previous != os.getpid() and not _spool.alive(previous):
        _tasks.log().error("uwsgiconf-mules: mule %d (pid %d) ended without a clean stop (killed or crashed): "
                           "the call it was running, if any, is said above; the calls queued behind it run now",
                           mule_id, previous)
    spool.write_pid(mule_id)
    if spool.made:  # said here, once logging is set up
        _tasks.log().info("uwsgiconf-mules: mule %d made a new, empty spool %s", mule_id, spool.path)
    from . import startup as _startup  # loaded by _prepare already

    _startup.check_stops(spool)
    for part, strangers in (("queue", spool.strangers()), (_delayed.PART, _delayed.strangers(spool))):
        if strangers:
            _tasks.log().warning("uwsgiconf-mules: mule %d ignores %d file(s) in %s that are not this user's "
                                 "regular files, and never runs them: %s", mule_id, len(strangers), spool.part(part),
                                 ", ".join(f"{name!r} ({why})" for name, why in strangers[:5])
                                 + (", ..." if len(strangers) > 5 else ""))
    for dead in spool.orphans():
        orphan = _claims.take(dead)  # first: of two mules starting together, one only buries it
        if orphan is not None:
            spool.bury(orphan, "the mule running it died; it may have run: replay it only if that is safe")
    waiting = spool.waiting(targets)
    if waiting:
        _tasks.log().info("uwsgiconf-mules: mule %d: running %d call(s) from the spool %s", mule_id, waiting,
                          spool.path)
    for claimed, payload in spool.claim(targets):
        if _stopping:
            spool.unclaim(claimed)
            break
        _tasks.run(_protocol.restored(payload), harakiri)
        spool.done(claimed)


def _open_spool(declarations: Declarations | None, mule_id: int, *, quiet: bool = False) -> _spool.Spool | None:
    if declarations is None or declarations.spool_dir is None:
        return None
    spool = _spool.Spool(declarations.spool_dir)
    try:
        spool.create()
    except OSError as exc:
        if not quiet:
            _tasks.log().error("uwsgiconf-mules: mule %d cannot use the spool %s (%s): offloaded calls to it are "
                               "refused (DeliveryError) until it is fixed", mule_id, spool.path, exc)
        return None
    return spool


def _prepare(uwsgi: Any, mule_id: int) -> tuple[Declarations | None, _spool.Spool | None, Queues]:
    """Set this mule up: stop signals, start-up steps (:mod:`._startup`), spool (and what it kept), queues."""
    global _queues
    try:
        declarations = _instance.required_declarations()
    except MulesError as exc:  # the senders raise it too; say it here once
        _tasks.log().error("uwsgiconf-mules: mule %d: %s", mule_id, exc)
        declarations = _instance.declarations()
    set_handler = _threads.c_signal().signal  # signal.signal without its enums (see there)
    for signum in STOP_SIGNALS:  # instead of uWSGI's handler, which exits at once, mid-call
        set_handler(signum, _stop)
    _signals.start(uwsgi, STOP_SIGNALS)
    spool = _open_spool(declarations, mule_id)
    _tasks.set_dead_letters(spool)
    _tasks.COUNTING = _metrics.mule_counters(mule_id, declarations, spool.path if spool is not None else None)

    from . import startup as _startup  # once per mule, before any call runs: the start-up hook, Django, logging

    _startup.start(mule_id, declarations)
    if spool is not None:
        _timer.start(uwsgi, spool, mule_id, declarations)  # delayed calls, and calls dead mules left running
        try:
            _start(spool, mule_id, _targets(mule_id, declarations), (declarations.harakiri or 0) if declarations else 0)
        except Exception as exc:  # never a mule that dies at start, and respawns in a loop
            _tasks.log().error("uwsgiconf-mules: mule %d could not run the calls kept in the spool %s (%s); they stay "
                               "there", mule_id, spool.path, exc)
    farms = bool(declarations.farms_of(mule_id)) if declarations else True  # farm queues polled only in a farm
    buffer_size = socket_message_limit(declarations.msg_size if declarations else None)
    _queues = Queues(uwsgi, probe_destinations(declarations, mule_id), farms, buffer_size, (spool, mule_id),
                     polled=polled_destinations(declarations, mule_id))
    if _tasks.COUNTING is not None:
        _tasks.COUNTING.watch(_queues)
    return declarations, spool, _queues


def _entry(lookup: bytes, view: memoryview, counters: Any) -> tuple[Any, ...] | None:
    """The loop's entry for calls that start with ``lookup`` (``_protocol.LOOKUP_SIZE`` bytes),
    built from :data:`uwsgiconf_mules.runtime.tasks.HEADS` and kept in
    :data:`uwsgiconf_mules.runtime.tasks.TABLE`; None when they are no registered task's positional
    calls that the fast path takes (see ``_protocol.lookup_ok``).

    An entry is (function, body decoder, the buffer from where bodies start, the size of a call
    without arguments, task key), and with the counters on, the task's cell: the body is decoded
    straight from the buffer (a decoder reads one object and ignores what follows it).
    """
    found = _tasks.HEADS.get(lookup[:HEAD_SIZE])
    if found is None or not lookup_ok(lookup):
        return None
    func, loads, start, key, size = found
    entry: tuple[Any, ...] = (func, loads, view[start:], size, key)
    if counters is not None:
        entry += (counters.cell(key),)
    _tasks.TABLE[lookup] = entry
    if _tasks.HEADS.get(lookup[:HEAD_SIZE]) is not found:  # registered again meanwhile (another thread)
        _tasks.TABLE.pop(lookup, None)
        return None
    return entry


def _failed(size: int, entry: tuple[Any, ...], began: float) -> None:
    """Report the failure of a call the fast path ran, with its arguments decoded again."""
    try:
        args = tuple(entry[1](entry[2])) if size > entry[3] else ()
    except Exception:
        args = ()
    _tasks.failed(entry[4], args, None, began)


def mule_loop() -> None:  # noqa: PLR0915 - the fast paths are inlined, for throughput
    """Run the message loop of this dispatch mule; returns only by exiting the process.

    :raises NotInMuleError: when not called in a mule.
    """
    uwsgi = _instance.uwsgi
    if uwsgi is None or not uwsgi.mule_id():
        raise NotInMuleError("mule_loop() can only be called in a uWSGI mule")
    declarations, spool, queues = _prepare(uwsgi, int(uwsgi.mule_id()))
    harakiri = (declarations.harakiri or 0) if declarations else 0
    buffer, view, record = queues.buffer, queues.view, queues.record  # record[0]: the running call's size
    current, streak = queues.current, STREAK
    table = _tasks.TABLE
    receive, pass_on, returned = _tasks.receive, _tasks.pass_on, _tasks.returned
    counters = _tasks.COUNTING
    fast = not harakiri and counters is None
    counted = not harakiri and counters is not None
    running = counters.running if counters is not None else [None, 0.0, 0.0]
    clock = time.perf_counter
    idle = [0, 0, 0.0]  # a cell that counts nothing: `last` while no streak of calls runs
    last = idle  # the counted path's cell of the streak of calls it runs, until its time is added up
    began = 0.0  # when the call (fast path) or the streak (counted path) began
    pending = None
    entry: tuple[Any, ...] | None = None
    now_running = _tasks.LOOP_CALL  # [entry of the call run, this thread]: the running task, for log records
    now_running[:] = [None, _thread.get_ident()]
    while not _stopping:
        # The record (see mule.running) names no call while the buffer is overwritten, and the
        # new call from the moment it is read: never one call's bytes with another's size.
        record[0] = 0
        try:
            size = current(buffer)  # a queue read directly, into the buffer
            record[0] = size
        except BlockingIOError:
            if last is not idle:  # the last call counted ended when its queue ran empty
                running[0] = None
                last[2] += clock() - began
                last = idle
            now_running[0] = None  # no call of the fast path runs (logs.current_task reads it)
            waited = queues.wait()
            current, streak = queues.current, STREAK
            if waited is None:
                continue
            record[0] = size = waited
            if size > MALLOC_MAPPED:  # large calls decoded without a page fault each (see there)
                steady_heap(size)
        else:
            streak -= 1
            if not streak:  # let the other queues have a turn
                current, streak = queues.rotate(), STREAK
        # The fast paths, inlined for throughput: a positional-only call of a registered task,
        # no harakiri to arm; its first bytes (a fixed length, see _protocol) name the function,
        # the body decoder and where the body starts, and exist only in authenticated envelopes
        # (the token). The body is decoded from the buffer up to where the decoder's object
        # ends, without a bound at the message's end: an envelope of this runtime always holds
        # its whole body (datagrams arrive whole, and senders check sizes against this buffer);
        # only a damaged one, which needs the token, could decode bytes of an older message.
        # A message shorter than a call of that task and everything else take receive() below;
        # so does everything once the mule is told to stop (_stop empties the table).
        if fast:
            entry = table.get(buffer[:LOOKUP_SIZE])
            if entry is None:
                entry = _entry(buffer[:LOOKUP_SIZE], view, None)
            if entry is not None and size >= entry[3]:
                now_running[0] = entry  # the running task, for log records (logs.current_task)
                began = clock()  # when the call began, for the failure's line
                try:
                    result = entry[0](*entry[1](entry[2])) if size > entry[3] else entry[0]()
                    if result is not None:  # said once per task: nobody receives it
                        returned(entry[4], result)
                except KeyboardInterrupt:  # see _tasks.run: said as a failure, then it stops the mule
                    _failed(size, entry, began)
                    raise
                except BaseException:
                    _failed(size, entry, began)
                continue
        elif counted:
            # The same, counting per task (see _metrics.MuleCounters) for a thread to flush, with
            # one clock read per call: calls of one task in a row are a streak, whose time (from
            # its first call's start to the next task's or to the queue running empty) is added
            # to the task's when it ends; running is [cell, call start, streak start].
            entry = table.get(buffer[:LOOKUP_SIZE])
            if entry is None:
                entry = _entry(buffer[:LOOKUP_SIZE], view, counters)
            if entry is not None and size >= entry[3]:
                now_running[0] = entry
                now = clock()
                cell = entry[5]
                cell[0] += 1  # before the cell is the running one: `succeeded` never dips
                if cell is not last:  # None first: a sampler in between misses the time, never counts it twice
                    running[0] = None
                    last[2] += now - began
                    running[2] = began = now
                    last = running[0] = cell
                running[1] = now
                try:
                    result = entry[0](*entry[1](entry[2])) if size > entry[3] else entry[0]()
                    if result is not None:
                        returned(entry[4], result)
                except KeyboardInterrupt:  # see _tasks.run: said as a failure, then it stops the mule
                    cell[1] += 1
                    _failed(size, entry, now)
                    raise
                except BaseException:
                    cell[1] += 1
                    _failed(size, entry, now)
                continue
        now_running[0] = None  # no call of the fast path runs (logs.current_task reads it)
        if last is not idle:  # a message for the slow path: the last call counted has ended
            running[0] = None
            last[2] += clock() - began
            last = idle
        if _stopping:
            pending = buffer[:size]
            break
        if buffer[:len(BATCH_HEAD)] == BATCH_HEAD:  # calls of f.map(): the rest is kept when told to stop
            pending = _batch.run(view, size, harakiri=harakiri, counted=counters is not None,
                                 stopping=lambda: _stopping)
            if pending is not None:
                break
            continue
        rest = receive(buffer[:size], harakiri)
        if rest is not None:
            pass_on(rest)
    if last is not idle:  # told to stop right after a call counted
        running[0] = None
        last[2] += clock() - began
    now_running[0] = None
    _shut_down(uwsgi, queues, pending, spool, declarations)
