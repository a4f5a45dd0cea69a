"""What happens to a call over its life: retries with backoff, delayed calls, time limits, and
the calls kept when they fail or are interrupted.

A task declares its policy where it is declared, with keyword-only options of ``mule_offload``
(and ``Mule.offload``/``Farm.offload``), in the words of Celery and Huey:

* ``retries=N``: how many more attempts after the first (default 0: none);
  ``retry_for=(ExcType, ...)``: which exceptions retry (default: none; a task may also raise
  :class:`~uwsgiconf_mules.errors.Retry`); ``retry_backoff=`` seconds before the first retry,
  doubled at each next one up to ``retry_backoff_max=``, with ``retry_jitter=True`` drawing each
  delay between half of it and all of it.
* ``soft_time_limit=`` seconds after which :class:`~uwsgiconf_mules.errors.TimeLimitExceeded` is
  raised inside the call (see :mod:`uwsgiconf_mules.runtime.timelimits`); ``time_limit=`` whole
  seconds after which uWSGI stops the mule, as its harakiri does (the instance's harakiri stays the
  default of the other tasks).
* ``acks_late=True``: the call is safe to run again, so a call interrupted by the death of its mule
  (SIGKILL, the OOM killer, a hard time limit) runs again, at most the declared attempts; by default
  it is kept as an ``interrupted`` dead letter.

A task with no option declared takes exactly the path it took before: it is registered as it is,
and nothing here runs for its calls (except :func:`keep_failed`, on the failure path only).

A retry, like a call sent with ``f.later(seconds)(...)`` or ``f.at(when)(...)``, is a *delayed
call*: kept on disk in the spool (:mod:`uwsgiconf_mules.protocol.delayed`) until due, and run
by the timer of a dispatch mule of its target (:mod:`uwsgiconf_mules.mule.timer`). A worker does
not write the spool: it sends the delayed call to its target's queue as a call of
:func:`_defer`, which the mule that receives it keeps on disk, so that sending costs about what a
plain offload costs, and a delayed call not yet kept is a queued call, kept across reloads and
stops as every queued call is.

Outside uWSGI (inline calls, the test modes of :mod:`uwsgiconf_mules.testing`), a delayed call
runs at once, and retries run at once, one after the other, without sleeping.
"""

from __future__ import annotations

import math
import time

from ..errors import Retry, TaskOptionError
from ..protocol import envelope as _protocol
from . import instance as _instance, tasks as _tasks

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: workers and mules import this module, keep it cheap
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

MAX_DELAY = 366 * 86400.0
"""Longest delay of a delayed call or a retry, in seconds (a year and a day)."""
MAX_RETRIES = 1000
"""Most retries a task may declare."""
MAX_TIME_LIMIT = 7 * 86400
"""Longest time limit, in seconds."""
OPTIONS = ("retries", "retry_for", "retry_backoff", "retry_backoff_max", "retry_jitter", "soft_time_limit",
           "time_limit", "acks_late")
"""The keyword-only options of ``mule_offload`` this module owns."""
DEFAULTS: dict[str, Any] = {"retries": 0, "retry_for": (), "retry_backoff": 1.0, "retry_backoff_max": 600.0,
                            "retry_jitter": True, "soft_time_limit": None, "time_limit": None, "acks_late": False}
TRACEBACK_MAX = 4000
"""Longest traceback text kept with a failed call, in characters (its end is kept)."""
MESSAGE_MAX = 300
"""Longest exception message kept in the note of a failed call, in characters."""
DEFER_KEY = "uwsgiconf_mules.runtime.policy:_defer"
"""The task that keeps a delayed call on disk, in the mule that receives it."""


def is_default(name: str, value: object) -> bool:
    """Whether ``value`` is the default of option ``name`` (of the same type: ``1`` is no ``True``).

    :param name: An option of :data:`OPTIONS`.
    :param value: Its value.
    """
    default = DEFAULTS[name]
    return value is default or (type(value) is type(default) and value == default)


