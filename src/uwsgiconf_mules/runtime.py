"""The runtime API: ``Mule``, ``Farm`` and ``mule_offload``, used by application code in uWSGI.

The runtime reads the declarations record that the builders wrote into the config (the
``UWSGICONF_MULES`` environment variable, see :mod:`uwsgiconf_mules.declarations`), so the
farms and mules it knows are exactly the ones declared. What it guarantees:

* Targets are checked against the declarations before uWSGI is called: an undeclared mule id or
  farm name raises :class:`~uwsgiconf_mules.errors.UnknownTargetError` (a ``ValueError``),
  listing what is declared -- at decoration time when the declarations are known.
* Messages go through ``uwsgi.mule_msg`` (to a farm by its name as bytes); a sender that finds
  a queue full waits until it has room again (see :func:`_wait_for_room`) and raises
  :class:`~uwsgiconf_mules.errors.DeliveryError` when the declared ``send_timeout`` runs out.
  A send that returns has been queued.
* A message larger than the target reads whole is refused at the call site with
  :class:`~uwsgiconf_mules.errors.PayloadError`; so are arguments that cannot be pickled.
* Offloaded functions are registered by ``module:qualname``.
* Dispatch mules run :func:`mule_loop` (the builders declare them as
  ``mule = .../uwsgiconf_mules/dispatch_mule.py``): it reads its own queue and its farms' queues
  (directly once found, see :class:`_QueueFinder`), runs offloaded calls (importing a task's
  module by name when the mule has not imported it, as under ``--lazy-apps``), logs a failing
  task with its key and traceback and goes on, and hands every message that is not an envelope
  to ``uwsgi.mule_msg_hook`` when another library installed one (uwsgidecorators, for
  instance), whether it was imported before or after us.
* Outside uWSGI (scripts, tests, development servers) an offloaded call runs inline, after the
  same serialisation and size checks.

Importing this module has no side effects: it installs no hook and imports neither jinja2,
click nor uwsgiconf's configuration machinery.
"""

from __future__ import annotations

import _socket  # the C module only: ``socket`` imports selectors, enum and more
import functools
import importlib
import mmap
import os
import stat
import time
from marshal import dumps as _marshal, loads as _unmarshal
from pickle import dumps as _dumps, loads as _loads

from .declarations import PROGRAMMED_READ_LIMIT, RECORD_ENV, Declarations, parse_record
from .errors import (
    DeclarationsMissingError,
    DeliveryError,
    MulesRuntimeError,
    NotInMuleError,
    PayloadError,
    UnknownTargetError,
)
from .protocol import (
    ARGS,
    KEY_START,
    KWARGS,
    MARSHAL,
    MARSHAL_SAFE,
    PICKLE_PROTOCOL,
    PROBE,
    decode,
    task_header,
)

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: workers and mules import this module, keep it cheap
if TYPE_CHECKING:
    import logging
    from collections.abc import Callable
    from typing import Any, Protocol, TypeVar

    _F = TypeVar("_F", bound=Callable[..., Any])

    class OffloadedFunction(Protocol):
        """What ``mule_offload`` returns (for type annotations; import it under TYPE_CHECKING).

        Calling it queues a call of the wrapped function for ``target`` and returns True once
        queued; outside uWSGI it runs the call here, after the same checks. It keeps the wrapped
        function's ``__name__``, ``__qualname__``, ``__doc__``, ``__module__``; ``__wrapped__(...)``
        runs the function here, synchronously.
        """

        key: str
        """The task key, ``module:qualname``."""
        target: Mule | Farm
        """The ``Mule`` or ``Farm`` calls are sent to."""
        __wrapped__: Callable[..., Any]

        def __call__(self, *args: Any, **kwargs: Any) -> bool: ...

try:  # Only importable inside a uWSGI process.
    import uwsgi as _uwsgi
except ImportError:  # pragma: no cover - depends on the process
    _uwsgi = None

__all__ = [
    "Farm", "Mule", "TypeMuleFarm", "mule_loop", "mule_offload", "socket_message_limit",
]

_MISSING: Any = object()
_declarations_cache: Any = _MISSING
_socket_limits: dict[int | None, int] = {}
_registry: dict[bytes, Callable[..., Any]] = {}  # task key -> function
# Envelope head (before the first NUL) of a positional-only call -> (function, decoder of the body).
_heads: dict[bytes, tuple[Callable[..., Any], Callable[[memoryview], Any]]] = {}

