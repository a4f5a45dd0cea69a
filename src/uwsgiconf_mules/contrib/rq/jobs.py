"""The function that runs every job of a farm routed to RQ, in the RQ worker.

``uwsgiconf_mules.remote.run(key, /, *args, **kwargs)`` is what each job names (RQ finds it by
this import path): it runs the function that ``mule_offload`` registered under ``key``
(``module:qualname``), importing the key's module first as a dispatch mule does, and refuses any
other key. So a job never calls anything that was not offloaded on purpose, and it runs the
original function, never its offloading wrapper: a job does not offload itself again. ``key`` is
positional-only: a task's own keyword argument named ``key`` reaches the task.

Before it imports the first task module, a worker process runs the start-up steps of a dispatch
mule (see :mod:`uwsgiconf_mules.mule.startup`): the declared ``mule_init`` hook, and
``django.setup()`` when ``DJANGO_SETTINGS_MODULE`` is set. A job of the Django task backend
(``uwsgiconf_mules.django``) runs only a Django task of that backend whose queue is a farm
routed to an offload backend; any other path is refused.

``uwsgiconf_mules.remote.Job`` is the job class ``uwsgiconf-mules worker`` gives RQ: a job that
names any function other than :func:`run`, or whose hash carries a field our senders never set
and that would make the worker call or reach something (callbacks, webhooks, dependencies,
retries, repeats, rate limits: :data:`REFUSED_FIELDS`), or with a field RQ cannot read
(``timeout=abc``: RQ's own reading raised outside any job and stopped the worker), fails without
running anything, its callbacks and webhooks included. So whoever can write to Redis cannot make the worker call an
arbitrary function or send a request (with the ``json`` serializer; a pickled job runs code as
it is unpickled, which is why pickle is a declared choice).

This module imports RQ: only RQ workers import it.
"""

from __future__ import annotations

import os

from rq.exceptions import NoSuchJobError
from rq.job import Job as _RQJob

from ...errors import UnknownTaskError
from ...mule import startup as _startup
from ...runtime import tasks as _tasks

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: keep worker imports cheap
if TYPE_CHECKING:
    from typing import Any

__all__ = ["CHECKED_FIELDS", "REFUSED_FIELDS", "Job", "run"]

_RUN = "uwsgiconf_mules.remote.run"  # how jobs name run(): its public path, in jobs queued since version 0.1

REFUSED_FIELDS = (
    "success_callback_name", "failure_callback_name", "stopped_callback_name",  # RQ imports and calls them
    "webhooks",  # RQ sends HTTP requests to their URLs
    "dependency_id", "dependency_ids", "allow_dependency_failures",  # RQ enqueues and waits on other jobs
    "enqueue_at_front_on_retry",  # RQ runs it again, first
    "repeats_left", "repeat_intervals",  # RQ runs it again
    "rate_limit_key", "rate_limit_concurrency",  # RQ takes and frees slots of another Redis key
)
"""Fields of an RQ 3 job hash that make a worker call or reach something, and that the senders of
uwsgiconf-mules never set: a job carrying any of them (not empty) is refused."""

CHECKED_FIELDS = ("retries_left", "retry_intervals", "number_of_retries", "timeout")
"""Fields of an RQ 3 job hash that make RQ run the job again, or longer, which the senders of
uwsgiconf-mules set for a task that declares ``retries=`` or ``time_limit=`` (see
``contrib.rq.sender.job_options``): a job carrying them runs only when they stay within what its
task declares (no more retries than its ``retries``, each interval a number of seconds within a
year, a ``timeout`` of seconds within its ``time_limit`` or RQ's default of 180 s, whichever is
longer: never ``-1``, no limit), otherwise it is refused."""

_started: list[int] = []  # pid of the process that ran the start-up steps


