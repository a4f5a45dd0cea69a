"""The timer of a dispatch mule: runs each delayed call of its targets once, when due.

Each dispatch mule keeps, in memory, the due times of the delayed calls of its targets (its own
mule and its farms: ``delayed/mule-N/`` and ``delayed/farm-NAME/`` in the spool, see
:mod:`uwsgiconf_mules.protocol.spool.delayed`), read from the file names at start. A thread of its own
sleeps until the earliest is due, and wakes earlier when this mule keeps a new one (in-process) or
when another process changed a folder (a second thread makes one ``stat`` per folder every
:data:`RESCAN` seconds, and lists a folder that changed: an idle mule stays near 0 % of a core). A
due call is claimed by renaming it into ``claimed/``, so that of two mules of a farm (or two
generations) exactly one runs it; the thread then wakes the mule's loop with a call of
:func:`run_due` sent to its own queue, and the loop runs the claimed calls in its main thread, as
any call (time limits, counters, failures), one at a time.

At start (see :func:`start`), claimed calls left by mules that died are recovered: one that had
not started goes back to ``delayed/``; one that was running is an *interrupted* call (see
:func:`interrupted`). Told to stop, the mule puts back what it claimed and did not start.
"""

from __future__ import annotations

import contextlib
import heapq
import os
import threading
import time
from collections import deque

from .. import _threads
from ..protocol import envelope as _protocol, spool as _spool
from ..protocol.spool import claims as _claims, delayed as _delayed
from ..runtime import deferred as _deferred, policy as _policy, results as _results, tasks as _tasks
from . import running as _running

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: mules import this module, keep it cheap
if TYPE_CHECKING:
    from typing import Any

    from ..declarations import Declarations

RESCAN = 0.1
"""Seconds between two checks of the folders' modification times (calls kept by other processes)."""
FULL_RESCAN = 20.0
"""Seconds between two listings of every folder, changed or not (a safety net; young ones are listed always)."""
YOUNG_NS = 1_000_000_000
"""A folder whose mtime is younger than this (ns) is listed at every rescan."""
RECOVER_EVERY = 5.0
"""Seconds between two looks for claimed calls left by mules that died (a generation that stopped after
this one started, a farm mate killed): those not started go back, running ones are interrupted (:func:`recover`)."""
WAKE_AGAIN = 1.0
"""Seconds after which claimed calls still not run while the loop is idle are the subject of one
more wake-up of the loop (run_due with nothing to run does nothing)."""
WAKE_UNKNOWN = 60.0
"""The same, for a mule that keeps no record of its running call (a lost wake-up or a long call?)."""
CLAIM_BATCH = 16
"""Due calls claimed at most per round of the timer (and farm calls set aside for the mates)."""
FARM_GRACE = 1.0
"""Seconds a due farm call is left to the idle mates of a busy mule before this one claims it too."""
RUN_BATCH = 16
"""Claimed calls one run_due call runs at most: the loop's queued calls get their turn in between."""
RUN_DUE_KEY = "uwsgiconf_mules.mule.timer:run_due"

_timer: Timer | None = None
_wake: list[bytes] = [b""]  # the call of run_due, once built: made in the master (mule.startup), shared
SCHEDULER: list[Any] = [None]  # this mule's mule.schedules.Scheduler, told of each tick's outcome