_logger: logging.Logger | None = None
_harakiri = 0  # seconds; set by mule_loop() from the declarations
_queues: _Queues | None = None  # the queues of this dispatch mule, set by mule_loop()

_SOCK_MIN_SNDBUF = 4608
_SEQPACKET_OVERHEAD = 32  # Linux refuses an AF_UNIX datagram larger than sk_sndbuf - 32.


def _log() -> logging.Logger:
    """The ``uwsgiconf_mules`` logger; logging is imported on first use (error paths only)."""
    global _logger
    if _logger is None:
        import logging

        _logger = logging.getLogger("uwsgiconf_mules")
    return _logger


# --- declarations --------------------------------------------------------------------------------

def _declarations() -> Declarations | None:
    """The declarations of this uWSGI instance, read once; None when none are known."""
    global _declarations_cache
    if _declarations_cache is _MISSING:
        record = os.environ.get(RECORD_ENV)
        _declarations_cache = None if record is None else parse_record(record)
    return _declarations_cache  # type: ignore[no-any-return]


def _reset_declarations() -> None:
    """Forget the cached declarations (tests change the environment)."""
    global _declarations_cache
    _declarations_cache = _MISSING
    _socket_limits.clear()


def _required_declarations() -> Declarations | None:
    """Declarations, or None outside uWSGI; under uWSGI without a record, an error."""
    declarations = _declarations()
    if declarations is None and _uwsgi is not None:
        raise DeclarationsMissingError(
            f"this uWSGI instance has no uwsgiconf-mules declarations (no {RECORD_ENV} in the "
            "environment): declare mules with uwsgiconf_mules.Section and compile the config with "
            "`uwsgiconf compile` or `uwsgiconf-mules compile`")
    return declarations


def _sysctl(name: str) -> int | None:
    try:
        with open(f"/proc/sys/net/core/{name}") as handle:
            return int(handle.read())
    except (OSError, ValueError):
        return None


def socket_message_limit(msg_size: int | None) -> int:
    """Largest message a mule queue accepts on this machine.

    uWSGI's queues are AF_UNIX SEQPACKET socket pairs; Linux refuses a message larger than the
    socket send buffer minus 32 bytes. The buffer is ``wmem_default``, or with ``mule-msg-size``
    twice the requested size capped at twice ``wmem_max``. Where ``/proc`` does not tell, the
    limit is the 64 KiB a programmed mule reads by default.

    :param msg_size: The declared ``mule-msg-size``, or None.
    """
    if msg_size not in _socket_limits:
        if msg_size:
            wmem_max = _sysctl("wmem_max")
            sndbuf = None if wmem_max is None else max(2 * min(msg_size, wmem_max), _SOCK_MIN_SNDBUF)
        else:
            sndbuf = _sysctl("wmem_default")
        _socket_limits[msg_size] = (
            PROGRAMMED_READ_LIMIT if sndbuf is None else sndbuf - _SEQPACKET_OVERHEAD)
    return _socket_limits[msg_size]


def _mule_limit(declarations: Declarations | None, mule_id: int) -> int:
    msg_size = declarations.msg_size if declarations else None
    limit = socket_message_limit(msg_size)
    if declarations is not None and declarations.programs[mule_id - 1] is not None:
        return min(limit, PROGRAMMED_READ_LIMIT)
    return limit


def _check_mule_id(mule_id: object, declarations: Declarations | None) -> int:
    if isinstance(mule_id, bool) or not isinstance(mule_id, int):
        raise UnknownTargetError(f"mule id must be an integer, not {mule_id!r}", target=mule_id)
    if declarations is not None:
        if not 1 <= mule_id <= declarations.mule_count:
            raise UnknownTargetError(
                f"mule {mule_id} is not declared; declared: {declarations.describe()}", target=mule_id)
    elif mule_id < 1:
        raise UnknownTargetError(f"mule id {mule_id} is out of range: mule ids start at 1", target=mule_id)
    return mule_id


# --- delivery ------------------------------------------------------------------------------------

