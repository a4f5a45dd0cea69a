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
call*: kept on disk in the spool (:mod:`uwsgiconf_mules.protocol.spool.delayed`) until due, and run
by the timer of a dispatch mule of its target (:mod:`uwsgiconf_mules.mule.timer`); see
:mod:`uwsgiconf_mules.runtime.deferred` for how one is sent and kept.

Outside uWSGI (inline calls, the test modes of :mod:`uwsgiconf_mules.testing`), a delayed call
runs at once, and retries run at once, one after the other, without sleeping.
"""

from __future__ import annotations

import time

from ..errors import Retry, TaskOptionError
from ..protocol import envelope as _protocol
from . import instance as _instance, results as _results, tasks as _tasks
from .deferred import DEFER_KEY, MAX_DELAY, _number, schedule

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: workers and mules import this module, keep it cheap
if TYPE_CHECKING:
    import datetime
    from collections.abc import Callable
    from typing import Any, Generic, ParamSpec, Protocol, TypedDict

    _P = ParamSpec("_P")

    class Options(TypedDict, total=False):
        """The keyword-only options of ``mule_offload`` (and ``Mule.offload``, ``Farm.offload``):
        see the module docstring and docs: Task capabilities > Retries, delayed calls, time limits."""

        retries: int
        """More attempts a failed call gets (default 0: none); a retry is a delayed call."""
        retry_for: type[BaseException] | tuple[type[BaseException], ...]
        """The exceptions that retry (default: none; the task may also raise ``Retry``)."""
        retry_backoff: float
        """Seconds before the first retry (default 1), doubled for each next one."""
        retry_backoff_max: float
        """Longest delay between two attempts (default 600 s)."""
        retry_jitter: bool
        """Whether each delay is drawn between half of it and all of it (default True)."""
        soft_time_limit: float | None
        """Seconds after which ``TimeLimitExceeded`` is raised inside the call."""
        time_limit: int | None
        """Whole seconds after which uWSGI stops the mule (its harakiri, for this task)."""
        acks_late: bool
        """Whether a call interrupted by the death of its mule runs again (within its attempts)."""

    class Delayable(Protocol, Generic[_P]):
        """The delayed sends of an offloaded function (see :mod:`uwsgiconf_mules.runtime.deferred`)."""

        def later(self, seconds: float) -> Callable[_P, bool]:
            """The function that sends a call to run no earlier than ``seconds`` from now."""

        def at(self, when: datetime.datetime) -> Callable[_P, bool]:
            """The function that sends a call to run no earlier than ``when``, an aware datetime."""

MAX_RETRIES = 1000
"""Most retries a task may declare."""
MAX_TIME_LIMIT = 7 * 86400
"""Longest time limit, in seconds."""
OPTIONS = ("retries", "retry_for", "retry_backoff", "retry_backoff_max", "retry_jitter", "soft_time_limit",
           "time_limit", "acks_late")
"""The keyword-only options of ``mule_offload`` this module owns."""
DEFAULTS: dict[str, Any] = {"retries": 0, "retry_for": (), "retry_backoff": 1.0, "retry_backoff_max": 600.0,
                            "retry_jitter": True, "soft_time_limit": None, "time_limit": None, "acks_late": False}
UNMAPPED = {
    "soft_time_limit": "RQ has one time limit per job, job_timeout, which time_limit= sets",
    "acks_late": "RQ decides what becomes of a job whose worker died: with retries left it runs again, "
                 "otherwise it is failed (AbandonedJobError)",
}
"""The options a farm routed to RQ cannot honour (refused at decoration), with why."""
TRACEBACK_MAX = 4000
"""Longest traceback text kept with a failed call, in characters (its end is kept)."""
MESSAGE_MAX = 300
"""Longest exception message kept in the note of a failed call, in characters."""


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

    def retried(self, exc: BaseException, attempt: int) -> bool:
        """Whether attempt ``attempt`` raising ``exc`` gets another attempt (for the results of the
        task's calls: a retried exception is no outcome, see ``runtime.results.wrap``).

        :param exc: What the attempt raised.
        :param attempt: The attempt (1 for the first).
        """
        return isinstance(exc, (Retry, *self.retry_for)) and attempt < self.attempts

    def as_dict(self) -> dict[str, Any]:
        """The options, by name (what ``capture`` records on each ``Offload``)."""
        return {name: getattr(self, name) for name in OPTIONS}

    def __repr__(self) -> str:
        changed = ", ".join(f"{name}={getattr(self, name)!r}" for name in OPTIONS
                            if getattr(self, name) != DEFAULTS[name])
        return f"Policy({self.key!r}, {changed})"


POLICIES: dict[str, Policy] = {}
"""Task key -> its policy, for the tasks that declare one."""

ATTEMPT = _results.ATTEMPT
"""The attempt of the call this process runs now (0: a first attempt); set by the mule's timer. The
results' cell (``runtime.results.ATTEMPT``): a task with results writes the attempt it runs."""


def current_attempt() -> int:
    """The attempt of the offloaded call running now: 1 for the first, 2 for the first retry, ...
    (in the ``on_failure`` hook: the attempt that failed)."""
    return FAILED[0] or ATTEMPT[0] or 1


FAILED = [0]
"""The attempt that failed last (inline retries count their attempts themselves); 0 once reported."""


def policy_of(key: str, label: str, options: dict[str, Any], *, routed: bool = False,
              programmed: bool = False) -> Policy | None:
    """Check a task's options; None when every one has its default (the task takes today's path).

    :param key: The task key.
    :param label: Its target, for the errors (``farm 'mail'``).
    :param options: The options given, by name.
    :param routed: Whether the target is a farm routed to an offload backend (RQ), which honours
        the retries and ``time_limit`` (see ``contrib.rq.sender.job_options``), not :data:`UNMAPPED`.
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
    unmapped = sorted(set(given) & set(UNMAPPED)) if routed else []
    if unmapped:
        name = unmapped[0]
        raise TaskOptionError(f"task {key}: {label} is routed to an offload backend, which does not honour {name}= "
                              f"({UNMAPPED[name]}; declare the task on a farm of dispatch mules)", task=key,
                              option=name)
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
    results = key in _results.TASKS  # registered by runtime.offload before the policy

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
            result_id = args[0] if results and args else None  # a task with results: its calls carry their id first
            if _instance.uwsgi is None or not _tasks.current_mule():  # inline, test modes: at once, no sleep
                if result_id is not None:
                    _results.retrying(result_id, error, None, attempt, 0.0)
                ATTEMPT[0] = attempt + 1
                continue
            note = target_note()
            try:
                schedule(note or f"mule:{_tasks.current_mule()}", _protocol.stored(encode(args, kwargs)),
                         time.time_ns() + int(delay * 1e9), attempt + 1, within_limit=True)
            except Exception as keep_exc:
                _tasks.log().error("uwsgiconf-mules: task %s: the retry (attempt %d of %d) cannot be kept (%s): the "
                                   "call fails now", key, attempt + 1, policy.attempts, keep_exc)
                if result_id is not None:
                    _results.failed(result_id, error, None, attempt)
                raise error from None
            if result_id is not None:
                _results.retrying(result_id, error, None, attempt, delay)
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