def _start() -> None:
    """Run the start-up steps of this worker process once: the ``mule_init`` hook and
    ``django.setup()`` (see :mod:`uwsgiconf_mules.mule.startup`)."""
    pid = os.getpid()
    if _started and _started[0] == pid:
        return
    _started[:] = [pid]
    from ...runtime import instance as _instance

    where = f"RQ worker {pid}"
    try:
        declarations = _instance.declarations()
    except Exception as exc:
        _tasks.log().error("uwsgiconf-mules: %s: cannot read the declarations (%s: %s)", where, type(exc).__name__,
                           exc)
        declarations = None
    if declarations is not None and declarations.mule_init:
        _startup.run_hook(declarations.mule_init, where)
    if _startup.django_needs_setup():
        _startup.setup_django(where)


def run(key: str, /, *args: Any, **kwargs: Any) -> Any:
    """Run the offloaded function registered as ``key`` with these arguments; return its result.

    :param key: The task key, ``module:qualname`` (positional-only: the task may take ``key=``).
    :param args: Positional arguments of the call.
    :param kwargs: Keyword arguments of the call.
    :raises UnknownTaskError: when no function is registered under ``key`` by ``mule_offload``, or the
        check the task's module registered refuses the call (see ``runtime.tasks.JOB_CHECKS``: a job of
        the Django task backend that names something else than a Django task routed to an offload
        backend); the job fails in RQ with this message, and nothing runs.
    """
    if not isinstance(key, str):
        raise UnknownTaskError(f"job refused: task key {key!r} is not a string", key=repr(key))
    _start()
    found = _tasks.find(key.encode())
    if isinstance(found, str):
        raise UnknownTaskError(f"job refused: {found}", key=key)
    check = _tasks.JOB_CHECKS.get(key)
    if check is not None:  # the task's own module says which of its calls a job may make
        check(args)
    if getattr(found, "_policy", None) is not None:  # a task with a lifecycle: RQ runs its retries (see Job)
        found = found.__wrapped__  # type: ignore[attr-defined]
    # A task that keeps results is registered wrapped (its calls to mules carry a result id): RQ keeps a job's
    # result itself, so the job runs the function and returns its value.
    return getattr(found, "_results_raw", found)(*args, **kwargs)


def _retry_problem(job: Any, key: str) -> str | None:
    """Why the retry fields of ``job`` go past what task ``key`` declares (None: they do not)."""
    import math

    from ...runtime import policy as _policy
    from ...runtime.deferred import MAX_DELAY

    policy = _policy.POLICIES.get(key)
    allowed = policy.retries if policy is not None else 0
    shown = f"task {key} declares retries={allowed}"
    for name in ("retries_left", "number_of_retries"):
        value = getattr(job, name)
        if value is not None and not (isinstance(value, int) and 0 <= value <= allowed):
            return f"{name}={value!r}, and {shown}"
    intervals = job.retry_intervals
    if intervals is not None:
        if not isinstance(intervals, list) or len(intervals) > allowed:
            return f"retry_intervals={str(intervals)[:80]}, and {shown}"
        for value in intervals:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not (
                    0 <= value <= MAX_DELAY):
                return f"retry_intervals with {str(value)[:40]!r}, which is no number of seconds within a year"
    return None