def _packet_sockets() -> list[Any]:
    """Duplicates of this process's AF_UNIX packet sockets; uWSGI's mule and farm queues are among
    them (every uWSGI process inherits all of them). Empty where ``/proc/self/fd`` cannot be read.
    """
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except (OSError, ValueError):
        return []
    found = []
    for fd in fds:
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            dup = os.dup(fd)
        except OSError:
            continue
        try:
            sock = _socket.socket(fileno=dup)
        except OSError:
            os.close(dup)
            continue
        if sock.family == _socket.AF_UNIX and sock.type in (_socket.SOCK_SEQPACKET, _socket.SOCK_DGRAM):
            found.append(sock)
        else:
            sock.close()
    return found


_send_sockets: list[Any] | None = None  # this process's packet sockets, listed at the first full queue
_ROOM_WAIT = 0.05  # longest wait for a full queue to poll writable, in seconds


def _wait_for_room(sleep: float, wait: float) -> None:
    """Wait until a full queue has room again.

    A queue's sending socket polls writable again once the mule has read three quarters of what
    it holds, so the sender wakes when there is room instead of after a guessed time. Which socket
    belongs to the queue is not known here: every packet socket that is not writable now is
    watched, at most ``wait`` seconds (any of them waking the sender costs one more attempt).
    With none (a message so large that it needs a queue emptier than writable), this sleeps
    ``sleep`` seconds.
    """
    global _send_sockets
    import select

    if _send_sockets is None:
        _send_sockets = _packet_sockets()
    poller = select.poll()
    for sock in _send_sockets:
        poller.register(sock, select.POLLOUT)
    writable = [fd for fd, _ in poller.poll(0)]
    if len(writable) == len(_send_sockets):
        time.sleep(sleep)
        return
    for fd in writable:  # watch the blocked ones only
        poller.unregister(fd)
    poller.poll(wait * 1000)


def _deliver(message: bytes, dest: int | bytes, label: str, timeout: float) -> bool:
    """Send with bounded retry, once the first attempt found the queue full."""
    send = _uwsgi.mule_msg
    deadline = time.monotonic() + timeout
    delay = 0.0001
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise DeliveryError(
                f"{label}: the queue stayed full for {timeout:g} s; the message "
                f"({len(message)} bytes) was not sent (raise send_timeout or msg_buffer, or add mules)",
                target=dest)
        _wait_for_room(min(delay, left), min(_ROOM_WAIT, left))
        if send(message, dest):
            return True
        delay = min(delay * 2, 0.01)


class _Route:
    """Where messages for one target go, and how large they may be."""

    __slots__ = ("dest", "label", "limit", "timeout")

    def __init__(self, dest: int | bytes, label: str, limit: int, timeout: float) -> None:
        self.dest = dest
        self.label = label
        self.limit = limit
        self.timeout = timeout

    def check_size(self, size: int, what: str) -> None:
        if size > self.limit:
            raise PayloadError(
                f"{what}: message of {size} bytes exceeds the {self.limit}-byte limit of {self.label}; "
                "it would arrive truncated or not at all (pass large data by reference: a file "
                "path, a cache key, a database id)", size=size, limit=self.limit)

    def send(self, message: bytes, what: str) -> bool:
        self.check_size(len(message), what)
        if _uwsgi is None:
            raise MulesRuntimeError(
                f"{what} to {self.label}: not running under uWSGI, there is no mule to receive it")
        if _uwsgi.mule_msg(message, self.dest):
            return True
        return _deliver(message, self.dest, f"{what} to {self.label}", self.timeout)


# --- public API ----------------------------------------------------------------------------------

