"""Delayed calls: ``f.later(seconds)(...)``, ``f.at(when)(...)``, and the retries of
:mod:`uwsgiconf_mules.runtime.policy`, kept on disk until due.

A worker does not write the spool: it sends the delayed call to its target's queue as a call of
:func:`_defer`, which the dispatch mule that receives it keeps on disk (in the spool's
``delayed/`` part, see :mod:`uwsgiconf_mules.protocol.spool.delayed`) and tells its timer of
(:mod:`uwsgiconf_mules.mule.timer`). So sending costs about what a plain offload costs, and a
delayed call not yet kept is a queued call, kept across reloads and stops as every queued call is.
A retry is kept the same way, by the mule where the call failed (:func:`schedule`).

Outside uWSGI (inline calls, the test modes), a delayed call runs at once; a test mode records its
delay (:data:`SENDING`), and with no test mode a warning says so, once per task.
"""

from __future__ import annotations

import math
import time

from ..errors import TaskOptionError
from ..protocol import envelope as _protocol
from . import instance as _instance, tasks as _tasks

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: workers and mules import this module, keep it cheap
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

MAX_DELAY = 366 * 86400.0
"""Longest delay of a delayed call or a retry, in seconds (a year and a day)."""
DEFER_KEY = "uwsgiconf_mules.runtime.deferred:_defer"
"""The task that keeps a delayed call on disk, in the mule that receives it."""


def _number(key: str, option: str, value: object, *, low: float, high: float, integer: bool = False,
            allow_low: bool = False) -> float:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind):
        what = "a whole number of seconds" if integer and option == "time_limit" else \
            "an integer" if integer else "a number of seconds"
        raise TaskOptionError(f"task {key}: {option} must be {what}, not {value!r}", task=key, option=option)
    if math.isnan(value) or not ((low <= value) if allow_low else (low < value)) or value > high:  # NaN too
        bound = f"at least {low:g}" if allow_low else f"more than {low:g}"
        raise TaskOptionError(f"task {key}: {option} must be {bound} and at most {high:g}, not {value!r}",
                              task=key, option=option)
    return value


def check_delay(key: str, seconds: object) -> float:
    """A delay in seconds, checked.

    :param key: The task key, for the error.
    :param seconds: The delay.
    :raises TaskOptionError: for a delay that is not a number, negative or past :data:`MAX_DELAY`.
    """
    return float(_number(key, "later(seconds)", seconds, low=0, high=MAX_DELAY, allow_low=True))


def due_at(key: str, when: object) -> int:
    """The aware datetime ``when`` as nanoseconds since the epoch, checked (its distance from now
    is checked here, and the delay is taken from it at each call: a sender kept for later does not
    drift).

    :param key: The task key, for the error.
    :param when: An aware ``datetime``.
    :raises TaskOptionError: for anything else, a naive datetime, or one past :data:`MAX_DELAY`.
    """
    import datetime

    if not isinstance(when, datetime.datetime):
        raise TaskOptionError(f"task {key}: at() takes an aware datetime, not {when!r}", task=key, option="at(when)")
    if when.tzinfo is None or when.utcoffset() is None:
        raise TaskOptionError(f"task {key}: at() takes an aware datetime (with a tzinfo), not the naive {when!r}: "
                              "a naive one means a different time on each machine", task=key, option="at(when)")
    epoch = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
    moment = when - epoch
    if moment.total_seconds() - time.time() > MAX_DELAY:
        raise TaskOptionError(f"task {key}: at({when.isoformat()}) is more than {MAX_DELAY / 86400:g} days away",
                              task=key, option="at(when)")
    return (moment.days * 86400 + moment.seconds) * 1_000_000_000 + moment.microseconds * 1000


