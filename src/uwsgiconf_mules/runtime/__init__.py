"""The runtime API: ``Mule``, ``Farm`` and ``mule_offload``, used by application code in uWSGI.

The runtime reads the declarations record that the builders wrote into the config, so the
farms and mules it knows are exactly the ones declared. What it guarantees:

* Targets are checked against the declarations before uWSGI is called: an undeclared mule id or
  farm name raises :class:`~uwsgiconf_mules.errors.UnknownTargetError` (a ``ValueError``),
  listing what is declared -- at decoration time when the declarations are known.
* A send that returns has been queued; a full queue is waited on for at most the declared
  ``send_timeout`` (and all the sends of one request together wait no longer), then
  :class:`~uwsgiconf_mules.errors.DeliveryError` is raised; ``f.nowait(...)`` never waits;
  ``await f.aoffload(...)`` waits on the running event loop. Under ``--gevent`` and ``--async``
  with ``--ugreen``, a waiting sender lets the worker's other requests run.
* A message larger than the target reads whole is refused at the call site with
  :class:`~uwsgiconf_mules.errors.PayloadError`; so are arguments that cannot be pickled.
* Offloaded functions are registered by ``module:qualname``; dispatch mules run them.
* Outside uWSGI (scripts, tests, development servers) an offloaded call runs inline, after the
  same serialisation and size checks.

How a call travels: ``mule_offload`` registers the function (:mod:`.tasks`) and prepares its
envelope encoder (:mod:`uwsgiconf_mules.protocol.envelope`); a call encodes its arguments and sends
the envelope through ``uwsgi.mule_msg`` to the target's queue, waiting for room when it is full
(:mod:`.sending`); a dispatch mule reads its queues (:mod:`uwsgiconf_mules.mule.queues`) in its loop
(:mod:`uwsgiconf_mules.mule.loop`) and runs the call. A farm routed to an offload backend
(declared with ``set_offload_backends``, see :mod:`uwsgiconf_mules.declarations.backends`) has no
mules: its route's send function hands the call to the engine instead (RQ:
:mod:`uwsgiconf_mules.contrib.rq.sender`), inside uWSGI and outside with a declarations record;
outside uWSGI with the declarations of ``UWSGICONF_MULES_CONFIG`` (a development server, tests),
or in a test mode, the call stays here after the engine's argument check.

Importing this module has no side effects: it installs no hook and imports neither jinja2,
click nor uwsgiconf's configuration machinery.
"""

from __future__ import annotations

import functools
import sys
import time

from ..declarations import FarmSpec as _FarmSpec
from ..declarations.backends import ENGINES as _ENGINES
from ..errors import DeliveryError as _DeliveryError, MulesRuntimeError, NotInMuleError, UnknownTargetError, UsageError
from ..protocol import envelope as _protocol
from ..protocol.limits import socket_message_limit
from . import instance as _instance, metrics as _metrics, sending as _sending, tasks as _tasks
from .sending import (
    Route as _Route,
    adeliver as _adeliver,
    as_bytes as _as_bytes,
    check_mule_id as _check_mule_id,
    deliver as _deliver,
    missing_script as _missing_script,
    mule_limit as _mule_limit,
    recompile as _recompile,
)

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: workers and mules import this module, keep it cheap
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, ParamSpec, Protocol, TypeVar

    from ..declarations.backends import Backend as _Backend

    _P = ParamSpec("_P")
    _R = TypeVar("_R")

    class OffloadedFunction(Protocol[_P, _R]):
        """What ``mule_offload`` returns (for type annotations; import it under TYPE_CHECKING).

        Calling it queues a call of the wrapped function for ``target`` and returns True once
        queued; outside uWSGI it runs the call here, after the same checks. Type checkers check
        its arguments against the wrapped function's parameters. It keeps the wrapped function's
        ``__name__``, ``__qualname__``, ``__doc__``, ``__module__``; ``__wrapped__(...)`` runs the
        function here, synchronously, and returns its result.
        """

        key: str
        """The task key, ``module:qualname``."""
        target: Mule | Farm
        """The ``Mule`` or ``Farm`` calls are sent to."""
        __wrapped__: Callable[_P, _R]

        def __call__(self, *args: _P.args, **kwargs: _P.kwargs) -> bool: ...

        def nowait(self, *args: _P.args, **kwargs: _P.kwargs) -> bool:
            """Queue a call as calling the function does, but never wait: a full queue raises
            ``DeliveryError`` at once."""

        async def aoffload(self, *args: _P.args, **kwargs: _P.kwargs) -> bool:
            """Queue a call as calling the function does, from a coroutine: a full queue is waited
            on by sleeping on the running event loop (at most ``send_timeout``, then
            ``DeliveryError``), never by blocking it."""