class Mule:
    """A uWSGI mule, by id.

    Declare mules before using this, e.g. ``section.workers.set_mules_params(mules=3)``.

    :param id: Mule id; ids start at 1. When the declarations are known (always inside uWSGI),
        an undeclared id raises :class:`~uwsgiconf_mules.errors.UnknownTargetError`.
    """

    __slots__ = ("id",)

    def __init__(self, id: int) -> None:
        self.id = _check_mule_id(id, _declarations())

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
        declarations = _required_declarations()
        _check_mule_id(self.id, declarations)
        timeout = declarations.send_timeout if declarations else 0.0
        return _Route(self.id, f"mule {self.id}", _mule_limit(declarations, self.id), timeout)

    @classmethod
    def get_mules(cls) -> list[Mule]:
        """All declared mules, in id order (empty outside uWSGI when nothing is declared).

        :raises DeclarationsMissingError: under uWSGI, when the config has no declarations.
        """
        declarations = _required_declarations()
        return [cls(i) for i in range(1, declarations.mule_count + 1)] if declarations else []

    @classmethod
    def get_current_id(cls) -> int:
        """The id of the current mule; 0 when not in a mule."""
        return int(_uwsgi.mule_id()) if _uwsgi is not None else 0

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
        :param timeout: Seconds to wait; -1 waits forever. On timeout, returns ``''``.
        :returns: The message, decoded as UTF-8 (undecodable bytes are kept as surrogates, so
            ``message.encode('utf-8', 'surrogateescape')`` gives the original bytes back).
        :raises NotInMuleError: when not called in a mule.
        """
        uwsgi = _require_mule("Mule.get_message()")
        deadline = None if timeout < 0 else time.monotonic() + timeout
        while True:
            wait = -1 if deadline is None else max(0, round(deadline - time.monotonic()))
            # uWSGI's own flag is inverted: signals=False makes it poll and handle signals.
            message = uwsgi.mule_get_msg(not signals, farms, buffer_size, wait)
            if message is None:  # a signal was handled
                if deadline is not None and time.monotonic() >= deadline:
                    return ""
                continue
            if _run_envelope(message):
                continue
            return str(message.decode("utf-8", "surrogateescape"))

    def offload(self) -> Callable[[_F], OffloadedFunction]:
        """Decorator: calls of the decorated function run in this mule.

        .. code-block:: python

            @Mule(1).offload()
            def for_mule(*args, **kwargs):
                ...  # runs in mule 1
        """
        return mule_offload(self)

    def send(self, message: str | bytes) -> bool:
        """Send a message to this mule; a programmed mule reads it with ``get_message``.

        :param message: Text (sent as UTF-8) or bytes.
        :returns: True once queued.
        :raises UnknownTargetError: if the mule is not declared (or no mules are).
        :raises PayloadError: if the message is larger than the mule reads whole.
        :raises DeliveryError: if the queue stayed full until the send timeout.
        """
        return self._route().send(_as_bytes(message), "message")


class Farm:
    """A uWSGI mule farm, by name.

    Declare farms before using this, e.g.
    ``section.workers.set_mules_params(farms=section.workers.mule_farm('myfarm', 2))``.

    :param name: Farm name. When the declarations are known (always inside uWSGI), an
        undeclared name raises :class:`~uwsgiconf_mules.errors.UnknownTargetError`.
    :param mules: Mule ids of the farm. Optional: the declared ones are used; given ids that
        differ from the declared ones raise :class:`~uwsgiconf_mules.errors.UnknownTargetError`.
    """

    __slots__ = ("mules", "name")

    def __init__(self, name: str, mules: list[int] | tuple[int, ...] | None = None) -> None:
        if not isinstance(name, str) or not name:
            raise UnknownTargetError(f"farm name must be a non-empty string, not {name!r}", target=name)
        declarations = _declarations()
        ids = None if mules is None else [_check_mule_id(mule, declarations) for mule in mules]
        if declarations is not None:
            spec = declarations.get_farm(name)
            if spec is None:
                raise UnknownTargetError(
                    f"farm {name!r} is not declared; declared: {declarations.describe()}", target=name)
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
        declarations = _required_declarations()
        if declarations is None:
            limit, timeout = socket_message_limit(None), 0.0
        else:
            spec = declarations.get_farm(self.name)
            if spec is None:
                raise UnknownTargetError(
                    f"farm {self.name!r} is not declared; declared: {declarations.describe()}",
                    target=self.name)
            limit = min(_mule_limit(declarations, mule) for mule in spec.mules)
            timeout = declarations.send_timeout
        return _Route(self.name.encode(), f"farm {self.name!r}", limit, timeout)

    @classmethod
    def get_farms(cls) -> list[Farm]:
        """All declared farms, in declared order, with their mules.

        .. code-block:: python

            farms = Farm.get_farms()
            first_farm_first_mule = farms[0].mules[0]

        :raises DeclarationsMissingError: under uWSGI, when the config has no declarations.
        """
        declarations = _required_declarations()
        if declarations is None:
            return []
        return [cls(spec.name) for spec in declarations.farms]

    def is_mine(self) -> bool:
        """Whether the current process is a mule of this farm (False outside mules)."""
        mule_id = Mule.get_current_id()
        return any(mule.id == mule_id for mule in self.mules) if mule_id else False

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
        declarations = _declarations()
        in_farm = declarations.farms_of(mule_id) if declarations else bool(uwsgi.in_farm())
        if not in_farm:
            raise NotInMuleError(f"Farm.get_message(): mule {mule_id} belongs to no farm")
        while True:
            message = uwsgi.farm_get_msg()
            if message is None or _run_envelope(message):
                continue
            return str(message.decode("utf-8", "surrogateescape"))

    def offload(self) -> Callable[[_F], OffloadedFunction]:
        """Decorator: calls of the decorated function run in one mule of this farm.

        .. code-block:: python

            @Farm('myfarm').offload()
            def for_farm(*args, **kwargs):
                ...  # runs in any one mule of farm `myfarm`
        """
        return mule_offload(self)

    def send(self, message: str | bytes) -> bool:
        """Send a message to this farm; exactly one of its mules receives it.

        :param message: Text (sent as UTF-8) or bytes.
        :returns: True once queued.
        :raises UnknownTargetError: if the farm is not declared.
        :raises PayloadError: if the message is larger than the farm's mules read whole.
        :raises DeliveryError: if the queue stayed full until the send timeout.
        """
        return self._route().send(_as_bytes(message), "message")


TypeMuleFarm = int | str | Mule | Farm | None
"""What ``mule_offload`` accepts as a target."""


def _offloaded(func: Callable[..., Any], target: Mule | Farm) -> OffloadedFunction:
    """Build what ``mule_offload`` returns: a function that queues calls of ``func`` for ``target``.

    A closure rather than an object with ``__call__``: this is the hot path of every offload.
    """
    qualname = getattr(func, "__qualname__", None)
    module = getattr(func, "__module__", None)
    if not callable(func) or not qualname or not module:
        raise MulesRuntimeError(f"mule_offload() needs a function, not {func!r}")
    if "<locals>" in qualname or "<lambda>" in qualname:
        raise MulesRuntimeError(
            f"cannot offload {module}.{qualname}: offloaded functions must be defined at module "
            "level (or as class attributes), so that a mule can find them by name")
    key = f"{module}:{qualname}"
    header, header_kw, header_m = task_header(key, ARGS), task_header(key, KWARGS), task_header(key, MARSHAL)
    _register(key, func)
    safe = MARSHAL_SAFE
    # Where calls go, resolved once (at decoration when the declarations are known, which also
    # checks the target; otherwise at the first call) and kept in closure cells for the hot path.
    route: _Route | None = None
    limit = -1
    dest: int | bytes = 0
    send: Callable[[bytes, int | bytes], bool] = _run_inline

    def resolve() -> _Route:
        nonlocal route, limit, dest, send
        if route is None:
            route = target._route()
            limit, dest = route.limit, route.dest
            send = _uwsgi.mule_msg if _uwsgi is not None else _run_inline
        return route

    if _declarations() is not None:
        resolve()

    def offloaded(*args: Any, **kwargs: Any) -> bool:
        # Same envelope as protocol.encode(), built inline from prepared headers: the hot path.
        if kwargs:
            try:
                message = header_kw + _dumps((args, kwargs), PICKLE_PROTOCOL)
            except Exception as exc:
                raise PayloadError(f"{key}: arguments cannot be pickled: {exc}") from exc
        elif not args:
            message = header
        elif safe.issuperset(map(type, args)):
            message = header_m + _marshal(args)
        else:
            try:
                message = header + _dumps(args, PICKLE_PROTOCOL)
            except Exception as exc:
                raise PayloadError(f"{key}: arguments cannot be pickled: {exc}") from exc
        if len(message) > limit:  # also true before the route is resolved (limit -1)
            resolve().check_size(len(message), key)
        if send(message, dest):
            return True
        current = resolve()
        return _deliver(message, dest, f"{key} to {current.label}", current.timeout)

    functools.update_wrapper(offloaded, func)
    offloaded.key = key  # type: ignore[attr-defined]
    offloaded.target = target  # type: ignore[attr-defined]
    return offloaded  # type: ignore[return-value]


def mule_offload(mule_or_farm: TypeMuleFarm = None) -> Callable[[_F], OffloadedFunction]:
    """Decorator: calls of the decorated function run in a mule or in a farm.

    .. code-block:: python

        @mule_offload('fast')        # a farm name, a mule id, a Mule or a Farm
        def resize(image_id):
            ...

        resize(42)  # queued for farm `fast`; returns True

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

    def decorator(func: _F) -> OffloadedFunction:
        return _offloaded(func, target)

    return decorator