class Timer:
    """The delayed calls of one dispatch mule's targets (see the module docstring).

    :param uwsgi: The ``uwsgi`` module.
    :param spool: The instance's spool.
    :param mule_id: This mule's id.
    :param targets: Its targets (``mule:N``, ``farm:NAME``).
    """

    def __init__(self, uwsgi: Any, spool: _spool.Spool, mule_id: int, targets: list[str]) -> None:
        self.uwsgi = uwsgi
        self.spool = spool
        self.mule_id = mule_id
        self.targets = targets
        self.cond = threading.Condition()
        self.heap: list[tuple[int, str, str]] = []  # (due ns, target, name)
        self.known: set[str] = set()
        self.mtimes: dict[str, int] = {}
        self.due: deque[str] = deque()  # claimed paths for the loop
        self.woken = False  # a run_due call is on its way
        self.woke_at = 0.0
        self.idle_seen = 0  # rescans in a row that found the loop idle
        self.stopped = False
        self.wake_message = wake_message()
        for target in targets:
            self._scan(target)

    def _scan(self, target: str) -> None:
        """Add the calls of ``target``'s folder not known yet (the listing is taken without the lock)."""
        where = self.spool.part(_delayed.folder(target))
        try:
            mtime = os.stat(where).st_mtime_ns
            with os.scandir(where) as entries:  # regular files only (no stat: the owner is checked at the claim's run)
                names = {entry.name for entry in entries
                         if entry.name.endswith(".call") and entry.is_file(follow_symlinks=False)}
        except FileNotFoundError:
            mtime, names = 0, set()
        with self.cond:
            self.mtimes[target] = mtime
            new = names - self.known  # a set difference: a rescan of 100,000 names stays cheap
            for name in new:
                self.known.add(name)
                heapq.heappush(self.heap, (_delayed.due_of(name), target, name))
            if new:
                self.cond.notify()

    def scanner(self) -> None:
        """The scanner thread: looks for calls kept by other processes (a folder whose modification
        time changed), every :data:`RESCAN` seconds, or ten times as long as the last listing took
        (a folder of 100,000 calls), off the timer's thread so that claims stay on time."""
        interval = RESCAN
        next_full = time.monotonic() + FULL_RESCAN
        while not self.stopped:
            time.sleep(interval)
            try:
                full = time.monotonic() >= next_full
                if full:
                    next_full = time.monotonic() + FULL_RESCAN
                for target in self.targets:
                    try:
                        mtime = os.stat(self.spool.part(_delayed.folder(target))).st_mtime_ns
                    except OSError:
                        mtime = 0
                    # Listed again while its mtime is young too: a rename in the same clock tick as the
                    # last listing leaves the mtime as it was (kernels without multigrain timestamps).
                    if mtime != self.mtimes.get(target) or full or time.time_ns() - mtime < YOUNG_NS:
                        began = time.monotonic()
                        self._scan(target)
                        interval = max(RESCAN, 10 * (time.monotonic() - began))
            except Exception:
                _tasks.log().exception("uwsgiconf-mules: mule %d: the scan of delayed calls failed; it goes on",
                                       self.mule_id)

    def notify(self, target: str, due_ns: int, name: str) -> None:
        """A delayed call this process kept (``deferred.schedule``).

        :param target: Its target.
        :param due_ns: When it is due.
        :param name: Its file name.
        """
        if target not in self.targets:
            return  # another mule's: its timer finds it
        with self.cond:
            if name not in self.known:
                self.known.add(name)
                heapq.heappush(self.heap, (due_ns, target, name))
            self.cond.notify()

    def pending(self) -> int:
        """Delayed calls known, not claimed yet."""
        return len(self.heap)

    def run(self) -> None:
        """The timer thread: never ends before the mule stops (a failed round is logged, and the next one runs)."""
        while not self.stopped:
            try:
                self._rounds()
            except Exception:
                _tasks.log().exception("uwsgiconf-mules: mule %d: the timer of delayed calls failed; it goes on",
                                       self.mule_id)
                time.sleep(RESCAN)

    def _rounds(self) -> None:
        next_rescan = time.monotonic() + RESCAN
        next_recover = time.monotonic() + RECOVER_EVERY
        while not self.stopped:
            now_mono = time.monotonic()
            if now_mono >= next_rescan:
                next_rescan = now_mono + RESCAN
                _running.beat()
                idle = _running.idle()
                self.idle_seen = self.idle_seen + 1 if idle else 0
                if self.due and (not self.woken or self._lost(now_mono - self.woke_at, idle)):
                    self._wake()  # the last wake-up found the queue full, or was lost
            if now_mono >= next_recover:
                next_recover = now_mono + RECOVER_EVERY
                recover(self.spool, self.mule_id)  # waiting ones put back; running ones interrupted, taken first
            with self.cond:
                held = self._claim_due()
                wait = RESCAN if held or not self.heap else \
                    min(RESCAN, max(0.0, (self.heap[0][0] - time.time_ns()) / 1e9))
                self.cond.wait(max(wait, 0.0005))

    def _claim_due(self) -> bool:
        """Claim up to :data:`CLAIM_BATCH` due calls (with the lock held); a farm's only while this
        mule's loop is idle with nothing claimed waiting (an idle farm mate takes it, not this
        busy one), or once it is :data:`FARM_GRACE` overdue. Returns whether farm calls were left
        for the mates (the next look is a rescan away, not at once)."""
        now = time.time_ns()
        idle = _running.idle() is not False and not self.due
        claimed, held = 0, []
        while self.heap and self.heap[0][0] <= now and not self.stopped and claimed < CLAIM_BATCH:
            due_ns, target, name = heapq.heappop(self.heap)
            if not idle and target.startswith("farm:") and now - due_ns < FARM_GRACE * 1e9:
                held.append((due_ns, target, name))
                if len(held) >= CLAIM_BATCH:
                    break
                continue
            self.known.discard(name)
            path = _delayed.claim(self.spool, target, name)
            if path is not None:
                self.due.append(path)
                claimed += 1
        for item in held:
            heapq.heappush(self.heap, item)
        if claimed and not self.woken:
            self._wake()
        return bool(held)

    def _lost(self, waited: float, idle: bool | None) -> bool:
        """Whether a wake-up sent ``waited`` seconds ago was lost: the loop has been idle for two
        rescans in a row since (never while a call runs: the wake-up waits in the queue behind it,
        and one more each second would fill the mule's queue); without a record of the running
        call, after :data:`WAKE_UNKNOWN` seconds."""
        if idle is None:
            return waited > WAKE_UNKNOWN
        return waited > WAKE_AGAIN and self.idle_seen >= 2

    def _wake(self) -> None:
        # Set before the send: the loop may run run_due (which clears it) before mule_msg returns.
        self.woken, self.woke_at = True, time.monotonic()
        try:
            sent = bool(self.uwsgi.mule_msg(self.wake_message, self.mule_id))
        except Exception:
            sent = False
        if not sent:
            self.woken = False  # the queue is full: sent again at the next rescan

    def stop(self) -> None:
        """Stop claiming, and put back what was claimed and not started."""
        with self.cond:
            self.stopped = True
            self.cond.notify()
        while self.due:
            _delayed.put_back(self.spool, self.due.popleft())