class Job(_RQJob):
    """RQ's job, refusing any job that names another function than :func:`run`, carries one of
    :data:`REFUSED_FIELDS` or has a field RQ cannot read; it never runs callbacks."""

    _refused: tuple[str, ...] = ()
    _unreadable: tuple[str, ...] = ()  # "field (what RQ raised)" of each field RQ could not read

    def refresh(self) -> None:
        """Read the job's hash from Redis (see :meth:`restore`); a job key that holds another kind
        of value than a hash is no job: :class:`NoSuchJobError` after a log line, which RQ skips."""
        from redis.exceptions import ResponseError

        try:
            super().refresh()  # type: ignore[no-untyped-call]
        except ResponseError as exc:
            if not str(exc).startswith("WRONGTYPE"):
                raise
            _tasks.log().warning("uwsgiconf-mules: RQ job %s: its key %s holds no hash, so it is no job; RQ skips it",
                                 self.id, self.key)
            raise NoSuchJobError(f"{self.key} holds no hash") from None

    def restore(self, raw_data: Any) -> Any:
        """Read the job from its Redis hash; note the :data:`REFUSED_FIELDS` it carries (not empty),
        and drop them, so that nothing of them runs when the worker fails the job. A field that RQ
        cannot read (``timeout=abc``, a date that is no date, ...) is left out and noted, and the job
        fails without running (see :meth:`_restore_readable`): one bad hash never stops the worker. The
        first job this process reads runs the start-up steps (see the module docstring).

        :param raw_data: The hash, as Redis returns it.
        :raises NoSuchJobError: as RQ does, when the hash has no ``data`` field (RQ skips it).
        """
        try:
            result = super().restore(raw_data)
        except NoSuchJobError:
            _tasks.log().warning("uwsgiconf-mules: RQ job %s: its hash has no data field, so it is no job; RQ "
                                 "skips it", self.id)
            raise
        except Exception:
            result = self._restore_readable(raw_data)
        fields = {(name.decode(errors="replace") if isinstance(name, bytes) else str(name)): value
                  for name, value in raw_data.items()}
        carried = tuple(name for name in REFUSED_FIELDS if fields.get(name) not in (None, b"", ""))
        if carried:
            self._refused = tuple(dict.fromkeys((*self._refused, *carried)))  # kept across a refresh
        if self._refused or self._unreadable:
            self._success_callback_name = self._failure_callback_name = self._stopped_callback_name = None
            self.webhooks = []  # dependencies are kept: RQ's bookkeeping of the jobs waiting on this one needs them
            self._no_retry()
            self.enqueue_at_front_on_retry = False
            self.repeats_left = self.repeat_intervals = None
            self.rate_limit_key = self.rate_limit_concurrency = None
        else:
            _start()  # in the worker's main process as it takes the job: the processes it forks inherit it
        return result

    def _restore_readable(self, raw_data: Any) -> Any:
        """Restore the job from the fields of its hash that RQ can read, one at a time from ``data``
        on, and note in :attr:`_unreadable` each field that makes RQ's ``restore`` raise (the job is
        then refused). Runs only for a hash RQ could not read as a whole.

        :param raw_data: The hash, as Redis returns it (``data`` among its fields).
        """
        readable = {name: value for name, value in raw_data.items() if name in (b"data", "data")}
        unreadable = list(self._unreadable)
        for name, value in raw_data.items():
            if name in readable:
                continue
            try:
                super().restore({**readable, name: value})
            except Exception as exc:
                shown = name.decode(errors="replace") if isinstance(name, bytes) else str(name)
                unreadable.append(f"{shown[:80]!r} ({type(exc).__name__}{': ' if str(exc) else ''}{str(exc)[:200]})")
            else:
                readable[name] = value
        self._unreadable = tuple(sorted(set(unreadable)))  # kept across a refresh; sorted: Redis keeps no order
        return super().restore(readable)

    def _no_retry(self) -> None:
        self.retries_left = self.retry_intervals = self.number_of_retries = None

    def _task_key(self) -> str | None:
        """The task key the job names (its first argument), or None."""
        try:
            args = self.args
        except Exception:
            return None
        return args[0] if args and isinstance(args[0], str) else None

    def _check_retries(self) -> None:
        """Refuse the job when its :data:`CHECKED_FIELDS` go past what its task declares (the task's
        module imported first, as :func:`run` imports it); a task that cannot be found gets no retry."""
        if self.retries_left is None and self.retry_intervals is None and self.number_of_retries is None:
            return
        key = self._task_key()
        if key is None or isinstance(_tasks.find(key.encode()), str):
            self._no_retry()  # refused by run(): never run again
            return
        problem = _retry_problem(self, key)
        if problem is not None:
            self._no_retry()
            self._refused = (*self._refused, problem)
            raise UnknownTaskError(f"job refused: it carries {problem}; the senders of uwsgiconf-mules never set "
                                   "more, so nothing ran", key=key)

    def _check_timeout(self) -> None:
        """Refuse the job when its ``timeout`` goes past what the senders set: its task's
        ``time_limit`` or RQ's default, whichever is longer (``-1``, no limit, is never set)."""
        timeout, key = self.timeout, self._task_key()
        if timeout is None or key is None or isinstance(_tasks.find(key.encode()), str):
            return  # RQ's default applies; an unknown task is refused by run()
        import math

        from rq import Queue

        from ...runtime import policy as _policy

        policy = _policy.POLICIES.get(key)
        limit = max(math.ceil(policy.time_limit or 0) if policy is not None else 0, Queue.DEFAULT_TIMEOUT)
        if not 0 < timeout <= limit:
            self._no_retry()
            problem = f"timeout={timeout!r}, and task {key} runs {limit} s at most"
            self._refused = (*self._refused, problem)
            raise UnknownTaskError(f"job refused: it carries {problem}; the senders of uwsgiconf-mules never set "
                                   "more, so nothing ran", key=key)

    def perform(self) -> Any:
        """Run the job (RQ's ``perform``), with ``current_attempt()`` set from its retries left; when
        it raises an exception that its task's ``retry_for`` (or :class:`~uwsgiconf_mules.errors.Retry`)
        does not name, RQ does not retry it (RQ's own ``Retry`` retries every exception), and a
        ``Retry(delay=...)`` sets the delay of the next retry."""
        from ...errors import Retry
        from ...runtime import policy as _policy

        policy = None
        key = self._task_key() if self.func_name == _RUN and not (self._refused or self._unreadable) else None
        if key is not None:  # its module imported first, as run() imports it (a forked work horse has not yet)
            _start()
            policy = None if isinstance(_tasks.find(key.encode()), str) else _policy.POLICIES.get(key)
        attempt = 1
        if policy is not None and isinstance(self.retries_left, int):
            attempt = max(1, policy.retries - self.retries_left + 1)
        _policy.ATTEMPT[0] = attempt if attempt > 1 else 0
        try:
            return super().perform()
        except BaseException as exc:
            if not self.retries_left or policy is None or not policy.retried(exc, attempt):
                self._no_retry()
            elif isinstance(exc, Retry) and exc.delay is not None and isinstance(self.retry_intervals, list):
                from ...runtime.deferred import MAX_DELAY

                intervals: list[Any] = list(self.retry_intervals) or [0.0]
                index = min(max(len(intervals) - self.retries_left, 0), len(intervals) - 1)
                intervals[index] = max(0.0, min(float(exc.delay), MAX_DELAY))
                self.retry_intervals = intervals
            raise
        finally:
            _policy.ATTEMPT[0] = 0

    @property
    def func(self) -> Any:
        """The function the job runs: :func:`run`, or :class:`UnknownTaskError` for any other, for a
        job that carries one of :data:`REFUSED_FIELDS`, for one whose hash RQ cannot read, or whose
        :data:`CHECKED_FIELDS` go past what its task declares."""
        if self._unreadable:
            raise UnknownTaskError(f"job refused: RQ cannot read its field(s) {', '.join(self._unreadable)}; nothing "
                                   "ran (the senders of uwsgiconf-mules write every field readable: something else "
                                   "wrote this hash)", key=str(self.id))
        if self._refused:
            raise UnknownTaskError(f"job refused: it carries {', '.join(self._refused)}, which jobs of farms routed "
                                   "by uwsgiconf-mules never set; nothing ran", key=str(self.func_name))
        if self.func_name != _RUN or self.instance is not None:
            raise UnknownTaskError(f"job refused: it names {self.func_name!r}, and workers of farms routed by "
                                   f"uwsgiconf-mules run only {_RUN}", key=self.func_name)
        self._check_retries()
        self._check_timeout()
        return run

    @property
    def success_callback(self) -> None:
        """None: jobs of uwsgiconf-mules have no callbacks, and a forged one never runs."""
        return None

    @property
    def failure_callback(self) -> None:
        """None: jobs of uwsgiconf-mules have no callbacks, and a forged one never runs."""
        return None

    @property
    def stopped_callback(self) -> None:
        """None: jobs of uwsgiconf-mules have no callbacks, and a forged one never runs."""
        return None