__all__ = ["Farm", "Mule", "TypeMuleFarm", "mule_offload", "socket_message_limit"]


def _require_mule(what: str) -> Any:
    uwsgi = _instance.uwsgi
    if uwsgi is None or not uwsgi.mule_id():
        raise NotInMuleError(f"{what} can only be called in a uWSGI mule")
    return uwsgi


def _as_text(message: bytes) -> str:
    return str(message.decode("utf-8", "surrogateescape"))


class Mule:
    """A uWSGI mule, by id.

    Declare mules before using this, e.g. ``section.workers.set_mules_params(mules=3)``.

    :param id: Mule id; ids start at 1. When the declarations are known (always inside uWSGI),
        an undeclared id raises :class:`~uwsgiconf_mules.errors.UnknownTargetError`.
    """

    __slots__ = ("id",)

    def __init__(self, id: int) -> None:
        self.id = _check_mule_id(id, _instance.declarations())

    def __repr__(self) -> str:
        return f"Mule({self.id})"

    def __str__(self) -> str:
        return str(self.id)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mule):
            return NotImplemented
        return self.id == other.id

    def __hash__(self) -> int:
        return hash(("mule", self.id))

    def _route(self) -> _Route:
        declarations = _instance.required_declarations()
        _check_mule_id(self.id, declarations)
        timeout = declarations.send_timeout if declarations else 0.0
        return _Route(self.id, f"mule {self.id}", _mule_limit(declarations, self.id), timeout,
                      _missing_script(declarations, (self.id,)))

    @classmethod
    def get_mules(cls) -> list[Mule]:
        """All declared mules, in id order (empty outside uWSGI when nothing is declared).

        :raises DeclarationsMissingError: under uWSGI, when the config has no declarations.
        """
        declarations = _instance.required_declarations()
        return [cls(i) for i in range(1, declarations.mule_count + 1)] if declarations else []

    @classmethod
    def get_current_id(cls) -> int:
        """The id of the current mule; 0 when not in a mule."""
        return _tasks.current_mule()

    @classmethod
    def get_current(cls) -> Mule | None:
        """The current mule, or None when not in a mule."""
        mule_id = cls.get_current_id()
        return cls(mule_id) if mule_id else None

    @classmethod
    def get_message(
        cls,
        signals: bool = True,
        farms: bool = False,
        buffer_size: int = 65536,
        timeout: int = -1,
    ) -> str:
        """Block until a message for this mule arrives and return it.

        Offloaded calls that arrive meanwhile are run, not returned. Usable from several threads
        of a programmed mule.

        :param signals: Whether uWSGI signals sent to this mule are handled while waiting
            (their handlers run and the wait goes on).
        :param farms: Whether messages to the farms of this mule are read too.
        :param buffer_size: Largest message read whole, in bytes; a longer one is truncated.
        :param timeout: Seconds to wait; -1 waits forever. On timeout, returns ``''``. uWSGI
            waits whole seconds, so a wait may end up to a second after the timeout.
        :returns: The message, decoded as UTF-8 (undecodable bytes are kept as surrogates, so
            ``message.encode('utf-8', 'surrogateescape')`` gives the original bytes back).
        :raises NotInMuleError: when not called in a mule.
        """
        uwsgi = _require_mule("Mule.get_message()")
        deadline = None if timeout < 0 else time.monotonic() + timeout
        while True:
            wait = -1
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return ""
                wait = int(-(-left // 1))  # uWSGI waits whole seconds: round up, never spin at 0
            # uWSGI's own flag is inverted: signals=False makes it poll and handle signals.
            message = uwsgi.mule_get_msg(not signals, farms, buffer_size, wait)
            if not message:  # None: a uWSGI signal was handled; b"": timed out, or interrupted
                continue
            data = _tasks.receive(message, strict=False)
            if data is not None:
                return _as_text(data)

    def offload(self) -> Callable[[Callable[_P, _R]], OffloadedFunction[_P, _R]]:
        """Decorator: calls of the decorated function run in this mule.

        .. code-block:: python

            @Mule(1).offload()
            def for_mule(*args, **kwargs):
                ...  # runs in mule 1
        """
        return mule_offload(self)

    def send(self, message: str | bytes) -> bool:
        """Send a message to this mule; a programmed mule reads it with ``get_message``.

        The bytes arrive exactly as given, and are never run, whatever they contain. A dispatch
        mule hands them to the ``uwsgi.mule_msg_hook`` another library installed, or drops them
        with a log line.

        :param message: Text (sent as UTF-8) or bytes.
        :returns: True once queued.
        :raises UnknownTargetError: if the mule is not declared (or no mules are).
        :raises PayloadError: if the message is larger than the mule reads whole.
        :raises DeliveryError: if the queue stayed full until the send timeout.
        """
        return self._route().send(_protocol.data(_as_bytes(message)), "message")


class Farm:
    """A uWSGI mule farm, by name.

    Declare farms before using this, e.g.
    ``section.workers.set_mules_params(farms=section.workers.mule_farm('myfarm', 2))``.

    :param name: Farm name. When the declarations are known (always inside uWSGI), an
        undeclared name raises :class:`~uwsgiconf_mules.errors.UnknownTargetError`. A farm
        routed to an offload backend has no mules; calls offloaded to it become the engine's jobs.
    :param mules: Mule ids of the farm. Optional: the declared ones are used; given ids that
        differ from the declared ones raise :class:`~uwsgiconf_mules.errors.UnknownTargetError`.
    """

    __slots__ = ("mules", "name")

    def __init__(self, name: str, mules: list[int] | tuple[int, ...] | None = None) -> None:
        if not isinstance(name, str) or not name:
            raise UnknownTargetError(f"farm name must be a non-empty string, not {name!r}", target=name)
        declarations = _instance.declarations()
        ids = None if mules is None else [_check_mule_id(mule, declarations) for mule in mules]
        if declarations is not None:
            spec = declarations.get_farm(name)
            if spec is None and declarations.get_backend(name) is not None:
                if ids:
                    raise UnknownTargetError(
                        f"farm {name!r} is routed to an offload backend and has no mules, not {ids}", target=name)
                spec = _FarmSpec(name, ())
            if spec is None:
                raise UnknownTargetError(
                    f"farm {name!r} is not declared; declared: {declarations.describe()}{_recompile()}", target=name)
            if ids is not None and sorted(ids) != sorted(spec.mules):
                raise UnknownTargetError(
                    f"farm {name!r} is declared with mules {list(spec.mules)}, not {ids}", target=name)
            ids = list(spec.mules)
        self.name = name
        self.mules: tuple[Mule, ...] = tuple(Mule(mule) for mule in ids or ())

    def __repr__(self) -> str:
        return f"Farm({self.name!r}, mules={[mule.id for mule in self.mules]})"

    def __str__(self) -> str:
        return f"{self.name}: {', '.join(map(str, self.mules))}"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Farm):
            return NotImplemented
        return (self.name, self.mules) == (other.name, other.mules)

    def __hash__(self) -> int:
        return hash(("farm", self.name))

    def _route(self) -> _Route:
        declarations = _instance.required_declarations()
        backend = declarations.get_backend(self.name) if declarations is not None else None
        if declarations is None:
            limit, timeout, refused = socket_message_limit(None), 0.0, None
        elif backend is not None:
            return _remote_route(self.name, backend, declarations.send_timeout)
        else:
            spec = declarations.get_farm(self.name)
            if spec is None:
                raise UnknownTargetError(
                    f"farm {self.name!r} is not declared; declared: {declarations.describe()}{_recompile()}",
                    target=self.name)
            limit = min(_mule_limit(declarations, mule) for mule in spec.mules)
            timeout = declarations.send_timeout
            refused = _missing_script(declarations, spec.mules)
        return _Route(self.name.encode(), f"farm {self.name!r}", limit, timeout, refused)

    @classmethod
    def get_farms(cls) -> list[Farm]:
        """All declared farms of mules, in declared order, with their mules (farms routed to an
        offload backend are no uWSGI farms, and are not listed).

        .. code-block:: python

            farms = Farm.get_farms()
            first_farm_first_mule = farms[0].mules[0]

        :raises DeclarationsMissingError: under uWSGI, when the config has no declarations.
        """
        declarations = _instance.required_declarations()
        if declarations is None:
            return []
        return [cls(spec.name) for spec in declarations.farms]

    @property
    def is_mine(self) -> _IsMine:
        """``farm.is_mine()``: whether the current process is a mule of this farm (False outside
        mules).

        A method, as documented. uwsgiconf 2.4 made it a property: code written for it
        (``if farm.is_mine:``) raises :class:`~uwsgiconf_mules.errors.UsageError` here instead of
        always being true.
        """
        return _IsMine(self)

    @classmethod
    def get_message(cls) -> str:
        """Block until a message to a farm of the current mule arrives and return it.

        Offloaded calls that arrive meanwhile are run, not returned. Messages are read with
        uWSGI's fixed 64 KiB buffer.

        :returns: The message, decoded as UTF-8 (undecodable bytes kept as surrogates).
        :raises NotInMuleError: when not in a mule, or in a mule that belongs to no farm (uWSGI
            would wait forever).
        """
        uwsgi = _require_mule("Farm.get_message()")
        mule_id = int(uwsgi.mule_id())
        declarations = _instance.declarations()
        in_farm = declarations.farms_of(mule_id) if declarations else bool(uwsgi.in_farm())
        if not in_farm:
            raise NotInMuleError(f"Farm.get_message(): mule {mule_id} belongs to no farm")
        while True:
            message = uwsgi.farm_get_msg()
            data = None if message is None else _tasks.receive(message, strict=False)
            if data is not None:
                return _as_text(data)

    def offload(self) -> Callable[[Callable[_P, _R]], OffloadedFunction[_P, _R]]:
        """Decorator: calls of the decorated function run in one mule of this farm.

        .. code-block:: python

            @Farm('myfarm').offload()
            def for_farm(*args, **kwargs):
                ...  # runs in any one mule of farm `myfarm`
        """
        return mule_offload(self)

    def send(self, message: str | bytes) -> bool:
        """Send a message to this farm of programmed mules; exactly one of them receives it, as
        given, and never runs it.

        :param message: Text (sent as UTF-8) or bytes.
        :returns: True once queued.
        :raises UnknownTargetError: if the farm is not declared.
        :raises PayloadError: if the message is larger than the farm's mules read whole.
        :raises DeliveryError: if the queue stayed full until the send timeout.
        :raises UsageError: if the farm has dispatch mules: they run offloaded calls and would
            drop a plain message; or if the farm is routed to an offload backend, which runs
            offloaded calls only.
        """
        declarations = _instance.declarations()
        if declarations is not None and declarations.get_backend(self.name) is not None:
            raise UsageError(f"Farm({self.name!r}).send(): farm {self.name!r} is routed to an offload backend, "
                             "which runs offloaded calls only; offload a function to it")
        if declarations is not None:
            spec = declarations.get_farm(self.name)
            dispatchers = [i for i in (spec.mules if spec else ()) if i in declarations.dispatchers]
            if dispatchers:
                raise UsageError(
                    f"Farm({self.name!r}).send(): farm {self.name!r} has dispatch mules "
                    f"({', '.join(map(str, dispatchers))}), which run offloaded calls and would drop a plain "
                    "message; send to a farm of programmed mules only, or offload a function to this farm")
        return self._route().send(_protocol.data(_as_bytes(message)), "message")


class _IsMine:
    """``Farm.is_mine``: call it; its truth value is refused (see :attr:`Farm.is_mine`)."""

    __slots__ = ("_farm",)

    def __init__(self, farm: Farm) -> None:
        self._farm = farm

    def __call__(self) -> bool:
        mule_id = Mule.get_current_id()
        return any(mule.id == mule_id for mule in self._farm.mules) if mule_id else False

    def __bool__(self) -> bool:
        raise UsageError(f"Farm.is_mine is a method: write {self._farm!r}.is_mine() (uwsgiconf 2.4 made it "
                         "a property; without the call, the condition would always be true)")


TypeMuleFarm = int | str | Mule | Farm | None
"""What ``mule_offload`` accepts as a target."""


_CO_GENERATORS = 0x20 | 0x200  # inspect.CO_GENERATOR | inspect.CO_ASYNC_GENERATOR


def _unrunnable(func: Callable[..., Any], module: str, qualname: str) -> str:
    """Why a mule could not run ``func`` from its key; empty when it can."""
    if "<locals>" in qualname or "<lambda>" in qualname:
        return ("offloaded functions must be defined at module level (or as class attributes), so that a "
                "mule can find them by name")
    loaded = sys.modules.get(module)
    if module == "__main__" or module.startswith("uwsgi_file_") or (
            loaded is not None and getattr(loaded, "__spec__", None) is None):
        return (f"module {module!r} cannot be imported by name in a mule (a script run as __main__, or "
                "uWSGI's --wsgi-file): define offloaded functions in a module of your project that is "
                "imported by name (and point uWSGI at it with --module)")
    code = getattr(func, "__code__", None)
    if code is not None and code.co_flags & _CO_GENERATORS:
        return "a generator function would only create a generator in the mule, and never run"
    return ""


def _remote_route(name: str, backend: _Backend, timeout: float) -> _Route:
    """The route of a farm routed to an offload backend: no size limit of a mule queue, the
    backend's own send function (its engine's module is imported here, only for such a farm) and
    its check of the arguments. Outside uWSGI, when the calls do not go to the engine (see
    :func:`_engine_bypassed`), no send function is made (nor the engine's client imported)."""
    from importlib import import_module

    engine = import_module(_ENGINES[backend.scheme])
    label = f"farm {name!r} ({backend.where()})"
    check = None
    if backend.serializer == "json":  # the engine's sender refuses what JSON would not give back
        check_json = engine.check_json

        def check(key: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            check_json(key, args, kwargs, label)

    sender = None if _engine_bypassed() else engine.sender(backend, label, timeout)
    return _Route(name.encode(), label, sys.maxsize, timeout, sender=sender, check=check)


def _engine_bypassed() -> bool:
    """Whether calls to farms routed to an offload backend stay in this process: outside uWSGI,
    in a test mode, or when the declarations come from a configuration module
    (``UWSGICONF_MULES_CONFIG``: a development server, tests) rather than from a record (a
    script, a worker host), so that checking the targets never queues real jobs."""
    return _instance.uwsgi is None and (_instance.local_send is not None or _instance.loaded_from is not None)


def _checked(check: Callable[[str, tuple[Any, ...], dict[str, Any]], None],
             send: Callable[[bytes, int | bytes], bool]) -> Callable[[bytes, int | bytes], bool]:
    """``send``, after the check of a routed farm's engine (for its calls that stay here)."""

    def checked(message: bytes, dest: int | bytes) -> bool:
        key, args, kwargs = _protocol.decode(message)
        check(key.decode(), args, kwargs)
        return send(message, dest)

    return checked


def _target_ids(target: Mule | Farm) -> tuple[int, ...]:
    return (target.id,) if isinstance(target, Mule) else tuple(mule.id for mule in target.mules)


def _run_inline(message: bytes, dest: int | bytes) -> bool:
    """Outside uWSGI, an offloaded call runs here, from its encoded message."""
    _tasks.run(message)
    return True


def _offloaded(func: Callable[_P, _R], target: Mule | Farm) -> OffloadedFunction[_P, _R]:  # noqa: PLR0915 - closures
    """Build what ``mule_offload`` returns: a function that queues calls of ``func`` for ``target``.

    A closure rather than an object with ``__call__``: this is the hot path of every offload.
    """
    qualname = getattr(func, "__qualname__", None)
    module = getattr(func, "__module__", None)
    if not callable(func) or not qualname or not module:
        raise MulesRuntimeError(f"mule_offload() needs a function, not {func!r}")
    problem = _unrunnable(func, module, qualname)
    if problem:
        raise MulesRuntimeError(f"cannot offload {module}.{qualname}: {problem}")
    key = f"{module}:{qualname}"
    encode = _protocol.encoder(key)
    _tasks.register(key, func)
    # Where calls go, resolved once (at decoration when the declarations are known, which also
    # checks the target; otherwise at the first call) and kept in closure cells for the hot path.
    route: _Route | None = None
    limit = -1
    dest: int | bytes = 0
    send: Callable[[bytes, int | bytes], bool] = _run_inline
    # With the counters on (see _metrics): the target's `queued` count (otherwise a list nobody
    # reads), and whether the function returned counts inline (decided at decoration, where the
    # declarations are known under uWSGI; otherwise its sends are wrapped by _metrics.counting).
    count: list[int] = [0, 0]
    counts_inline = _instance.declarations() is not None and _metrics.enabled()

    def resolve() -> _Route:
        nonlocal route, limit, dest, send, count
        if route is None:
            route = target._route()
            if _sending.spool_problem is not None and route.sender is None and not route.refused:
                refused = _sending.spool_refusal(_instance.declarations(), _target_ids(target))
                if refused is not None:
                    route = _Route(route.dest, route.label, route.limit, route.timeout, refused)
            limit, dest = route.limit, route.dest
            uwsgi = _instance.uwsgi
            if uwsgi is None and _instance.local_send is not None:  # a test mode (uwsgiconf_mules.testing)
                send = _instance.local_send  # records or runs calls its own way, routed farms' calls too
            elif route.sender is not None:  # a farm routed to an offload backend
                send = route.sender
            else:
                send = _run_inline if uwsgi is None else route.refuse if route.refused else uwsgi.mule_msg
            if route.check is not None and send is not route.sender:  # kept here: the engine's check all the same
                send = _checked(route.check, send)
            count = [0, 0]
            if uwsgi is not None and not route.refused and route.sender is None and _metrics.enabled():
                if counts_inline:
                    count = _metrics.cell(_metrics.target_name(dest))
                    send = _starting(send)
                else:
                    send = _metrics.counting(send, dest)
            if uwsgi is not None and route.sender is None and not _sending._watching:
                send = _watching(send)
        return route

    def _watching(raw: Callable[[bytes, int | bytes], bool]) -> Callable[[bytes, int | bytes], bool]:
        """``raw``, starting this process's spool watcher first (see ``_sending.watch_spool``);
        replaced by ``raw`` (or by a refusal, when the spool cannot keep calls) once it runs."""

        def first(message: bytes, to: int | bytes) -> bool:
            nonlocal send
            if _sending.watch_spool():
                if send is first:
                    send = raw
                return send(message, to)  # what the watcher's first check left
            return raw(message, to)  # the master: no watcher

        return first

    def refresh() -> None:
        """Resolve the route again (the spool watcher found a change), without ever passing
        through an unresolved state that a concurrent call could see."""
        nonlocal route
        if route is not None:
            route = None
            resolve()

    def _starting(raw: Callable[[bytes, int | bytes], bool]) -> Callable[[bytes, int | bytes], bool]:
        """``raw``, starting this process's flushing thread first; replaced by ``raw`` once the
        thread runs (in a worker or a mule: never in the master)."""

        def first(message: bytes, to: int | bytes) -> bool:
            nonlocal send
            if _metrics.start():
                send = raw
            return raw(message, to)

        return first

    def forget() -> None:
        nonlocal route, limit, send
        route, limit, send = None, -1, _run_inline

    if _instance.declarations() is not None:
        resolve()

    def offloaded(*args: Any, **kwargs: Any) -> bool:
        message = encode(args, kwargs)
        if len(message) > limit:  # also true before the route is resolved (limit -1)
            resolve().check_size(len(message), key)
        if send(message, dest):
            return True
        current = resolve()
        return _deliver(message, dest, f"{key} to {current.label}", current.timeout)

    def offloaded_counting(*args: Any, **kwargs: Any) -> bool:
        # offloaded(), counting inline what it queued (a wrapper around the send would cost a
        # call more per offload); calls queued after a wait are counted by _deliver.
        message = encode(args, kwargs)
        if len(message) > limit:
            resolve().check_size(len(message), key)
        if send(message, dest):
            count[0] += 1
            return True
        current = resolve()
        return _deliver(message, dest, f"{key} to {current.label}", current.timeout)

    def nowait(*args: Any, **kwargs: Any) -> bool:
        message = encode(args, kwargs)
        if len(message) > limit:
            resolve().check_size(len(message), key)
        if send(message, dest):
            count[0] += 1
            return True
        raise _DeliveryError(f"{key} to {resolve().label}: the queue is full; the message ({len(message)} bytes) "
                             "was not sent (nowait: no wait for room)", target=dest)

    async def aoffload(*args: Any, **kwargs: Any) -> bool:
        message = encode(args, kwargs)
        if len(message) > limit:
            resolve().check_size(len(message), key)
        if send(message, dest):
            count[0] += 1
            return True
        current = resolve()
        return await _adeliver(message, dest, f"{key} to {current.label}", current.timeout)

    if counts_inline:
        offloaded = offloaded_counting

    functools.update_wrapper(offloaded, func)
    offloaded.nowait = nowait  # type: ignore[attr-defined]
    offloaded.aoffload = aoffload  # type: ignore[attr-defined]
    offloaded.key = key  # type: ignore[attr-defined]
    offloaded.target = target  # type: ignore[attr-defined]
    offloaded._forget = forget  # type: ignore[attr-defined]
    offloaded._refresh = refresh  # type: ignore[attr-defined]
    _instance.remember(offloaded)  # type: ignore[arg-type]
    return offloaded  # type: ignore[return-value]


def mule_offload(mule_or_farm: TypeMuleFarm = None) -> Callable[[Callable[_P, _R]], OffloadedFunction[_P, _R]]:
    """Decorator: calls of the decorated function run in a mule or in a farm.

    .. code-block:: python

        @mule_offload('fast')        # a farm name, a mule id, a Mule or a Farm
        def resize(image_id):
            ...

        resize(42)  # queued for farm `fast`; returns True
        resize.nowait(42)  # the same, but a full queue raises DeliveryError at once
        await resize.aoffload(42)  # from a coroutine: a full queue is waited on without blocking its loop

    :param mule_or_farm: A mule id (int), a farm name (str), a ``Mule`` or a ``Farm``. If not
        set, calls go to the first mule.
    :raises UnknownTargetError: when the declarations are known and the target is not declared.
    """
    target: Mule | Farm
    if mule_or_farm is None:
        target = Mule(1)
    elif isinstance(mule_or_farm, (Mule, Farm)):
        target = mule_or_farm
    elif isinstance(mule_or_farm, str):
        target = Farm(mule_or_farm)
    elif isinstance(mule_or_farm, int) and not isinstance(mule_or_farm, bool):
        target = Mule(mule_or_farm)
    else:
        raise UnknownTargetError(
            f"offload target must be a mule id, a farm name, a Mule or a Farm, not {mule_or_farm!r}",
            target=mule_or_farm)

    def decorator(func: Callable[_P, _R]) -> OffloadedFunction[_P, _R]:
        return _offloaded(func, target)

    return decorator