# --- the mule side -------------------------------------------------------------------------------

def _as_bytes(message: str | bytes) -> bytes:
    if isinstance(message, str):
        return message.encode()
    if isinstance(message, (bytes, bytearray, memoryview)):
        return bytes(message)
    raise PayloadError(f"message must be str or bytes, not {type(message).__name__}")


def _require_mule(what: str) -> Any:
    if _uwsgi is None or not _uwsgi.mule_id():
        raise NotInMuleError(f"{what} can only be called in a uWSGI mule")
    return _uwsgi


def _find_task(key: bytes) -> Callable[..., Any] | None:
    func = _registry.get(key)
    if func is None:
        func = _import_task(key)
        if func is not None:
            _register(key.decode(), func)  # later calls take the mule loop's fast path
    return func


def _register(key: str, func: Callable[..., Any]) -> None:
    _registry[key.encode()] = func
    _heads[task_header(key, ARGS)[:-1]] = (func, _loads)
    _heads[task_header(key, MARSHAL)[:-1]] = (func, _unmarshal)


def _import_task(key: bytes) -> Callable[..., Any] | None:
    module_name, _, qualname = key.decode().partition(":")
    try:
        found: Any = importlib.import_module(module_name)
    except Exception:
        _log().exception("uwsgiconf-mules: cannot import module %r for task %s", module_name, key.decode())
        return None
    func = _registry.get(key)  # registered when its module was imported
    if func is None:
        # Decorated after import (e.g. ``mule_offload(target)(func)`` in a view): find it by name.
        for part in qualname.split("."):
            found = getattr(found, part, None)
        func = getattr(found, "__wrapped__", found) if callable(found) else None
    return func