def delay_until(key: str, when: object) -> float:
    """Seconds from now until the aware datetime ``when`` (0 when it is past).

    :param key: The task key, for the error.
    :param when: An aware ``datetime``.
    :raises TaskOptionError: for anything else, a naive datetime, or one past :data:`MAX_DELAY`.
    """
    return max(0.0, (due_at(key, when) - time.time_ns()) / 1e9)


def label(target: Any) -> str:
    """A ``Mule`` or a ``Farm`` as errors name it: ``mule 2``, ``farm 'mail'``.

    :param target: The target.
    """
    name = getattr(target, "name", None)
    return f"mule {target.id}" if name is None else f"farm {name!r}"


def target_kind(target: Any) -> dict[str, bool]:
    """Whether ``target`` (a ``Mule`` or a ``Farm``) is a farm routed to an offload backend, or
    has programmed mules only, as :func:`policy_of` takes them; both False when nothing is declared.

    :param target: The target.
    """
    declarations = _instance.declarations()
    if declarations is None:
        return {"routed": False, "programmed": False}
    name = getattr(target, "name", None)
    routed = name is not None and declarations.get_backend(name) is not None
    ids = [target.id] if name is None else [mule.id for mule in target.mules]
    programmed = bool(ids) and set(ids) <= set(declarations.programmed)
    return {"routed": routed, "programmed": programmed}


def target_note(target: Any, how: str | None = None) -> str | None:
    """The target as delayed calls name it, ``mule:N`` or ``farm:NAME``; None outside uWSGI.

    :param target: A ``Mule`` or a ``Farm``.
    :param how: ``later`` or ``at``, for the error (None: a retry, checked at decoration).
    :raises TaskOptionError: for a target whose calls cannot be delayed (routed to an offload
        backend, programmed mules only, no spool), naming the target and ``how``.
    """
    declarations = _instance.declarations()
    key = (target, id(declarations), how)
    known = _NOTES.get(key)
    if known is not None and _NOTES_OF[0] is declarations:
        return known if _instance.uwsgi is not None else None
    name = getattr(target, "name", None)
    note = f"mule:{target.id}" if name is None else f"farm:{name}"
    if declarations is None or how is None:
        return note if _instance.uwsgi is not None else None
    kind = target_kind(target)
    problem = None
    if kind["routed"]:  # the engine's own scheduling (see delayed_sender), or at once outside uWSGI
        return None
    if kind["programmed"]:
        problem = "has programmed mules only, which run no offloaded call"
    elif declarations.spool_dir is None:
        problem = "has no spool to keep delayed calls in"
    if problem is not None:
        raise TaskOptionError(f"{label(target)} {problem}: {how}() cannot delay a call to it", option=f"{how}()")
    if _NOTES_OF[0] is not declarations:  # declarations of another test mode, say: start again
        _NOTES.clear()
        _NOTES_OF[0] = declarations
    _NOTES[key] = note
    return note if _instance.uwsgi is not None else None


_NOTES: dict[tuple[Any, int, str | None], str] = {}  # (target, declarations, how) -> note, once checked
_NOTES_OF: list[Any] = [None]  # the declarations _NOTES were checked against


_RAN_EARLY: set[str] = set()  # tasks whose delayed calls ran early outside uWSGI, said once

SENDING: list[Any] = [None]
"""While a test mode records a delayed call: its delay in seconds (see ``testing``)."""


