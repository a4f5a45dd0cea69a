"""The runtime API: ``Mule``, ``Farm`` and ``mule_offload``, used by application code in uWSGI.

The runtime reads the declarations record that the builders wrote into the config, so the
farms and mules it knows are exactly the ones declared. What it guarantees:

* Targets are checked against the declarations before uWSGI is called: an undeclared mule id or
  farm name raises :class:`~uwsgiconf_mules.errors.UnknownTargetError` (a ``ValueError``),
  listing what is declared -- at decoration time when the declarations are known.
* A send that returns has been queued; a full queue is waited on for at most the declared
  ``send_timeout`` (and all the sends of one request together wait no longer), then
  :class:`~uwsgiconf_mules.errors.DeliveryError` is raised; ``f.nowait(...)`` never waits;
  ``await f.aoffload(...)`` waits on the running event loop (a farm routed to RQ: in a thread of
  the loop's executor). Under ``--gevent``, a waiting sender lets the worker's other requests run
  (see the docs' loop engines page for the others).
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

import time

from ..declarations import FarmSpec as _FarmSpec
from ..errors import NotInMuleError, UnknownTargetError, UsageError
from ..protocol import envelope as _protocol
from ..protocol.limits import socket_message_limit
from . import instance as _instance, offload as _offload, policy as _policy, tasks as _tasks
from .handles import Result as Result
from .policy import current_attempt as current_attempt
from .sending import (
    Route as _Route,
    as_bytes as _as_bytes,
    check_mule_id as _check_mule_id,
    missing_script as _missing_script,
    mule_limit as _mule_limit,
    recompile as _recompile,
)

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: workers and mules import this module, keep it cheap
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, ParamSpec, TypeVar, Unpack, overload

    _P = ParamSpec("_P")
    _R = TypeVar("_R")

    from .protocols import OffloadedFunction as OffloadedFunction, ResultFunction as ResultFunction

__all__ = ["Farm", "Mule", "Result", "TypeMuleFarm", "current_attempt", "mule_offload", "socket_message_limit"]


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
        uwsgi = _instance.require_mule("Mule.get_message()")
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
                return _instance.as_text(data)

    if TYPE_CHECKING:
        @overload
        def offload(self, *, result_ttl: None = None, **options: Unpack[_policy.Options],
                    ) -> Callable[[Callable[_P, _R]], OffloadedFunction[_P, _R]]: ...
        @overload
        def offload(self, *, result_ttl: float, **options: Unpack[_policy.Options],
                    ) -> Callable[[Callable[_P, _R]], ResultFunction[_P, _R]]: ...

    def offload(self, *, result_ttl: float | None = None, **options: Unpack[_policy.Options]) -> Any:
        """Decorator: calls of the decorated function run in this mule.

        .. code-block:: python

            @Mule(1).offload()
            def for_mule(*args, **kwargs):
                ...  # runs in mule 1

        :param result_ttl: As for :func:`mule_offload`.
        :param options: The task's options (``retries=``, ...: see :func:`mule_offload`).
        """
        return mule_offload(self, result_ttl=result_ttl, **options)

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
            return _offload.remote_route(self.name, backend, declarations.send_timeout)
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
        uwsgi = _instance.require_mule("Farm.get_message()")
        mule_id = int(uwsgi.mule_id())
        declarations = _instance.declarations()
        in_farm = declarations.farms_of(mule_id) if declarations else bool(uwsgi.in_farm())
        if not in_farm:
            raise NotInMuleError(f"Farm.get_message(): mule {mule_id} belongs to no farm")
        while True:
            message = uwsgi.farm_get_msg()
            data = None if message is None else _tasks.receive(message, strict=False)
            if data is not None:
                return _instance.as_text(data)

    if TYPE_CHECKING:
        @overload
        def offload(self, *, result_ttl: None = None, **options: Unpack[_policy.Options],
                    ) -> Callable[[Callable[_P, _R]], OffloadedFunction[_P, _R]]: ...
        @overload
        def offload(self, *, result_ttl: float, **options: Unpack[_policy.Options],
                    ) -> Callable[[Callable[_P, _R]], ResultFunction[_P, _R]]: ...

    def offload(self, *, result_ttl: float | None = None, **options: Unpack[_policy.Options]) -> Any:
        """Decorator: calls of the decorated function run in one mule of this farm.

        .. code-block:: python

            @Farm('myfarm').offload()
            def for_farm(*args, **kwargs):
                ...  # runs in any one mule of farm `myfarm`

        :param result_ttl: As for :func:`mule_offload`.
        :param options: The task's options (``retries=``, ...: see :func:`mule_offload`).
        """
        return mule_offload(self, result_ttl=result_ttl, **options)

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


if TYPE_CHECKING:
    @overload
    def mule_offload(mule_or_farm: TypeMuleFarm = None, *, result_ttl: None = None, **options: Unpack[_policy.Options],
                     ) -> Callable[[Callable[_P, _R]], OffloadedFunction[_P, _R]]: ...
    @overload
    def mule_offload(mule_or_farm: TypeMuleFarm = None, *, result_ttl: float, **options: Unpack[_policy.Options],
                     ) -> Callable[[Callable[_P, _R]], ResultFunction[_P, _R]]: ...


def mule_offload(mule_or_farm: TypeMuleFarm = None, *, result_ttl: float | None = None,
                 **options: Unpack[_policy.Options]) -> Any:
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
    :param result_ttl: Seconds each call's result is kept: the call returns its ``Result`` (read by id
        in any process with ``Result.get(id)``) instead of True; needs ``set_mules_params(results=...)``
        (a farm routed to RQ: RQ keeps it). None (the default): no result, today's path and cost.
    :param options: The task's lifecycle, keyword-only (:class:`~uwsgiconf_mules.runtime.policy.Options`:
        ``retries``, ``retry_for``, ``retry_backoff``, ``soft_time_limit``, ``time_limit``, ``acks_late``...).
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
        return _offload.build(func, target, dict(options) if result_ttl is None else {"result_ttl": result_ttl,
                                                                                       **options})

    return decorator


