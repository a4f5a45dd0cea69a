"""The schedules of a dispatch mule: each tick of a declared schedule is made a due delayed call,
once per uWSGI instance, which the timer (:mod:`uwsgiconf_mules.mule.timer`) then runs in one mule
of the target, as every delayed call.

Every dispatch mule of a schedule's target (its farm's mules, or its mule) runs a thread of this
module that sleeps until the schedule's next tick. At the tick, the mule takes the schedule's lock
(``flock`` of its state file, ``<spool>/schedules/<id>.json``) and reads the last tick done there:
the first mule of the farm (or of two generations overlapping at a reload) to get the lock writes
the tick's call into ``delayed/`` under a name made of the tick and the schedule
(``<tick>-0-<id>.call``) and records the tick; the others find it done. So a tick is made once,
whatever the number of mules and generations, and a tick that came while no mule ran (a reload, a
stop) is found at the next start: late by less than the schedule's ``grace``, it runs as usual;
later, it is *missed* (``skip``: counted and dropped; ``once``: one run for all of them).

No overlap (the default): a tick whose previous run is still pending, claimed or running (a file
of that schedule in ``delayed/`` or ``claimed/`` of a live mule; a retry of a tick's call is kept
under the schedule's name too, see :meth:`Scheduler.before`) is skipped and counted.

A farm routed to an offload backend (RQ) has no mules: the first dispatch mule enqueues its ticks,
each under a lock in the engine's Redis (``SET NX EX``), so that every uWSGI instance that runs the
same config enqueues each tick once for the whole cluster; the engine skips a tick while the
previous tick's job has not ended (:mod:`uwsgiconf_mules.contrib.rq.schedules`).

The state file also keeps the counters (runs, failed, skipped, missed) and the last run's outcome,
which ``uwsgiconf-mules top`` shows.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time

from ..declarations import schedules as _specs
from ..protocol import envelope as _protocol, spool as _spool
from ..protocol.spool import checks as _checks, delayed as _delayed
from ..runtime import tasks as _tasks
from .schedule_state import DIR, locked, read_state, schedule_of, state_path, tick_name  # noqa: F401 - where callers look

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: mules import this module, keep it cheap
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from ..declarations import Declarations

MAX_WAIT = 30.0
"""Longest sleep of the thread (a clock that jumps is seen again within it)."""
POLL_NS = 50_000_000
"""While a late tick waits for the previous run to finish: ns between two looks."""
CLOCK_BACK_NS = 1_000_000_000
"""A last tick done this far ahead of the clock (ns): the clock was set back since (NTP fixed a clock
that was ahead); the schedule goes on from now rather than wait for the clock to catch up."""
LOCK_TTL_MIN = 3600
"""Seconds a routed tick's Redis lock lives at least (longer for longer periods: twice the period)."""


def pending(spool: _spool.Spool, spec: _specs.ScheduleSpec, made: int | None, retry: Any = None) -> bool:
    """Whether a run of ``spec`` is still pending, claimed or running (not finished), its retries
    included (a retry of a tick's call is named as the schedule's calls: see :meth:`Scheduler.before`).

    :param spool: The spool.
    :param spec: The schedule.
    :param made: The last tick made a call, or None.
    :param retry: The last retry kept of its calls, ``[target, file name]``, or None.
    """
    if made is not None and os.path.lexists(os.path.join(spool.part(_delayed.folder(spec.target)),
                                                          tick_name(spec, made))):
        return True
    if isinstance(retry, list) and len(retry) == 2 and _delayed.valid_name(str(retry[1])) and \
            schedule_of(str(retry[1])) == spec.file_id:  # a name of this schedule's (its folder is checked)
        with contextlib.suppress(ValueError):
            if os.path.lexists(os.path.join(spool.part(_delayed.folder(str(retry[0]))), str(retry[1]))):
                return True
    suffix = f"-0-{spec.file_id}.call"
    try:
        names = os.listdir(spool.part("claimed"))
    except FileNotFoundError:
        return False
    for name in names:
        if name.endswith(suffix):
            pid = name.partition("-")[0]
            if pid.isdigit() and _checks.alive(int(pid)):
                return True
    return False


