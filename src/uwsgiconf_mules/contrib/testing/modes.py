"""Test modes: offloaded calls recorded (capture) or run at once (eager), outside uWSGI.

.. code-block:: python

    from uwsgiconf_mules.testing import capture, eager

    with capture() as outbox:            # offloads are recorded, not run
        signup(request)
    assert outbox.calls[0].key == "shop.tasks:send_welcome_email"
    assert outbox.calls[0].args == (42,)

    with eager():                        # offloads run at once; task exceptions propagate
        signup(request)

A task that keeps results (``result_ttl``) returns its handle in both: in ``capture`` a ``queued``
one, which :meth:`Outbox.run` completes (``Offload.result_id`` is its id); in ``eager`` a completed
one, ``succeeded`` or ``failed``: its exception is kept in the handle (``result()`` raises
:class:`~uwsgiconf_mules.errors.TaskFailed`) rather than raised at the offload.

Both check every target against the project's declarations: an undeclared farm or mule id raises
:class:`~uwsgiconf_mules.errors.UnknownTargetError` at the call, as under uWSGI. The declarations
are those of the configuration module named by ``config``, else by the ``UWSGICONF_MULES_CONFIG``
environment variable, else the ``UWSGICONF_MULES`` record; a mode without any refuses to start.
Calls go through the same serialisation and size checks as in production: the task receives
copies of its arguments, decoded from the message a mule would read; calls to a farm routed to
an offload backend pass its argument check too (RQ with JSON: only what JSON gives back), and
are never sent to the engine.

With pytest, the plugin this package registers provides the fixtures ``mules_outbox`` (capture)
and ``mules_eager``, which read the config from the ``uwsgiconf_mules_config`` ini option when
set (a relative path is taken from the ini file's directory). A mode replaces, for its duration,
how calls are handled outside uWSGI (it resets the routes of offloaded functions, which choose
their sending function when they resolve a route): production calls never test for a mode.

Delayed calls (``f.later(seconds)(...)``, ``f.at(when)(...)``) are recorded with their delay
(:attr:`Offload.delay`) and, in eager mode, run at once, without waiting; every recorded call
carries its task's declared options (:attr:`Offload.policy`). A task that declares ``retries`` runs
its retries at once, one after the other, without sleeping (eager mode, :meth:`Offload.run`), and
raises what its last attempt raised; time limits apply in dispatch mules only.

In eager mode a task's exception propagates to the code that offloaded it, a view for instance,
and from there the framework decides: Flask turns an exception raised in a view into a 500
response unless the app is in testing mode (``app.config["TESTING"] = True``; with an app
factory, ``create_app({"TESTING": True})`` in the test's fixture), and only then does the test
client raise it; Django's test client raises it by default. Without a mode, outside uWSGI
(``flask run``, ``manage.py runserver``, a test client), offloaded calls run inline, in the
request, and are not checked against the declarations unless ``UWSGICONF_MULES_CONFIG`` names them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from ...declarations import CONFIG_ENV, RECORD_ENV, Declarations
from ...errors import DeclarationsMissingError, UsageError
from ...protocol import envelope as _protocol
from ...runtime import (
    Farm,
    Mule,
    deferred as _deferred,
    instance as _instance,
    policy as _policy,
    results as _results,
    tasks as _tasks,
)

__all__ = ["Offload", "Outbox", "Sent", "capture", "eager"]

_DJANGO_RUN = "uwsgiconf_mules.django:_run"
"""The task key of Django tasks (``uwsgiconf_mules.django`` imports Django: not imported here)."""


class Offload:
    """One offloaded call, as a test mode saw it.

    :param key: The task key, ``module:qualname``.
    :param target: Where the call was sent: a ``Mule`` or a ``Farm``.
    :param func: The function the task runs.
    :param args: Positional arguments, decoded from the message (copies).
    :param kwargs: Keyword arguments, decoded from the message (copies).
    :param delay: For a delayed call (``f.later(...)``, ``f.at(...)``), its delay in seconds; else None.
    :param policy: The task's declared options (``retries``, ``soft_time_limit``, ...), by name;
        empty for a task that declares none.
    :param result_id: For a task that keeps results (``result_ttl``), the call's result id (what
        ``Result.get`` reads: ``queued`` until :meth:`run` runs it); else None.
    """

    __slots__ = ("args", "delay", "func", "key", "kwargs", "policy", "result_id", "target")

    def __init__(self, key: str, target: Mule | Farm, func: Callable[..., Any], args: tuple[Any, ...],
                 kwargs: dict[str, Any], *, delay: float | None = None, policy: dict[str, Any] | None = None,
                 result_id: str | None = None) -> None:
        self.key = key
        self.target = target
        self.func = func
        self.args = args
        self.kwargs = kwargs
        self.delay = delay
        self.policy = policy or {}
        self.result_id = result_id

    def __repr__(self) -> str:
        delay = "" if self.delay is None else f", delay={self.delay!r}"
        return f"Offload({self.key!r}, target={self.target!r}, args={self.args!r}, kwargs={self.kwargs!r}{delay})"

    def run(self) -> None:
        """Run the call here, now, as a mule would; exceptions propagate. A task that returns
        something other than None gets a :class:`~uwsgiconf_mules.errors.ReturnValueWarning`
        (once per task and mode). A task that keeps results gets its outcome written (the
        exception is raised after it is: the handle says ``failed``)."""
        if self.result_id is not None:
            self.func(self.result_id, *self.args, **self.kwargs)
            return
        result = self.func(*self.args, **self.kwargs)
        if result is not None:
            _tasks.returned(self.key.encode(), result)


class Sent:
    """A plain message sent with ``Mule.send`` or ``Farm.send`` during a test mode.

    :param target: The ``Mule`` or ``Farm`` it was sent to.
    :param message: The bytes a programmed mule would read.
    """

    __slots__ = ("message", "target")

    def __init__(self, target: Mule | Farm, message: bytes) -> None:
        self.target = target
        self.message = message

    def __repr__(self) -> str:
        return f"Sent(target={self.target!r}, message={self.message!r})"


class Outbox:
    """What the code under test offloaded and sent, in order (like Django's ``mail.outbox``)."""

    def __init__(self) -> None:
        self.calls: list[Offload] = []
        """Offloaded calls, in the order they were made."""
        self.sent: list[Sent] = []
        """Plain messages (``Mule.send``, ``Farm.send``), in the order they were sent."""

    def __len__(self) -> int:
        return len(self.calls)

    def __iter__(self) -> Iterator[Offload]:
        return iter(self.calls)

    def __getitem__(self, index: int) -> Offload:
        return self.calls[index]

    def of(self, task: object) -> list[Offload]:
        """The calls of one task.

        :param task: An offloaded function, or its key (``module:qualname``), or a Django task
            (``@task``, enqueued through :class:`~uwsgiconf_mules.django.MulesBackend`: its calls
            are those of the backend's runner whose first argument is the task's ``module_path``).
        """
        path = None if isinstance(task, str) else getattr(task, "module_path", None)
        if isinstance(path, str):
            return [call for call in self.calls if call.key == _DJANGO_RUN and call.args[:1] == (path,)]
        key = task if isinstance(task, str) else getattr(task, "key", None)
        if key is None:
            raise UsageError(f"Outbox.of() takes an offloaded function, a task key or a Django task, not {task!r}")
        return [call for call in self.calls if call.key == key]

    def run(self) -> int:
        """Run the recorded calls here, in order, and forget them; exceptions propagate (the calls
        not run yet stay recorded).

        :returns: How many calls ran.
        """
        ran = 0
        while self.calls:
            self.calls[0].run()
            del self.calls[0]
            ran += 1
        return ran

    def clear(self) -> None:
        """Forget every recorded call and message."""
        self.calls.clear()
        self.sent.clear()


def _target(dest: int | bytes) -> Mule | Farm:
    return Mule(dest) if isinstance(dest, int) else Farm(dest.decode())


def _recorder(outbox: Outbox, run: bool) -> Callable[[bytes, int | bytes], bool]:
    """The sending function of a mode: decode what a mule would read, record it, maybe run it."""

    def record(message: bytes, dest: int | bytes) -> bool:
        if not _protocol.is_call(message):
            outbox.sent.append(Sent(_target(dest), message))
            return True
        key, args, kwargs = _protocol.decode(message)
        func = _tasks.find(key)
        if isinstance(func, str):  # not registered: cannot happen for calls of mule_offload functions
            raise UsageError(func)
        policy = _policy.POLICIES.get(key.decode())
        result_id = None
        if key.decode() in _results.TASKS:  # a task that keeps results: its call carries its result id first
            result_id, args = args[0], args[1:]
        call = Offload(key.decode(), _target(dest), func, args, kwargs, delay=_deferred.SENDING[0],
                       policy=policy.as_dict() if policy is not None else None, result_id=result_id)
        outbox.calls.append(call)
        if run:
            call.run()
        return True

    return record


@contextmanager
def _mode(config: str | None, where: str | None = None, *, run: bool) -> Iterator[Outbox]:
    if _instance.uwsgi is not None:
        raise UsageError("uwsgiconf_mules.testing modes work outside uWSGI (tests, scripts, development servers)")
    declarations: Declarations | None
    source: str | None
    if config is not None:
        from ..._project import load_declarations

        where = where or f"config={config}"
        declarations, source = load_declarations(config, where), where
    else:
        declarations, source = _instance.declarations(), _instance.loaded_from
    if declarations is None:
        raise DeclarationsMissingError(
            "a test mode checks targets against the project's declarations, and none are known: set "
            f"{CONFIG_ENV} to the configuration module (a path to uwsgicfg.py, or a module name such as "
            f"shop.uwsgicfg), or pass config=..., or set {RECORD_ENV}")
    outbox = Outbox()
    previous = _instance.local_send, _instance._cache, _instance.loaded_from  # a mode within a mode
    _instance.local_send = _recorder(outbox, run)
    _instance.reset(declarations, source)
    _tasks.RETURNED.clear()
    try:
        yield outbox
    finally:
        _instance.local_send = previous[0]
        _instance.reset(previous[1], previous[2])


def capture(config: str | None = None) -> AbstractContextManager[Outbox]:
    """Record offloaded calls and sent messages instead of running them; targets are checked
    against the declarations.

    :param config: The configuration module whose declarations apply: a path to ``uwsgicfg.py``
        or a module name, optionally ``:SECTION``; default ``UWSGICONF_MULES_CONFIG`` (or the
        ``UWSGICONF_MULES`` record).
    :returns: A context manager giving the :class:`Outbox`.
    :raises DeclarationsMissingError: when no declarations are known.
    :raises MulesConfigurationError: when the configuration module cannot be loaded.
    :raises UsageError: under uWSGI.
    """
    return _mode(config, run=False)


def eager(config: str | None = None) -> AbstractContextManager[Outbox]:
    """Run offloaded calls at once, in the caller, as a mule would; a task's exception propagates
    to the code that offloaded it. Calls and sent messages are recorded too.

    :param config: As for :func:`capture`.
    :returns: A context manager giving the :class:`Outbox`.
    :raises DeclarationsMissingError: when no declarations are known.
    :raises MulesConfigurationError: when the configuration module cannot be loaded.
    :raises UsageError: under uWSGI.
    """
    return _mode(config, run=True)