def wake_message() -> bytes:
    """The call of :func:`run_due` that wakes the loop (built once per token)."""
    if not _wake[0].startswith(_protocol.PREFIX):
        _wake[0] = _protocol.encoder(RUN_DUE_KEY)((), {})
    return _wake[0]


def run_due() -> None:
    """Run the delayed calls the timer claimed (a call the timer sends to its own mule's queue)."""
    timer = _timer
    if timer is None:
        return
    timer.woken = False
    harakiri = _harakiri()
    from . import loop as _loop

    for _ in range(RUN_BATCH):
        if not timer.due:
            return
        claimed = timer.due.popleft()
        if _loop._stopping:
            _delayed.put_back(timer.spool, claimed)
            continue
        run_claimed(timer.spool, claimed, harakiri)
    if _loop._stopping:
        while timer.due:
            _delayed.put_back(timer.spool, timer.due.popleft())
    elif timer.due:
        timer._wake()  # the rest after the calls queued meanwhile


def _harakiri() -> int:
    from ..runtime import instance as _instance

    declarations = _instance.declarations()
    return (declarations.harakiri or 0) if declarations is not None else 0


def run_claimed(spool: _spool.Spool, claimed: str, harakiri: int) -> None:
    """Run one claimed delayed call, marked running while it runs, and forget it.

    :param spool: The spool.
    :param claimed: Its claimed path.
    :param harakiri: The instance's harakiri.
    """
    try:
        info = os.lstat(claimed)
        if not os.path.isfile(claimed) or os.path.islink(claimed) or info.st_uid != os.geteuid():
            raise ValueError("not a regular file of this user's")
        note, payload = _spool.read(claimed)
        _, attempt = _delayed.parse_note(note)
        running = _delayed.start(claimed)
    except FileNotFoundError:
        return
    except (OSError, ValueError) as exc:
        with contextlib.suppress(OSError):
            spool.bury(claimed, f"unreadable delayed call: {exc}")
        return
    _policy.ATTEMPT[0] = attempt if attempt > 1 else 0
    scheduler, began = SCHEDULER[0] if "-0-" in claimed else None, time.time()  # a schedule's tick: outcome noted
    failures = scheduler.before(claimed) if scheduler is not None else 0  # a retry kept is the tick's
    try:
        _tasks.run(_protocol.restored(payload), harakiri)
    finally:
        _policy.ATTEMPT[0] = 0
        try:
            if scheduler is not None:  # noted before the file goes: a mule killed between the two leaves a claim
                scheduler.ran(claimed, failures, began)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(running)