def _run_envelope(message: bytes) -> bool:
    """Run the call carried by an envelope; False if the message is not an envelope."""
    if message.startswith(PROBE):
        return True  # another dispatch mule of a farm looking for its queues
    try:
        decoded = decode(message)
    except Exception:
        _log().exception("uwsgiconf-mules: cannot decode a message of %d bytes", len(message))
        return True
    if decoded is None:
        return False
    key, args, kwargs = decoded
    func = _find_task(key)
    if func is None:
        _log().error("uwsgiconf-mules: unknown task %s: no offloaded function has this key in mule %d",
                     key.decode(), Mule.get_current_id())
        return True
    harakiri = _harakiri
    try:
        if harakiri:
            _uwsgi.set_user_harakiri(harakiri)
        func(*args, **kwargs)
    except Exception:
        _log().exception("uwsgiconf-mules: task %s failed", key.decode())
    finally:
        if harakiri:
            _uwsgi.set_user_harakiri(0)
    return True


def _run_inline(message: bytes, dest: int | bytes) -> bool:
    """Outside uWSGI, an offloaded call runs here, from its encoded message."""
    _run_envelope(message)
    return True


def _pass_on(message: bytes) -> None:
    """Hand a message that is not ours to the mule message hook another library installed."""
    hook = getattr(_uwsgi, "mule_msg_hook", None)
    if hook is None:
        _log().warning("uwsgiconf-mules: mule %d dropped a %d-byte message that is not an offloaded "
                       "call (no uwsgi.mule_msg_hook is installed)", Mule.get_current_id(), len(message))
        return
    try:
        hook(message)
    except Exception:
        _log().exception("uwsgiconf-mules: uwsgi.mule_msg_hook failed")


_PROBE_SIZE = len(PROBE) + 12  # the probe header, then random bytes
_PROBE_TRIES = 8  # probes per queue before it is read through uWSGI for the life of the mule
_PROBE_RESEND = 32  # scans between two probes to a queue not found yet
_STREAK = 64  # messages read from one queue in a row while others may be waiting