class Policy:
    """The declared lifecycle of one task's calls (validated by :func:`policy_of`).

    :param key: The task key.
    :param values: The options, by name (see :data:`OPTIONS`).
    """

    __slots__ = ("acks_late", "key", "retries", "retry_backoff", "retry_backoff_max", "retry_for", "retry_jitter",
                 "soft_time_limit", "time_limit")

    def __init__(self, key: str, values: dict[str, Any]) -> None:
        self.key = key
        self.retries: int = values["retries"]
        self.retry_for: tuple[type[BaseException], ...] = values["retry_for"]
        self.retry_backoff: float = values["retry_backoff"]
        self.retry_backoff_max: float = values["retry_backoff_max"]
        self.retry_jitter: bool = values["retry_jitter"]
        self.soft_time_limit: float | None = values["soft_time_limit"]
        self.time_limit: int | None = values["time_limit"]
        self.acks_late: bool = values["acks_late"]

    @property
    def attempts(self) -> int:
        """Most attempts of one call: the first and the retries."""
        return self.retries + 1

    @property
    def interrupted_attempts(self) -> int:
        """Most runs of a call whose mule dies during it: 1 without ``acks_late``; with it, the
        declared attempts, and at least 2 (one re-run)."""
        return max(2, self.attempts) if self.acks_late else 1

    def delay(self, attempt: int) -> float:
        """Seconds before attempt ``attempt + 1``, after attempt ``attempt`` failed.

        :param attempt: The attempt that failed (1 for the first).
        """
        seconds = float(min(self.retry_backoff * 2.0 ** min(attempt - 1, 60), self.retry_backoff_max))
        if self.retry_jitter:
            import random

            seconds *= random.uniform(0.5, 1.0)
        return seconds

    def as_dict(self) -> dict[str, Any]:
        """The options, by name (what ``capture`` records on each ``Offload``)."""
        return {name: getattr(self, name) for name in OPTIONS}

    def __repr__(self) -> str:
        changed = ", ".join(f"{name}={getattr(self, name)!r}" for name in OPTIONS
                            if getattr(self, name) != DEFAULTS[name])
        return f"Policy({self.key!r}, {changed})"


POLICIES: dict[str, Policy] = {}
"""Task key -> its policy, for the tasks that declare one."""

ATTEMPT = [0]
"""The attempt of the call this process runs now (0: a first attempt); set by the mule's timer."""


def current_attempt() -> int:
    """The attempt of the offloaded call running now: 1 for the first, 2 for the first retry, ...
    (in the ``on_failure`` hook: the attempt that failed)."""
    return FAILED[0] or ATTEMPT[0] or 1


FAILED = [0]
"""The attempt that failed last (inline retries count their attempts themselves); 0 once reported."""


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