def delayed_sender(key: str, encode: Callable[[tuple[Any, ...], dict[str, Any]], bytes],
                   deliver: Callable[[bytes], bool], target_note: Callable[[], str | None], *, how: str,
                   when: object, remote: Callable[[], Callable[[bytes, int], bool] | None] | None = None,
                   ) -> Callable[..., bool]:
    """What ``f.later(seconds)`` and ``f.at(when)`` return: a function that sends a call of ``f`` to
    run no earlier than ``seconds`` after each call of it, or than the moment ``when`` (kept as it
    is: the delay is taken at each call, so a sender kept for later does not drift).

    :param key: The task key.
    :param encode: The task's envelope encoder.
    :param deliver: Sends one envelope to the task's target (size checks, waits for room).
    :param target_note: The target as delayed calls name it (``mule:N``, ``farm:NAME``); None
        outside uWSGI; raises ``TaskOptionError`` for a target that cannot keep delayed calls.
    :param how: ``later`` or ``at``.
    :param when: The delay in seconds (``later``) or an aware datetime (``at``), checked here.
    :param remote: For a farm routed to an offload backend: the engine's send of a delayed call
        ``(envelope, due ns)``, or None when its calls stay in this process (a test mode).
    :raises TaskOptionError: for a bad delay or datetime, naming the task.
    """
    offset, absolute = (check_delay(key, when), 0) if how == "later" else (0.0, due_at(key, when))

    def send_delayed(*args: Any, **kwargs: Any) -> bool:
        now = time.time_ns()
        due = absolute or now + int(offset * 1e9)
        engine = remote() if remote is not None else None
        if engine is not None:  # a farm routed to an engine: its own scheduling (RQ: enqueue_at)
            return engine(encode(args, kwargs), due)
        note = target_note()
        message = encode(args, kwargs)
        if _instance.uwsgi is None:  # inline, or a test mode: at once (a test mode records the delay)
            seconds = max(0.0, (due - now) / 1e9)
            if seconds > 0 and _instance.local_send is None and key not in _RAN_EARLY:
                _RAN_EARLY.add(key)  # said once per task: a script or a development server runs calls inline
                _tasks.log().warning("uwsgiconf-mules: task %s: a delayed call outside uWSGI runs at once, %.3f s "
                                     "earlier than asked (no spool, no timer here; the test modes record the "
                                     "delay)", key, seconds)
            SENDING[0] = seconds
            try:
                return deliver(message)
            finally:
                SENDING[0] = None
        assert note is not None
        from ..protocol.spool.delayed import name
        from .spool_watch import delayed_refusal

        full = delayed_refusal()
        if full is not None:  # told now: the mule that would receive it could only keep it past the limit
            from ..errors import DeliveryError

            raise DeliveryError(f"task {key}: a delayed call for {note} is refused: {full}; it was not sent "
                                "(sending resumes within a second of room being made: run or purge calls)",
                                target=note)
        return deliver(_defer_encode((note, due, 1, _protocol.stored(message), name(due)), {}))

    return send_delayed


_defer_encode = _protocol.encoder(DEFER_KEY)


def _defer(target: str, due_ns: int, attempt: int, payload: bytes, file_name: str = "") -> None:
    """Keep a delayed call on disk (a call a dispatch mule receives; see the module docstring).
    Done again when the mule died while doing it (``mule.running``): a name kept already is
    not written twice.

    :param target: ``mule:N`` or ``farm:NAME``.
    :param due_ns: When it may run, in nanoseconds since the epoch.
    :param attempt: The attempt it will be.
    :param payload: The call without the token.
    :param file_name: Its file name, drawn by the sender (checked: one that
        :func:`~uwsgiconf_mules.protocol.spool.delayed.name` draws, or the call is not kept).

    A call that cannot be kept (no usable spool, the disk refuses, a bad file name) was accepted
    all the same (its sender was told True): it is kept as a ``failed`` dead letter under its
    task's name when the spool takes it, and said in one log line.
    """
    from ..protocol.spool import delayed as _delayed

    letters = _tasks._dead_letters
    try:
        if file_name and not _delayed.valid_name(file_name):
            raise ValueError(f"not the file name of a delayed call: {file_name[:80]!r}")
        if file_name and letters is not None and _delayed.known(letters.spool, target, file_name):
            return
        schedule(target, payload, due_ns, attempt, file_name or None)
    except Exception as exc:  # the sender was told True: kept as a dead letter, never dropped
        _not_kept(target, due_ns, attempt, payload, exc)
        return
    kept = KEPT[0]
    if kept is not None:  # the record names this call no more: a mule killed now has nothing to do again
        kept()