class _QueueFinder:
    """Finds which socket of this mule receives what is sent to its own queue and to its farms.

    uWSGI gives Python no handle on its queues, only ``mule_get_msg``, which polls every queue
    and signal pipe and allocates a buffer for each message (3.1 µs per message on the machine of
    the README's benchmarks, against 1.9 µs for reading the socket directly). The queues
    are AF_UNIX packet sockets inherited by every mule, so the mule sends a *probe* (a random
    message) to a destination and peeks at the next message of each such socket: the one whose
    next message is the probe is that destination's queue, and can be read directly. A probe
    behind older messages is found once they are read; a farm probe read by another mule of the
    farm is dropped there and sent again, up to :data:`_PROBE_TRIES` times. Whatever is not found
    stays read through uWSGI: the finder costs speed, never a message.
    """

    def __init__(self, uwsgi: Any, destinations: list[int | bytes]) -> None:
        self._send = uwsgi.mule_msg
        self._sockets = _packet_sockets()
        self._pending: dict[bytes, int | bytes] = {}  # probe -> destination
        self._tries = {dest: _PROBE_TRIES for dest in destinations} if self._sockets else {}
        self._waits = 0
        self.found: dict[int | bytes, Any] = {}  # destination -> socket
        self._probe()

    @property
    def searching(self) -> bool:
        """Whether some destination is still looked for."""
        return bool(self._tries or self._pending)

    def _probe(self) -> None:
        for dest in list(self._tries):
            self._tries[dest] -= 1
            if not self._tries[dest]:
                del self._tries[dest]
            probe = PROBE + os.urandom(_PROBE_SIZE - len(PROBE))
            if self._send(probe, dest):
                self._pending[probe] = dest

    def close(self) -> None:
        """Close the sockets no destination was found on (duplicates: uWSGI's stay open)."""
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()
        self._tries.clear()
        self._pending.clear()

    def scan(self) -> None:
        """Peek at the next message of every socket not yet assigned; record the probes found."""
        peek = _socket.MSG_PEEK | _socket.MSG_DONTWAIT
        for sock in list(self._sockets):
            try:
                head = sock.recv(_PROBE_SIZE, peek)
            except OSError:
                continue
            dest = self._pending.pop(head, None)
            if dest is None or dest in self.found:
                continue
            self.found[dest] = sock
            self._sockets.remove(sock)
            self._tries.pop(dest, None)
            for probe in [probe for probe, other in self._pending.items() if other == dest]:
                del self._pending[probe]
        self._waits += 1
        if self._waits % _PROBE_RESEND == 0:
            if self._tries:
                self._probe()
            elif self._waits >= _PROBE_RESEND * (_PROBE_TRIES + 1):
                self._pending.clear()  # probes still on their way are dropped when read


def _probe_destinations(declarations: Declarations | None, mule_id: int) -> list[int | bytes]:
    """The queues a dispatch mule may read directly: its own, and farms of dispatch mules only
    (a programmed mule of the farm would receive probes it does not know)."""
    if declarations is None:
        return []
    programmed = set(declarations.programmed)
    return [mule_id] + [spec.name.encode() for spec in declarations.farms_of(mule_id)
                        if programmed.isdisjoint(spec.mules)]


def _empty(buffer: Any) -> int:
    """The reader of no queue: always empty."""
    raise BlockingIOError