def policy_of(key: str, label: str, options: dict[str, Any], *, routed: bool = False,
              programmed: bool = False) -> Policy | None:
    """Check a task's options; None when every one has its default (the task takes today's path).

    :param key: The task key.
    :param label: Its target, for the errors (``farm 'mail'``).
    :param options: The options given, by name.
    :param routed: Whether the target is a farm routed to an offload backend (RQ), which cannot
        honour them.
    :param programmed: Whether the target's mules are all programmed mules, which run no offloaded call.
    :raises TaskOptionError: naming the task and the option at fault.
    """
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise TaskOptionError(f"task {key}: unknown option {unknown[0]!r}; options: {', '.join(OPTIONS)}",
                              task=key, option=unknown[0])
    given = {name: value for name, value in options.items() if not is_default(name, value)}
    if not given:
        return None
    if routed:
        name = sorted(given)[0]
        raise TaskOptionError(f"task {key}: {label} is routed to an offload backend, which does not honour {name}= "
                              "(declare the task on a farm of dispatch mules, or use the engine's own options)",
                              task=key, option=name)
    if programmed:
        name = sorted(given)[0]
        raise TaskOptionError(f"task {key}: {label} has programmed mules only, which run no offloaded call: "
                              f"{name}= cannot apply", task=key, option=name)
    values = dict(DEFAULTS, **options)
    values["retries"] = int(_number(key, "retries", values["retries"], low=0, high=MAX_RETRIES, integer=True,
                                    allow_low=True))
    retry_for = values["retry_for"]
    if isinstance(retry_for, type):
        retry_for = (retry_for,)
    if not isinstance(retry_for, tuple) or not all(
            isinstance(item, type) and issubclass(item, BaseException) for item in retry_for):
        raise TaskOptionError(f"task {key}: retry_for must be an exception class or a tuple of them, not "
                              f"{values['retry_for']!r}", task=key, option="retry_for")
    if retry_for and not values["retries"]:
        raise TaskOptionError(f"task {key}: retry_for= needs retries= (how many more attempts), which is 0",
                              task=key, option="retries")
    values["retry_for"] = retry_for
    values["retry_backoff"] = float(_number(key, "retry_backoff", values["retry_backoff"], low=0, high=MAX_DELAY,
                                            allow_low=True))
    values["retry_backoff_max"] = float(_number(key, "retry_backoff_max", values["retry_backoff_max"], low=0,
                                                high=MAX_DELAY, allow_low=True))
    if values["retry_backoff_max"] < values["retry_backoff"]:
        raise TaskOptionError(f"task {key}: retry_backoff_max ({values['retry_backoff_max']:g}) is less than "
                              f"retry_backoff ({values['retry_backoff']:g})", task=key, option="retry_backoff_max")
    for flag in ("retry_jitter", "acks_late"):
        if not isinstance(values[flag], bool):
            raise TaskOptionError(f"task {key}: {flag} must be True or False, not {values[flag]!r}", task=key,
                                  option=flag)
    if values["soft_time_limit"] is not None:
        values["soft_time_limit"] = float(_number(key, "soft_time_limit", values["soft_time_limit"], low=0,
                                                  high=MAX_TIME_LIMIT))
    if values["time_limit"] is not None:
        values["time_limit"] = int(_number(key, "time_limit", values["time_limit"], low=0, high=MAX_TIME_LIMIT,
                                           integer=True))
        soft = values["soft_time_limit"]
        if soft is not None and soft >= values["time_limit"]:
            raise TaskOptionError(f"task {key}: soft_time_limit ({soft:g} s) must be less than time_limit "
                                  f"({values['time_limit']} s), or the call is stopped before it can clean up",
                                  task=key, option="soft_time_limit")
    return Policy(key, values)


def check_delay(key: str, seconds: object) -> float:
    """A delay in seconds, checked.

    :param key: The task key, for the error.
    :param seconds: The delay.
    :raises TaskOptionError: for a delay that is not a number, negative or past :data:`MAX_DELAY`.
    """
    return float(_number(key, "later(seconds)", seconds, low=0, high=MAX_DELAY, allow_low=True))


def delay_until(key: str, when: object) -> float:
    """Seconds from now until the aware datetime ``when`` (0 when it is past).

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
    seconds = (when - datetime.datetime.now(datetime.timezone.utc)).total_seconds()
    if seconds > MAX_DELAY:
        raise TaskOptionError(f"task {key}: at({when.isoformat()}) is more than {MAX_DELAY / 86400:g} days away",
                              task=key, option="at(when)")
    return max(0.0, seconds)


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
    if kind["routed"]:
        problem = "is routed to an offload backend, which runs no delayed call of this runtime"
    elif kind["programmed"]:
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


SENDING: list[Any] = [None]
"""While a test mode records a delayed call: its delay in seconds (see ``testing``)."""


def delayed_sender(key: str, encode: Callable[[tuple[Any, ...], dict[str, Any]], bytes],
                   deliver: Callable[[bytes], bool], target_note: Callable[[], str | None],
                   seconds: float) -> Callable[..., bool]:
    """What ``f.later(seconds)`` returns: a function that sends a call of ``f`` to run no earlier
    than ``seconds`` from the time of the call.

    :param key: The task key.
    :param encode: The task's envelope encoder.
    :param deliver: Sends one envelope to the task's target (size checks, waits for room).
    :param target_note: The target as delayed calls name it (``mule:N``, ``farm:NAME``); None
        outside uWSGI; raises ``TaskOptionError`` for a target that cannot keep delayed calls.
    :param seconds: The delay, checked.
    """

    def send_later(*args: Any, **kwargs: Any) -> bool:
        note = target_note()
        message = encode(args, kwargs)
        if _instance.uwsgi is None:  # inline, or a test mode: at once (a test mode records the delay)
            SENDING[0] = seconds
            try:
                return deliver(message)
            finally:
                SENDING[0] = None
        assert note is not None
        due = time.time_ns() + int(seconds * 1e9)
        from ..protocol.delayed import name

        return deliver(_defer_encode((note, due, 1, _protocol.stored(message), name(due)), {}))

    return send_later


_defer_encode = _protocol.encoder(DEFER_KEY)


def _defer(target: str, due_ns: int, attempt: int, payload: bytes, file_name: str = "") -> None:
    """Keep a delayed call on disk (a call a dispatch mule receives; see the module docstring).
    Done again when the mule died while doing it (``mule.running``): a name kept already is
    not written twice.

    :param target: ``mule:N`` or ``farm:NAME``.
    :param due_ns: When it may run, in nanoseconds since the epoch.
    :param attempt: The attempt it will be.
    :param payload: The call without the token.
    :param file_name: Its file name, drawn by the sender.
    :raises MulesRuntimeError: when there is no spool to keep it in (the call failed, in the log).
    """
    from ..protocol import delayed as _delayed

    letters = _tasks._dead_letters
    if file_name and letters is not None and _delayed.known(letters.spool, target, file_name):
        return
    schedule(target, payload, due_ns, attempt, file_name or None)


NOTIFY: list[Callable[[str, int, str], None] | None] = [None]
"""The dispatch mule's timer, told of each delayed call this process keeps (target, due, name)."""