def plan(spec: _specs.ScheduleSpec, last: int, now: int) -> tuple[list[int], int, int]:
    """What to run at ``now`` for the ticks after ``last``: (ticks to run, ticks missed, the last
    tick looked at).

    :param spec: The schedule.
    :param last: The last tick looked at (ns).
    :param now: Now (ns).
    """
    grace = int(spec.grace * 1e9)
    late_until = now - grace
    on_time = _specs.ticks_between(spec, max(last, late_until), now)
    missed = 0
    run: list[int] = []
    if late_until > last:
        late = _specs.ticks_between(spec, last, late_until, limit=_specs.CATCH_UP)
        missed = len(late)
        if late and spec.missed == "once":
            latest = _specs.last_tick(spec, late_until)
            run.append(latest if latest is not None and latest > last else late[-1])
    run.extend(on_time)
    return run, missed, now if len(on_time) < _specs.CATCH_UP else on_time[-1]


class Scheduler:
    """The schedules a dispatch mule fires (see the module docstring).

    :param spool: The instance's spool.
    :param mule_id: This mule's id.
    :param specs: The schedules it fires.
    :param declarations: The instance's declarations (the routes of routed farms).
    :param notify: The timer's ``notify`` (told of each call this mule keeps), or None.

    A schedule seen for the first time starts from now (its state file is made, under the lock: of
    the mules that start together, the first one says when); one with a state starts from the
    last tick done there, so that the ticks that came meanwhile are run, or missed, at once.
    """

    def __init__(self, spool: _spool.Spool, mule_id: int, specs: list[_specs.ScheduleSpec],
                 declarations: Declarations | None = None,
                 notify: Callable[[str, int, str], None] | None = None) -> None:
        self.spool, self.mule_id, self.specs, self.notify = spool, mule_id, specs, notify
        self.declarations = declarations
        self.all = list(declarations.schedules) if declarations is not None else list(specs)
        self.cond = threading.Condition()
        self.stopped = False
        self.timer: Any = None  # the mule's timer, whose stop stops this thread too
        self.current: list[Any] | None = None  # [spec, attempt, retry's name] of the schedule's call running
        self.next: dict[str, int] = {}
        self.since: dict[str, int] = {}  # the first look of this mule at each schedule
        for spec in specs:
            with locked(state_path(spool, spec)) as state:
                if not isinstance(state.get("tick"), int):
                    state.update(tick=time.time_ns(), name=spec.name, func=spec.func)
                ahead = state["tick"] > time.time_ns() + CLOCK_BACK_NS  # the clock was set back: fired at once
                self.next[spec.name] = 0 if ahead else _specs.next_ticks(spec, state["tick"])[0]
        self.offset = time.time_ns() - time.monotonic_ns()  # the wall clock's, to see it set back

    def run(self) -> None:
        """The thread: checks that each schedule names a task (said at start, not at its first tick,
        which may be days away), then fires each schedule at its ticks until the mule stops."""
        for spec in self.specs:
            if self.declarations is None or self.declarations.get_backend(spec.target.partition(":")[2]) is None:
                found = _tasks.find(spec.func.encode())  # imports its module, as a mule does for a call
                if isinstance(found, str):
                    _tasks.log().error("uwsgiconf-mules: mule %d: schedule %s names no task (%s): each of its ticks "
                                       "will be refused, as any call of an unknown task", self.mule_id, spec.name,
                                       found)
        while not (self.stopped or getattr(self.timer, "stopped", False)):
            if self.clock_set_back():
                self.next = dict.fromkeys(self.next, 0)  # each fired at once: from the clock's time now
            now = time.time_ns()
            for spec in self.specs:
                if self.next[spec.name] <= now and not self.stopped:
                    try:
                        self.next[spec.name] = self.fire(spec, time.time_ns())
                    except Exception:
                        _tasks.log().exception("uwsgiconf-mules: mule %d: schedule %s could not fire; it tries "
                                               "again in 1 s", self.mule_id, spec.name)
                        self.next[spec.name] = time.time_ns() + 1_000_000_000
            wait = (min(self.next.values(), default=now) - time.time_ns()) / 1e9
            with self.cond:
                if not self.stopped:
                    self.cond.wait(min(MAX_WAIT, max(wait, 0.001)))

    def clock_set_back(self) -> bool:
        """Whether the wall clock was set back (by more than :data:`CLOCK_BACK_NS`) since the last look."""
        offset = time.time_ns() - time.monotonic_ns()
        back, self.offset = offset < self.offset - CLOCK_BACK_NS, offset
        return back

    def fire(self, spec: _specs.ScheduleSpec, now: int) -> int:
        """Make the due ticks of ``spec`` calls (once: under its lock), and return when to look again.

        Without ``overlap``, one call at a time: a tick that came after the previous run was made,
        while it has not finished, is skipped (counted); ticks that were already due then (late
        ones, after a reload), or before this mule's first look at the schedule (the previous tick's
        call made by the generation before a reload, not run yet), wait their turn, each made once
        the previous run has finished.

        :param spec: The schedule.
        :param now: Now (ns).
        """
        with locked(state_path(self.spool, spec)) as state:
            last = state.get("tick")
            if isinstance(last, int) and last > now + CLOCK_BACK_NS:
                _tasks.log().warning("uwsgiconf-mules: schedule %s: its last tick (%s) is ahead of the clock, which "
                                     "was set back: it goes on from now", spec.name, _when(last))
            if not isinstance(last, int) or last > now + CLOCK_BACK_NS:  # its state was removed: from now on
                state.update(tick=now, name=spec.name, func=spec.func)
                state.pop("ran", None)  # a tick run while the clock was ahead would hold back every tick before it
                return _specs.next_ticks(spec, now)[0]
            run, missed, looked = plan(spec, last, now)
            floor = max(last, now - int(spec.grace * 1e9)) if missed else last
            if missed:
                state["missed"] = state.get("missed", 0) + missed
                _tasks.log().warning("uwsgiconf-mules: schedule %s missed %d tick(s) while no mule could fire it "
                                     "(more than %g s late): %s", spec.name, missed, spec.grace,
                                     "one run for them" if spec.missed == "once" else "skipped")
            waiting, since = False, self.since.setdefault(spec.name, now)
            for index, tick in enumerate(run):
                if not spec.overlap and self._busy(spec, state):
                    if tick > max(state.get("made_at", 0), since):  # came while this mule saw it run: skipped
                        state["skipped"] = state.get("skipped", 0) + 1
                        _tasks.log().warning("uwsgiconf-mules: schedule %s: the tick of %s is skipped, its previous "
                                             "run has not finished (overlap=False)", spec.name, _when(tick))
                        continue
                    waiting, looked = True, tick - 1  # due before the previous run was made: its turn comes
                    break
                self._make(spec, tick, state, now)
                if not spec.overlap and index + 1 < len(run) and self._route(spec) is None:  # RQ says if it ended
                    waiting, looked = True, tick
                    break
            state["tick"] = max(floor, looked)
            following = _specs.next_ticks(spec, state["tick"])[0]
            state["next"] = following
        return max(following, time.time_ns() + POLL_NS) if waiting else following

    def _route(self, spec: _specs.ScheduleSpec) -> Any:
        """The backend ``spec``'s farm is routed to, or None (a farm of mules, a mule)."""
        if self.declarations is None or not spec.target.startswith("farm:"):
            return None
        return self.declarations.get_backend(spec.target[5:])

    def _busy(self, spec: _specs.ScheduleSpec, state: dict[str, Any]) -> bool:
        """Whether the previous run of ``spec`` (or a retry of it) has not finished, on a farm of mules
        (for a routed farm, the engine tells as it enqueues)."""
        return self._route(spec) is None and pending(self.spool, spec, state.get("made"), state.get("retry"))

    def _make(self, spec: _specs.ScheduleSpec, tick: int, state: dict[str, Any], now: int) -> None:
        """Make one tick a call (or skip it: overlap), with the lock held."""
        routed = self._route(spec)
        if routed is not None:
            done = _enqueue(routed, spec, tick, self.declarations)
            if done == "enqueued":
                state["runs"] = state.get("runs", 0) + 1
                state.update(last_start=time.time(), outcome="enqueued")
            elif done == "skipped":  # the previous tick's job has not ended (in any instance's enqueue)
                state["skipped"] = state.get("skipped", 0) + 1
                _tasks.log().warning("uwsgiconf-mules: schedule %s: the tick of %s is skipped, the RQ job of its "
                                     "previous tick has not ended (overlap=False)", spec.name, _when(tick))
            else:
                state["elsewhere"] = state.get("elsewhere", 0) + 1
            return
        name = tick_name(spec, tick)
        if isinstance(state.get("ran"), int) and tick <= state["ran"]:
            return  # it ran already: its maker was killed before it recorded it (see :meth:`ran`)
        if not _delayed.known(self.spool, spec.target, name):
            message = _protocol.encoder(spec.func)(spec.args, spec.kwargs)
            _delayed.write(self.spool, spec.target, _protocol.stored(message), tick, file_name=name)
            if self.notify is not None:
                self.notify(spec.target, tick, name)
        state.update(made=tick, made_at=now)

    @staticmethod
    def failures() -> int:
        """Failures reported in this process so far (``runtime.failures``): :meth:`before` reads it
        before a tick's call, and :meth:`ran` after it."""
        from ..runtime import failures as _failures

        return _failures.REPORTED[0]

    def before(self, claimed: str) -> int:
        """Before the timer runs a call of a schedule (a tick's, or a retry of one): from now on until
        :meth:`ran`, a retry that the call keeps is named as the schedule's calls
        (``<due>-0-<id>.call``, see :meth:`_retry_name`), so that the no-overlap rule sees it as the
        tick's run, not finished yet; returns :meth:`failures`.

        :param claimed: The call's claimed path.
        """
        from ..runtime import deferred as _deferred, policy as _policy

        number = schedule_of(os.path.basename(claimed))
        spec = next((spec for spec in self.all if spec.file_id == number), None)
        self.current = [spec, _policy.ATTEMPT[0] or 1, None] if spec is not None else None
        _deferred.NAMING[0] = self._retry_name if spec is not None else None
        return self.failures()

    def _retry_name(self, target: str, due_ns: int, attempt: int) -> str | None:
        """The name of a delayed call kept during a schedule's call: the schedule's own for a retry
        (attempt 2 on), noted in its state (before its file is written: the call still runs then),
        None for any other (``f.later()`` in the task: a call of its own)."""
        current = self.current
        if current is None or attempt < 2:
            return None
        name = tick_name(current[0], due_ns)
        with locked(state_path(self.spool, current[0])) as state:
            state["retry"] = [target, name]
        current[2] = name
        return name

    def ran(self, claimed: str, failures: int, began: float) -> None:
        """Note the outcome of a schedule's call in its state (the timer calls it after each delayed
        call of a schedule it ran, retries included): ``failed`` when a failure was reported
        meanwhile, ``refused`` when its function is not a registered task, ``retrying`` when it kept
        a retry, ``succeeded`` otherwise. ``runs`` counts first attempts only (a tick's run); a retry
        updates the outcome.

        :param claimed: The call's claimed path.
        :param failures: :meth:`failures` before the call.
        :param began: When it began (``time.time()``).
        """
        from ..runtime import deferred as _deferred

        _deferred.NAMING[0] = None
        current, self.current = self.current, None
        number = schedule_of(os.path.basename(claimed))
        spec = next((spec for spec in self.all if spec.file_id == number), None)
        if spec is None:
            return
        attempt, retried = (current[1], current[2]) if current is not None and current[0] is spec else (1, None)
        outcome = "failed" if self.failures() != failures else "retrying" if retried else \
            "succeeded" if spec.func.encode() in _tasks.REGISTRY else "refused"
        tick = _delayed.due_of(os.path.basename(claimed))
        with locked(state_path(self.spool, spec)) as state:
            if attempt == 1:
                if not isinstance(state.get("ran"), int) or tick > state["ran"]:
                    state["ran"] = tick  # a tick whose maker died before it recorded it is not made again
                state["runs"] = state.get("runs", 0) + 1
                state["last_start"] = began
            if outcome in ("failed", "refused"):
                state["failed"] = state.get("failed", 0) + 1
            if not retried:
                state.pop("retry", None)
            state.update(last_end=time.time(), outcome=outcome, attempt=attempt)

    def stop(self) -> None:
        """Stop firing."""
        with self.cond:
            self.stopped = True
            self.cond.notify()