def _not_kept(target: str, due_ns: int, attempt: int, payload: bytes, exc: Exception) -> None:
    """A delayed call this mule could not keep (a full disk, no spool, a bad file name): a
    ``failed`` dead letter under its task's name, when the spool takes it; one log line either way."""
    from .._text import escape
    from ..protocol.spool import delayed as _delayed
    from .policy import task_name

    try:
        key, args, _ = _protocol.decode(_protocol.restored(payload))
        name = task_name(key.decode(), tuple(args))
    except Exception:
        name = "damaged call"
    due = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(due_ns / 1e9))
    why = f"{type(exc).__name__}: {exc}"
    letters = _tasks._dead_letters
    where = "nowhere (no usable spool)"
    if letters is not None:
        origin = _delayed.origin_note(target, due_ns, attempt)
        note = (f"failed: {escape(name)} (delayed call not kept, attempt {attempt}): {escape(why)[:200]} | due "
                f"{due} UTC for {escape(target)}; replayed, it waits for its time again{origin}")
        try:
            letters.keep(payload, note, durable=False)
            where = f"as a failed dead letter in {letters.spool.part('dead')}"
        except OSError as keep_exc:
            where = f"nowhere ({keep_exc.strerror or keep_exc})"
    _tasks.log().error("uwsgiconf-mules: mule %d could not keep the delayed call of task %s due %s UTC for %s "
                       "(%s): kept %s", _tasks.current_mule(), escape(name), due, escape(target), why, where)


KEPT: list[Callable[[], None] | None] = [None]
"""Told when ``_defer`` has kept its delayed call (the dispatch mule's record of the running call,
:func:`uwsgiconf_mules.mule.running.clear`): done again at the next start, it could write a call
that a farm mate has run and removed meanwhile."""

NOTIFY: list[Callable[[str, int, str], None] | None] = [None]
"""The dispatch mule's timer, told of each delayed call this process keeps (target, due, name)."""

NAMING: list[Callable[[str, int, int], str | None] | None] = [None]
"""While a mule runs a schedule's tick: names the delayed calls kept meanwhile (target, due, attempt),
so that a retry of the tick carries the schedule's name (``mule.schedules``); None: a name of its own."""


def schedule(target: str, payload: bytes, due_ns: int, attempt: int, file_name: str | None = None, *,
             within_limit: bool = False) -> str:
    """Keep a delayed call in this dispatch mule's spool, and tell its timer.

    :param target: ``mule:N`` or ``farm:NAME``.
    :param payload: The call without the token.
    :param due_ns: When it may run, in nanoseconds since the epoch.
    :param attempt: The attempt it will be.
    :param file_name: Its file name, or None for a new one.
    :param within_limit: Refuse it while the spool holds its limit (a retry; a call its sender was
        told is accepted is kept whatever the limit).
    :returns: The file's path.
    :raises MulesRuntimeError: when this process has no usable spool, or (``within_limit``) the
        spool holds its limit.
    :raises OSError: when the disk refuses.
    """
    import os

    from ..protocol.spool import delayed as _delayed

    letters = _tasks._dead_letters
    full = None
    if within_limit and letters is not None:
        from .spool_watch import delayed_refusal

        full = delayed_refusal()
    if letters is None or full is not None:
        from ..errors import MulesRuntimeError

        raise MulesRuntimeError(full or f"mule {_tasks.current_mule()} has no usable spool: the delayed call for "
                                f"{target} cannot be kept")
    naming = NAMING[0]
    if naming is not None and file_name is None:
        file_name = naming(target, due_ns, attempt)
    path = _delayed.write(letters.spool, target, payload, due_ns, attempt, file_name=file_name)
    notify = NOTIFY[0]
    if notify is not None:
        notify(target, due_ns, os.path.basename(path))
    return path


_tasks.register(DEFER_KEY, _defer)