class _Queues:
    """Where a dispatch mule's messages come from, for :func:`mule_loop`.

    Queues found by :class:`_QueueFinder` are read directly into one buffer, each for at most
    :data:`_STREAK` messages in a row while others wait; when they are all empty, the mule waits
    in ``uwsgi.mule_get_msg``, which reads the queues not found and handles uWSGI signals. Like
    uWSGI's own reader, this handles signals when the queues run empty. The search starts with
    the first message: a mule that never gets one spends nothing on it.

    :param uwsgi: The ``uwsgi`` module.
    :param destinations: Destinations (own mule id, farm names) to look for.
    :param farms: Whether ``mule_get_msg`` polls the farm queues too.
    :param buffer_size: Largest message read whole, in bytes.
    """

    def __init__(self, uwsgi: Any, destinations: list[int | bytes], farms: bool, buffer_size: int) -> None:
        # One buffer for every message (a fresh one per read costs page faults); anonymous memory,
        # so only the pages that messages reach are ever touched.
        self.buffer = mmap.mmap(-1, buffer_size)
        self.view = memoryview(self.buffer)
        self.current: Callable[[Any], int] = _empty  # the reader of the queue read now
        self._readers: list[Callable[[Any], int]] = []
        self._turn = 0  # index of current in _readers
        self._uwsgi = uwsgi
        self._get = uwsgi.mule_get_msg
        self._farms = farms
        self._size = buffer_size
        self._destinations = destinations  # not looked for yet
        self._finder: _QueueFinder | None = None
        self._found: dict[int | bytes, Any] = {}  # destination -> socket

    @property
    def direct(self) -> list[int | bytes]:
        """The destinations whose queues are read directly (mule id, farm names as bytes)."""
        return list(self._found)

    def rotate(self) -> Callable[[Any], int]:
        """Give the next queue its turn; returns its reader."""
        self._turn = (self._turn + 1) % len(self._readers)
        self.current = self._readers[self._turn]
        return self.current

    def wait(self) -> int | None:
        """Put the next message in the buffer once the current queue ran empty and return its
        size: from another queue read directly, or from uWSGI (None: it handled a signal)."""
        readers, emptied = self._readers, self.current
        for step in range(1, len(readers) + 1):
            turn = (self._turn + step) % len(readers)
            if readers[turn] is emptied:  # just ran empty: one failed read (an exception) is enough
                continue
            try:
                size: int = readers[turn](self.buffer)
            except BlockingIOError:
                continue
            self._turn, self.current = turn, readers[turn]
            return size
        if self._finder is not None:
            self._search(self._finder)
        message = self._get(False, self._farms, self._size, -1)  # signals handled while waiting
        # Next, the queue read last: a burst that woke the mule is likely to go on there.
        self.current = readers[self._turn] if readers else _empty
        if self._destinations:  # the mule is in use: look for its queues from now on
            self._finder = _QueueFinder(self._uwsgi, self._destinations)
            self._found, self._destinations = self._finder.found, []
        if message is None:
            return None
        self.buffer[:len(message)] = message
        return len(message)

    def _search(self, finder: _QueueFinder) -> None:
        finder.scan()
        for sock in finder.found.values():
            if sock.recv_into not in self._readers:
                self._readers.append(sock.recv_into)
        if not finder.searching:
            finder.close()
            self._finder = None


def mule_loop() -> None:
    """The message loop of dispatch mules; never returns.

    The builders declare dispatch mules as ``mule = .../uwsgiconf_mules/dispatch_mule.py``, a
    script that calls this. The loop reads the mule's own queue and the queues of its farms
    (messages up to the socket limit, beyond uWSGI's 64 KiB hook buffer), directly where
    :class:`_QueueFinder` found them; handles uWSGI signals while waiting; runs offloaded calls
    under the declared harakiri; and passes other messages on to ``uwsgi.mule_msg_hook``.

    :raises NotInMuleError: when not called in a mule.
    """
    global _harakiri, _queues
    uwsgi = _require_mule("mule_loop()")
    mule_id = int(uwsgi.mule_id())
    declarations = _declarations()
    _harakiri = (declarations.harakiri or 0) if declarations else 0
    # Poll the farm queues only when this mule is in a farm: one less file descriptor per wait.
    farms = bool(declarations.farms_of(mule_id)) if declarations else True
    buffer_size = socket_message_limit(declarations.msg_size if declarations else None)
    queues = _queues = _Queues(uwsgi, _probe_destinations(declarations, mule_id), farms, buffer_size)
    buffer, view = queues.buffer, queues.view
    find = buffer.find
    current, streak = queues.current, _STREAK
    heads = _heads
    fast = not _harakiri
    while True:
        try:
            size = current(buffer)  # a queue read directly, into the buffer
        except BlockingIOError:
            waited = queues.wait()
            current, streak = queues.current, _STREAK
            if waited is None:
                continue
            size = waited
        else:
            streak -= 1
            if not streak:  # let the other queues have a turn
                current, streak = queues.rotate(), _STREAK
        if fast:
            # Fast path, inlined for throughput: a positional-only call of a known task, no
            # harakiri to arm, arguments decoded from the buffer. The head (before the first
            # NUL) names both the kind and the task.
            end = find(b"\x00", 0, size)
            entry = heads.get(buffer[:end]) if end > 0 else None
            if entry is not None:
                try:
                    if end + 1 < size:
                        entry[0](*entry[1](view[end + 1:size]))
                    else:
                        entry[0]()
                except Exception:
                    _log().exception("uwsgiconf-mules: task %s failed", buffer[KEY_START:end].decode())
                continue
        message = buffer[:size]
        if not _run_envelope(message):
            _pass_on(message)