def interrupted(spool: _spool.Spool, path: str, mule_id: int, payload: bytes, *, attempt: int, ran: float | None,
                pid: int, target: str = "") -> None:
    """Handle a call that was running when its mule died: run it again when its task declares
    ``acks_late`` and attempts are left, otherwise keep it as an ``interrupted`` dead letter; one
    log line either way.

    :param spool: The spool.
    :param path: Where it was kept (removed once handled), or "" for a call of a queue.
    :param mule_id: The mule that ran it.
    :param payload: The call without the token.
    :param attempt: Which attempt it was.
    :param ran: Seconds it had run, when known.
    :param pid: The pid of the mule that died.
    :param target: Where it was sent (``mule:N``, ``farm:NAME``), when known: where it runs again.
    """
    from .._text import escape

    key, args = _running.key_args(payload)
    found = _tasks.find(key.encode()) if key else "damaged call"
    policy = _policy.POLICIES.get(key)
    attempts = policy.interrupted_attempts if policy is not None else 1
    name = _policy.task_name(key, args) if key else "?"
    how_long = f"{ran:.1f} s" if ran is not None else "an unknown time"
    log = _tasks.log()
    if policy is not None and policy.acks_late and attempt < attempts and not isinstance(found, str):
        target = target or f"mule:{mule_id}"
        _delayed.write(spool, target, payload, time.time_ns(), attempt + 1)
        log.warning("uwsgiconf-mules: task %s was interrupted in mule %d (pid %d) after %s (attempt %d of %d): "
                    "it declares acks_late, so it runs again", escape(name), mule_id, pid, how_long, attempt, attempts)
    else:
        why = "" if policy is None or not policy.acks_late else "; no attempt left"
        note = (f"interrupted: {escape(name)} (in mule {mule_id}, pid {pid}, after {how_long}, attempt {attempt} of "
                f"{attempts}{why}) | the mule died during the call (killed, out of memory, or a hard time limit): "
                "it may have run in part; replay it only if that is safe"
                f"{_delayed.origin_note(target) if target else ''}")
        letters = _tasks._dead_letters
        if letters is not None:
            letters.keep(payload, note)
        else:
            spool.write("dead", payload, note)
        if key in _results.TASKS and args and isinstance(args[0], str):  # its handle says so (runtime.results)
            _results.interrupted(args[0], note.partition(" | ")[0], attempt)
        log.error("uwsgiconf-mules: task %s was interrupted in mule %d (pid %d) after %s (attempt %d of %d): kept "
                  "as an interrupted dead letter in %s%s", escape(name), mule_id, pid, how_long, attempt, attempts,
                  spool.part("dead"), why)
    if path:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def recover(spool: _spool.Spool, mule_id: int) -> None:
    """At start: put back the claimed delayed calls of dead mules that had not started them, and
    handle the ones that were running (see :func:`interrupted`).

    :param spool: The spool.
    :param mule_id: This mule's id (the calls are re-run here).
    """
    for dead in _delayed.recover_claimed(spool):
        parsed = _delayed.split_claimed(os.path.basename(dead))
        try:
            info = os.lstat(dead)
        except FileNotFoundError:
            continue
        path = _claims.take(dead)  # first: of two mules starting together, one only handles it
        if path is None:
            continue
        try:
            note, payload = _spool.read(path)
            _, attempt = _delayed.parse_note(note)
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as exc:
            spool.bury(path, f"unreadable delayed call: {exc}")
            continue
        pid, target = (parsed[0], parsed[2]) if parsed else (0, "")
        # Renamed when it started: its inode changed then (ctime), and has not since.
        ran = max(0.0, time.time() - info.st_ctime)
        interrupted(spool, path, mule_id, payload, attempt=attempt, ran=ran, pid=pid, target=target)


def targets(mule_id: int, declarations: Declarations | None) -> list[str]:
    """The targets whose delayed calls this dispatch mule runs: itself and its farms.

    :param mule_id: The mule.
    :param declarations: The instance's declarations.
    """
    farms = declarations.farms_of(mule_id) if declarations is not None else ()
    return [f"mule:{mule_id}", *(f"farm:{farm.name}" for farm in farms)]


def start(uwsgi: Any, spool: _spool.Spool, mule_id: int, declarations: Declarations | None) -> Timer | None:
    """Recover what dead mules left, and start this dispatch mule's timer thread.

    :param uwsgi: The ``uwsgi`` module.
    :param spool: The instance's spool.
    :param mule_id: This mule's id.
    :param declarations: The instance's declarations.
    :returns: The timer, or None when it cannot run (said in the log).
    """
    global _timer
    try:
        _running.recover(spool, mule_id)  # the call a predecessor was running when it died
        recover(spool, mule_id)
        began = time.perf_counter()
        timer = Timer(uwsgi, spool, mule_id, targets(mule_id, declarations))
        if timer.heap:
            _tasks.log().info("uwsgiconf-mules: mule %d: %d delayed call(s) pending in the spool %s (read in %.3f s)",
                              mule_id, len(timer.heap), spool.path, time.perf_counter() - began)
    except Exception as exc:
        _tasks.log().error("uwsgiconf-mules: mule %d cannot run delayed calls (%s); they stay in the spool %s",
                           mule_id, exc, spool.path, exc_info=True)
        return None
    _timer = timer
    _deferred.NOTIFY[0] = timer.notify
    _threads.start(timer.run)  # blocks uWSGI's signals (and SIGALRM, the soft time limits') in the thread
    _threads.start(timer.scanner)
    if declarations is not None and declarations.schedules:  # imported only by mules of an instance with schedules
        from .schedules import start as start_schedules
        SCHEDULER[0] = start_schedules(spool, mule_id, declarations, timer)  # it stops with the timer
    return timer


def stop() -> None:
    """Stop the timer of this mule (told to stop), putting back what it claimed and did not start;
    the record says no call runs."""
    _running.clear()
    timer = _timer
    if timer is not None:
        timer.stop()


_tasks.register(RUN_DUE_KEY, run_due)