def schedule(target: str, payload: bytes, due_ns: int, attempt: int, file_name: str | None = None) -> str:
    """Keep a delayed call in this dispatch mule's spool, and tell its timer.

    :param target: ``mule:N`` or ``farm:NAME``.
    :param payload: The call without the token.
    :param due_ns: When it may run, in nanoseconds since the epoch.
    :param attempt: The attempt it will be.
    :param file_name: Its file name, or None for a new one.
    :returns: The file's path.
    :raises MulesRuntimeError: when this process has no usable spool.
    :raises OSError: when the disk refuses.
    """
    import os

    from ..protocol import delayed as _delayed

    letters = _tasks._dead_letters
    if letters is None:
        from ..errors import MulesRuntimeError

        raise MulesRuntimeError(f"mule {_tasks.current_mule()} has no usable spool: the delayed call for {target} "
                                "cannot be kept")
    path = _delayed.write(letters.spool, target, payload, due_ns, attempt, file_name=file_name)
    notify = NOTIFY[0]
    if notify is not None:
        notify(target, due_ns, os.path.basename(path))
    return path


def register(key: str, func: Callable[..., Any], policy: Policy, encode: Callable[..., bytes],
             target_note: Callable[[], str | None]) -> Callable[..., Any]:
    """Make ``func`` the task ``key`` under ``policy``: calls run through :func:`guarded`.

    :param key: The task key.
    :param func: The function.
    :param policy: Its policy.
    :param encode: The task's envelope encoder (a retry is its call encoded again).
    :param target_note: The target as delayed calls name it.
    :returns: The function registered.
    """
    POLICIES[key] = policy
    run = _tasks._awaited(func) if _tasks.is_async(func) else func
    guarded = _guard(key, run, policy, encode, target_note)
    _tasks.register(key, guarded)
    return guarded


