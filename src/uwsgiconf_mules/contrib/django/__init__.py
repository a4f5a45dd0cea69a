"""A Django task backend that runs tasks in the dispatch mules of uWSGI farms.

Django 6 ships ``django.tasks``; Django 4.2 to 5.x get the same API from the ``django-tasks``
backport (module ``django_tasks``). :class:`MulesBackend` serves both (whichever is importable,
``django.tasks`` first)::

    TASKS = {"default": {"BACKEND": "uwsgiconf_mules.django.MulesBackend", "QUEUES": ["mail"]}}
    INSTALLED_APPS = [..., "uwsgiconf_mules.django"]   # registers the system check

Each queue is a farm declared in the uWSGI config (``mule_farm('mail', 2)``): ``task.enqueue()``
in a view queues the call for one mule of the farm and returns a ``TaskResult`` at once; the mule
runs the task (sync or ``async def``), sends the ``task_started`` and ``task_finished`` signals,
and closes the database connections Django would close at the end of a request (those that are
unusable or older than ``CONN_MAX_AGE``; with the default 0, all of them), before and after each
task. Outside uWSGI (``manage.py runserver``, tests) a task runs at once, in the caller.

The ``TaskResult`` the signals carry says what Django's immediate backend would say: a task that
raises anything but ``KeyboardInterrupt`` (``SystemExit`` included) or returns what JSON does not
carry (``normalize_json`` raises ``TypeError``) is ``FAILED``; ``enqueued_at`` is the caller's;
``task`` has the backend and queue of ``.using(...)``. The call carries both (the queue name and
``enqueued_at`` as ISO 8601, after the five arguments of version 0.1, whose calls still run).

``run_after`` is honoured (``supports_defer``): a delayed call, kept in the spool until due (refused
on a farm routed to RQ); Django has no retries, and a failed task is a ``failed`` dead letter.

Results (``supports_get_result = True``): with a results store declared
(``set_mules_params(results=...)``, see :mod:`uwsgiconf_mules.runtime.results`), every call keeps its
``TaskResult`` there for ``OPTIONS["RESULT_TTL"]`` seconds (default 3600): ``backend.get_result(id)``
and ``result.refresh()``, in any worker or mule of the instance, give its status (``READY`` while
queued, ``RUNNING``, ``SUCCESSFUL``, ``FAILED``), ``errors``, return value and times. The mule writes
``RUNNING`` before it sends ``task_started`` and the outcome before ``task_finished``, so a signal's
receiver that reads the result sees what the signal says. Without a store, ``get_result`` raises
``TaskResultDoesNotExist`` saying to declare one.

Not supported, declared through the backend's flags: priorities (``supports_priority = False``).
Arguments must be JSON-serialisable.

This module imports Django: the runtime never imports it; a mule imports it when it runs its
first Django task.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import pickle
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from django.apps import AppConfig
from django.utils import timezone

from ...errors import MulesError, UnknownTaskError
from ...protocol import envelope as _protocol
from ...runtime import (
    Farm,
    instance as _instance,
    mule_offload,
    policy as _policy,
    results as _results,
    tasks as _tasks,
)

__all__ = ["MulesBackend", "MulesConfig"]


def _tasks_api() -> Any:
    """``django.tasks`` (Django 6) or the ``django_tasks`` backport, with its checks and signals loaded."""
    for name in ("django.tasks", "django_tasks"):
        try:
            api = importlib.import_module(name)
        except ImportError:
            continue
        importlib.import_module(f"{name}.checks")  # registers the check of every task backend
        importlib.import_module(f"{name}.signals")
        return api
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured("uwsgiconf_mules.django.MulesBackend needs django.tasks (Django 6) or the "
                               "django-tasks backport: pip install 'uwsgiconf-mules[django]'")


_api = _tasks_api()
_base: Any = importlib.import_module(f"{_api.__name__}.base")
_signals: Any = importlib.import_module(f"{_api.__name__}.signals")
_BaseTaskBackend: Any = importlib.import_module(f"{_api.__name__}.backends.base").BaseTaskBackend


def _new_result(task: Any, result_id: str, alias: str, args: Any, kwargs: Any, **changes: Any) -> Any:
    values = {"task": task, "id": result_id, "status": _base.TaskResultStatus.READY, "enqueued_at": None,
              "started_at": None, "last_attempted_at": None, "finished_at": None, "args": args, "kwargs": kwargs,
              "backend": alias, "errors": [], "worker_ids": []}
    values.update(changes)
    return _base.TaskResult(**values)


def _set(result: Any, **values: Any) -> None:
    for name, value in values.items():  # TaskResult is a frozen dataclass, as Django's backends do
        object.__setattr__(result, name, value)


def _normalize_json() -> Callable[[Any], Any]:
    """Django's ``normalize_json``, which its immediate backend applies to a task's return value."""
    for name in ("django.utils.json", f"{_api.__name__}.utils"):
        try:
            found: Callable[[Any], Any] = importlib.import_module(name).normalize_json
        except (ImportError, AttributeError):
            continue
        return found
    raise ImportError("neither django.utils.json nor the django-tasks backport has normalize_json")


_normalized = _normalize_json()


def _task_of(path: str, alias: str | None = None, queue_name: str | None = None) -> Any:
    """The task at ``path``, with the backend and queue of the call (``.using(...)``) when they
    differ from those the task was declared with.

    :param path: The task's ``module_path``.
    :param alias: The alias of the backend that queued the call, or None.
    :param queue_name: The queue the call was queued on, or None.
    :raises Exception: whatever importing the task, or ``Task.using``, raises.
    """
    from django.utils.module_loading import import_string

    task = import_string(path)
    if not isinstance(task, _base.Task):
        return task
    changes = {name: value for name, value in (("backend", alias), ("queue_name", queue_name))
               if isinstance(value, str) and value != getattr(task, name)}
    return task.using(**changes) if changes else task


def _run(path: str, result_id: str, alias: str, args: list[Any], kwargs: dict[str, Any],  # noqa: PLR0917
         queue_name: str | None = None, enqueued_at: str | None = None) -> None:
    """Run the Django task at ``path`` in this mule (the function dispatch mules are sent), as
    Django's immediate backend runs a task: anything it raises but ``KeyboardInterrupt`` (``SystemExit``
    included) and a return value that is not JSON (``normalize_json``) make the result ``FAILED``.

    :param path: The task's ``module_path``.
    :param result_id: The id of the ``TaskResult`` that ``enqueue`` returned.
    :param alias: The backend's alias.
    :param args: Positional arguments.
    :param kwargs: Keyword arguments.
    :param queue_name: The task's queue at ``enqueue`` (``.using(queue_name=...)``); None in calls
        queued by version 0.1, which did not send it.
    :param enqueued_at: When ``enqueue`` queued the call (ISO 8601, the ``TaskResult``'s
        ``enqueued_at``); None in calls queued by version 0.1 (the mule's start time then).
    """
    import traceback

    from django.db import close_old_connections

    try:
        task = _task_of(path, alias, queue_name)
    except Exception as exc:  # the task's module: reported as such, and kept as a dead letter to replay
        reason = f"cannot import the Django task {path} ({type(exc).__name__}: {exc}){_tasks.import_hint(exc)}"
        _tasks.log().error("uwsgiconf-mules: mule %d %s", _tasks.current_mule(), reason, exc_info=True)
        extra = () if queue_name is None and enqueued_at is None else (queue_name, enqueued_at)
        _tasks.refuse(_encode((path, result_id, alias, args, kwargs, *extra), {}), reason)
        return
    announce = _announcements.pop(result_id, None)
    if announce is not None:  # run within enqueue (outside uWSGI): accepted, and announced before it starts
        announce()
    started = timezone.now()
    result = _new_result(task, result_id, alias, args, kwargs, status=_base.TaskResultStatus.RUNNING,
                         enqueued_at=_enqueued(enqueued_at, started), started_at=started, last_attempted_at=started,
                         worker_ids=[f"mule{_tasks.current_mule()}"])
    backend = type(task.get_backend())
    running = _tasks.RUNNING.set(path)  # for the thread asgiref runs an async task in
    kept = _stored.Kept(result_id, (path, alias, queue_name, list(args), dict(kwargs)), started.timestamp())
    close_old_connections()
    try:
        kept.write(_results.RUNNING)  # each record before its signal: the receivers read what it says
        _signals.task_started.send(sender=backend, task_result=result)
        if task.takes_context:
            value = task.call(_base.TaskContext(task_result=result), *args, **kwargs)
        else:
            value = task.call(*args, **kwargs)
        value = _normalized(value)  # TypeError for what JSON does not carry, as in Django's immediate backend
    except KeyboardInterrupt:  # stops the process, as it stops Django's immediate backend
        raise
    except BaseException as exc:  # SystemExit (sys.exit(), exit()) too: a failed task, the mule goes on
        kind = type(exc)
        result.errors.append(_base.TaskError(exception_class_path=f"{kind.__module__}.{kind.__qualname__}",
                                             traceback="".join(traceback.format_exception(exc))))
        _set(result, status=_base.TaskResultStatus.FAILED, finished_at=timezone.now())
        kept.write(_results.FAILED, error=exc)
        testing = _instance.uwsgi is None and _instance.local_send is not None
        if not testing:
            _tasks.failed(path)
            _policy.keep_failed(_KEY, (path, result_id, alias, args, kwargs, queue_name, enqueued_at), None, exc)
        _signals.task_finished.send(sender=backend, task_result=result)
        if testing:  # eager(), outbox.run(): the exception goes to the test, as for any offloaded call
            raise
    else:
        _set(result, status=_base.TaskResultStatus.SUCCESSFUL, finished_at=timezone.now(), _return_value=value)
        kept.succeeded(result, value)
        _signals.task_finished.send(sender=backend, task_result=result)
    finally:
        close_old_connections()
        _tasks.RUNNING.reset(running)


_run.__module__ = "uwsgiconf_mules.django"  # its task key (see _KEY): the module path settings name


def _enqueued(text: str | None, default: Any) -> Any:
    """``enqueued_at`` of a call from its ISO 8601 text, ``default`` when it has none (or a bad one)."""
    if isinstance(text, str):
        from datetime import datetime

        try:
            return datetime.fromisoformat(text)
        except ValueError:
            pass
    return default


_announcements: dict[str, Callable[[], object]] = {}
"""Result id -> sends its ``task_enqueued``, while ``enqueue`` hands the call over (see ``enqueue``)."""

_KEY = "uwsgiconf_mules.django:_run"
"""The task key of every call of this backend: its runner under the module path settings name
(:mod:`uwsgiconf_mules.django`, which imports this one): in calls queued, spooled and sent to RQ
since version 0.1, so it never changes."""
_tasks.register(_KEY, _run)  # a mule that imports this module can run it at once
_encode = _protocol.encoder(_KEY)  # the call again, for the dead letter of a task that cannot be imported


def _check_job(args: tuple[Any, ...]) -> None:
    """Refuse a job (RQ's, see :func:`uwsgiconf_mules.remote.run`) of this backend unless its path names
    a Django task of this backend whose queue is a farm routed to an offload backend in this process's
    declarations.

    :param args: The job's positional arguments (those of :func:`_run`).
    :raises UnknownTaskError: naming the task and what is wrong with it.
    """
    path = args[0] if args else None
    if not isinstance(path, str):
        raise UnknownTaskError(f"job refused: a job of the Django task backend names no task path ({path!r})",
                               key=_KEY)
    from django.utils.module_loading import import_string

    try:
        import_string(path)
    except Exception as exc:
        raise UnknownTaskError(f"job refused: cannot import the Django task {path} ({type(exc).__name__}: {exc})"
                               f"{_tasks.import_hint(exc)}", key=path) from None
    alias, queue_name = (args[2] if len(args) > 2 else None), (args[5] if len(args) > 5 else None)
    try:  # the task as the call was queued: with the backend and queue of .using(...)
        task = _task_of(path, alias if isinstance(alias, str) else None,
                        queue_name if isinstance(queue_name, str) else None)
    except Exception as exc:
        raise UnknownTaskError(f"job refused: Django task {path}: backend {alias!r} and queue {queue_name!r} do not "
                               f"apply to it ({type(exc).__name__}: {exc})", key=path) from None
    problem = _job_problem(task, path)
    if problem is not None:
        raise UnknownTaskError(f"job refused: Django task {path}: {problem}", key=path)


def _job_problem(task: Any, path: str) -> str | None:
    """Why ``task`` may not run as a job of this backend; None when it may."""
    if not isinstance(task, _base.Task):
        return f"{path} is not a Django task (a {type(task).__name__})"
    declarations = _instance.declarations()
    if declarations is None or declarations.get_backend(task.queue_name) is None:
        return f"its queue {task.queue_name!r} is not a farm routed to an offload backend"
    try:
        ours = isinstance(task.get_backend(), MulesBackend)
    except Exception as exc:
        return f"its backend {task.backend!r} cannot be loaded ({type(exc).__name__}: {exc})"
    return None if ours else f"its backend {task.backend!r} is not uwsgiconf_mules.django.MulesBackend"


_tasks.JOB_CHECKS[_KEY] = _check_job


def _aware(when: Any) -> Any:
    """``run_after``, aware: with ``USE_TZ = False`` Django makes naive ones, in the current time zone."""
    return timezone.make_aware(when) if timezone.is_naive(when) else when


class MulesBackend(_BaseTaskBackend):  # type: ignore[misc]
    """``django.tasks`` backend: each queue is a farm of dispatch mules (see the module docstring).

    :param alias: The backend's name in ``TASKS``.
    :param params: Its settings: ``QUEUES`` (farm names; default ``["default"]``), ``OPTIONS``.
    """

    supports_defer = True  # run_after: a delayed call (see runtime.deferred), kept on disk until due
    supports_async_task = True
    supports_get_result = True  # with a results store declared (see the module docstring)
    supports_priority = False

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        self._senders: dict[str, Callable[..., bool]] = {}
        self.result_ttl = _results.check_ttl(f"task backend {alias!r}", self.options.get("RESULT_TTL", 3600))

    def get_result(self, result_id: str) -> Any:
        """The ``TaskResult`` of a call, read from the results store, in any process of the instance.

        :param result_id: ``TaskResult.id``, as ``enqueue`` returned it.
        :raises TaskResultDoesNotExist: (``ResultDoesNotExist`` of older backports) for an id that
            names no result: unknown, expired (``RESULT_TTL``), evicted, or no results store declared.
        """
        return _stored.get_result(result_id)

    def _sender(self, queue: str) -> Callable[..., bool]:
        sender = self._senders.get(queue)
        if sender is None:  # raises UnknownTargetError when the farm is not declared
            sender = self._senders[queue] = mule_offload(Farm(queue))(_run)
        return sender

    def validate_task(self, task: Any) -> None:
        """Django's checks of a task, with what to do when its queue is not one of ``QUEUES``.

        :param task: The task.
        :raises InvalidTask: (``InvalidTaskError`` of the backport) naming the task, its queue and the fix.
        """
        try:
            super().validate_task(task)
        except Exception as exc:
            queue = task.queue_name
            if not self.queues or queue in self.queues or not type(exc).__name__.startswith("InvalidTask"):
                raise
            known = sorted(self.queues)
            fix = (f"give the task a queue, @task(queue_name={known[0]!r}), or declare a farm {queue!r} "
                   f"(section.workers.mule_farm({queue!r}, N)) and add it to QUEUES" if queue == "default" else
                   f"use one of them, or declare a farm {queue!r} (section.workers.mule_farm({queue!r}, N)) and "
                   "add it to QUEUES")
            raise type(exc)(f"task {task.module_path}: queue {queue!r} is not one of the QUEUES of task backend "
                            f"{self.alias!r} ({known}): {fix}") from None

    def enqueue(self, task: Any, args: Any, kwargs: Any) -> Any:
        """Queue a call of ``task`` for one mule of the farm named by its ``queue_name``.

        :param task: The task (its ``run_after``, when set, makes it a delayed call).
        :param args: Positional arguments (JSON-serialisable).
        :param kwargs: Keyword arguments (JSON-serialisable).
        :returns: A ``TaskResult`` in status ``READY``; with a results store, ``refresh()`` and
            :meth:`get_result` follow the call.
        :raises UnknownTargetError: when the farm is not declared.
        :raises PayloadError: when the call is too large (errors name the task's ``module_path``).
        :raises DeliveryError: when the farm's queue stayed full until the send timeout.
        """
        result = self._accept(task, args, kwargs)
        with _sending(task, result):
            self._send(task)(*self._call(task, result))
        return result

    async def aenqueue(self, task: Any, args: Any, kwargs: Any) -> Any:
        """:meth:`enqueue` for async code (``await task.aenqueue(...)``): the call is sent with
        ``aoffload``, so a full queue is waited on without blocking the running event loop (each
        send bounded by ``send_timeout``); a delayed call (``run_after``) is written from the
        loop's executor.

        :param task: The task (its ``run_after``, when set, makes it a delayed call).
        :param args: Positional arguments (JSON-serialisable).
        :param kwargs: Keyword arguments (JSON-serialisable).
        :returns: A ``TaskResult`` in status ``READY``, as :meth:`enqueue` returns.
        :raises UnknownTargetError: when the farm is not declared.
        :raises PayloadError: when the call is too large.
        :raises DeliveryError: when the farm's queue stayed full until the send timeout.
        """
        result = self._accept(task, args, kwargs)
        with _sending(task, result):
            if task.run_after is None:
                await self._sender(task.queue_name).aoffload(*self._call(task, result))  # type: ignore[attr-defined]
            else:
                send = functools.partial(self._send(task), *self._call(task, result))
                await asyncio.get_running_loop().run_in_executor(None, send)
        return result

    def _send(self, task: Any) -> Callable[..., bool]:
        sender = self._sender(task.queue_name)
        return sender if task.run_after is None else sender.at(_aware(task.run_after))  # type: ignore[attr-defined]

    def _call(self, task: Any, result: Any) -> tuple[Any, ...]:
        return (task.module_path, result.id, self.alias, list(result.args), dict(result.kwargs), task.queue_name,
                result.enqueued_at.isoformat())

    def _accept(self, task: Any, args: Any, kwargs: Any) -> Any:
        """The ``TaskResult`` of a call about to be sent, its ``task_enqueued`` signal waiting in
        :data:`_announcements`: sent once the call is accepted, after the send or, when the task runs
        within it (outside uWSGI), from ``_run`` before ``task_started``. A refused call announces
        nothing."""
        self.validate_task(task)
        from django.utils.crypto import get_random_string

        declarations = _instance.declarations()  # a queue routed to RQ keeps no result here
        keep = _results.available() and (declarations is None or declarations.get_backend(task.queue_name) is None)
        result_id = _results.new_id(self.result_ttl) if keep else get_random_string(32)
        result = _new_result(task, result_id, self.alias, args, kwargs, enqueued_at=timezone.now())
        if keep:  # READY, with what get_result needs, before it is sent
            _results.record(result_id, _results.QUEUED, pickle.dumps(
                (task.module_path, self.alias, task.queue_name, list(result.args), dict(result.kwargs), None)))
        _announcements[result.id] = functools.partial(_signals.task_enqueued.send, sender=type(self),
                                                      task_result=result)
        return result

    def check(self, **kwargs: Any) -> Iterable[Any]:
        """Django system check: every queue is a declared farm with dispatch mules, or a farm routed to
        an offload backend, whose workers run the tasks (E001: not declared, E002: programmed mules only).

        The farms are those of the declarations this process knows (``UWSGICONF_MULES``, set in
        every uWSGI process by the config, or the config module named by ``UWSGICONF_MULES_CONFIG``).
        When none are known (``manage.py`` commands outside uWSGI), nothing can be compared and the
        check passes; ``manage.py check --deploy`` says so on one ``Info`` line (``uwsgiconf_mules.I001``).

        :param kwargs: What Django passes to checks.
        """
        yield from super().check(**kwargs)
        yield from _checks.queue_errors(self)


@contextlib.contextmanager
def _sending(task: Any, result: Any) -> Iterator[None]:
    """Around a send: an error names ``task``; ``task_enqueued`` is sent once the call is accepted."""
    try:
        yield
    except MulesError as exc:  # named after the task, not after the function that runs it
        _rename(exc, task)
        raise
    finally:
        announce = _announcements.pop(result.id, None)
    if announce is not None:
        announce()


def _rename(exc: MulesError, task: Any) -> None:
    """Make the message of ``exc`` name the task rather than the function that runs it."""
    exc.args = tuple(arg.replace(_KEY, task.module_path) if isinstance(arg, str) else arg for arg in exc.args)


class MulesConfig(AppConfig):  # type: ignore[misc]
    """The Django app ``uwsgiconf_mules.django``: listed in ``INSTALLED_APPS``, it loads this module
    when Django starts, which registers the system check of task backends (:meth:`MulesBackend.check`)."""

    name = "uwsgiconf_mules.django"
    label = "uwsgiconf_mules"
    verbose_name = "uwsgiconf-mules"
    default = True


from . import checks as _checks, results as _stored  # noqa: E402 - last: they read the names above