def _when(tick_ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(tick_ns / 1e9))


def _enqueue(backend: Any, spec: _specs.ScheduleSpec, tick: int, declarations: Any) -> str:
    """Enqueue a tick of a routed farm's schedule once for the cluster, and not while its previous
    tick's job has not ended (without ``overlap``); what this instance did: ``enqueued``,
    ``elsewhere`` (another instance took the tick) or ``skipped``."""
    from importlib import import_module

    from ..declarations.backends import ENGINES

    engine = import_module(ENGINES[backend.scheme].rpartition(".")[0] + ".schedules")
    period = spec.every if spec.every is not None else 86400.0
    ttl = int(max(LOCK_TTL_MIN, 2 * period))
    done: str = engine.enqueue_tick(backend, f"uwsgiconf_mules:schedule:{spec.file_id}:{tick}", ttl=ttl,
                                    func=spec.func, args=spec.args, kwargs=spec.kwargs,
                                    timeout=declarations.send_timeout, overlap=spec.overlap)
    return done


def mine(mule_id: int, declarations: Declarations, environ: Any = None) -> list[_specs.ScheduleSpec]:
    """The schedules this dispatch mule fires: those of its farms and of itself, and those of the
    routed farms in the first dispatch mule; each only where its ``host_env`` says so.

    :param mule_id: This mule's id.
    :param declarations: The instance's declarations.
    :param environ: The environment (default ``os.environ``).
    """
    targets = {f"mule:{mule_id}", *(f"farm:{farm.name}" for farm in declarations.farms_of(mule_id))}
    first = bool(declarations.dispatchers) and mule_id == min(declarations.dispatchers)
    found = []
    for spec in declarations.schedules:
        routed = spec.target.startswith("farm:") and declarations.get_backend(spec.target[5:]) is not None
        if (spec.target in targets or (routed and first)) and spec.enabled(environ):
            found.append(spec)
    return found


def start(spool: _spool.Spool, mule_id: int, declarations: Declarations | None, timer: Any) -> Scheduler | None:
    """Start this dispatch mule's schedules thread, when it fires any schedule; it stops with the
    timer (a tick made after that is kept in the spool for the next mules, as any delayed call).

    :param spool: The spool.
    :param mule_id: This mule's id.
    :param declarations: The instance's declarations.
    :param timer: The mule's timer (``mule.timer.Timer``): told of each call made, and whether it stopped.
    """
    if declarations is None or not declarations.schedules:
        return None
    specs = mine(mule_id, declarations)
    scheduler = Scheduler(spool, mule_id, specs, declarations, timer.notify)
    scheduler.timer = timer
    if specs:
        from .. import _threads

        _threads.start(scheduler.run)
    return scheduler