def _guard(key: str, func: Callable[..., Any], policy: Policy, encode: Callable[..., bytes],
           target_note: Callable[[], str | None]) -> Callable[..., Any]:
    retry_for = policy.retry_for

    def guarded(*args: Any, **kwargs: Any) -> Any:
        first = ATTEMPT[0]
        FAILED[0] = 0
        try:
            return attempts(args, kwargs)
        finally:
            ATTEMPT[0] = first  # inline retries counted here only

    def attempts(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        while True:
            attempt = current_attempt()
            try:
                return _limited(policy, func, args, kwargs)
            except Retry as exc:
                asked: float | None = exc.delay
                error: BaseException = exc
            except retry_for as exc:
                asked, error = None, exc
            if attempt >= policy.attempts:
                FAILED[0] = attempt  # for the failure's line and dead letter (see failed_attempt)
                raise error
            delay = policy.delay(attempt) if asked is None else max(0.0, min(float(asked), MAX_DELAY))
            if _instance.uwsgi is None or not _tasks.current_mule():  # inline, test modes: at once, no sleep
                ATTEMPT[0] = attempt + 1
                continue
            note = target_note()
            try:
                schedule(note or f"mule:{_tasks.current_mule()}", _protocol.stored(encode(args, kwargs)),
                         time.time_ns() + int(delay * 1e9), attempt + 1)
            except Exception as keep_exc:
                _tasks.log().error("uwsgiconf-mules: task %s: the retry (attempt %d of %d) cannot be kept (%s): the "
                                   "call fails now", key, attempt + 1, policy.attempts, keep_exc)
                raise error from None
            from .._text import escape

            _tasks.log().warning("uwsgiconf-mules: task %s failed in mule %d (attempt %d of %d: %s: %s); retrying "
                                 "in %.3f s", key, _tasks.current_mule(), attempt, policy.attempts,
                                 type(error).__name__, escape(str(error))[:MESSAGE_MAX], delay)
            return None

    guarded.__wrapped__ = func  # type: ignore[attr-defined]
    guarded._policy = policy  # type: ignore[attr-defined]
    return guarded


def _limited(policy: Policy, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Run one attempt under the task's time limits (in a dispatch mule only)."""
    if (policy.soft_time_limit is None and policy.time_limit is None) or not _tasks.current_mule():
        return func(*args, **kwargs)
    from . import timelimits as _timelimits

    with _timelimits.limits(policy.soft_time_limit, policy.time_limit):
        return func(*args, **kwargs)


def task_name(key: str, args: tuple[Any, ...]) -> str:
    """The name a listing groups a call under: the task key, or for a Django task the task's own
    path (the backend's runner takes it as its first argument).

    :param key: The task key.
    :param args: The call's positional arguments.
    """
    if key == "uwsgiconf_mules.django:_run" and args and isinstance(args[0], str):
        return args[0]
    return key


def keep_failed(key: str, args: tuple[Any, ...], kwargs: dict[str, Any] | None, exc: BaseException) -> None:
    """Keep a call that raised on its last attempt as a ``failed`` dead letter (in a dispatch mule
    with a spool): the call, the exception, its traceback text (the last :data:`TRACEBACK_MAX`
    characters) and the attempts, within the quota of ``dead/``.

    :param key: The task key.
    :param args: The call's positional arguments.
    :param kwargs: Its keyword arguments.
    :param exc: What it raised.
    """
    try:
        _keep_failed(key, args, kwargs, exc)
    finally:
        FAILED[0] = 0


def _keep_failed(key: str, args: tuple[Any, ...], kwargs: dict[str, Any] | None, exc: BaseException) -> None:
    letters = _tasks._dead_letters
    if letters is None or key == DEFER_KEY or ":" not in key:  # no ':': a Django task's path, kept by its runner
        return
    import traceback

    from .._text import escape

    policy = POLICIES.get(key)
    attempts = policy.attempts if policy is not None else 1
    try:
        payload = _protocol.stored(_protocol.encoder(key)(args, dict(kwargs or {})))
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-TRACEBACK_MAX:]
        note = (f"failed: {escape(task_name(key, args))} ({type(exc).__name__}, attempt {current_attempt()} of "
                f"{attempts}): {escape(str(exc))[:MESSAGE_MAX]} | {escape(text)}")
        letters.keep(payload, note, durable=False)  # counted as `failed`, not as `dead` (refused calls)
    except Exception as keep_exc:
        _tasks.log().error("uwsgiconf-mules: task %s: the failed call could not be kept as a dead letter (%s)", key,
                           keep_exc)


def attempt_text(key: str) -> str:
    """`` (attempt N of M)`` for the failure line of a task with retries; empty otherwise.

    :param key: The task key.
    """
    policy = POLICIES.get(key)
    if policy is None or not policy.retries:
        return ""
    return f" (attempt {current_attempt()} of {policy.attempts})"


_tasks.register(DEFER_KEY, _defer)
