"""What ``mule_offload`` returns: a function that queues calls of the decorated one for its target.

A call encodes its arguments (:mod:`uwsgiconf_mules.protocol.envelope`) and hands the message to
the route's send function, resolved once and kept in closure cells for the hot path: ``uwsgi.mule_msg``
to a mule or farm queue, a routed farm's engine (:func:`remote_route`), a test mode's, or running
the call here outside uWSGI. A full queue is waited on (:func:`~uwsgiconf_mules.runtime.sending.deliver`),
refused at once (``nowait``) or waited on from a coroutine (``aoffload``).
"""

from __future__ import annotations

import functools
import sys

from ..declarations.backends import ENGINES
from ..errors import DeliveryError, MulesRuntimeError, UsageError
from ..protocol import envelope as _protocol
from ..protocol.limits import MALLOC_MAPPED
from . import (
    deferred as _deferred,
    instance as _instance,
    metrics as _metrics,
    policy as _policy,
    result_offload as _result_offload,
    results as _results,
    spool_watch as _spool_watch,
    tasks as _tasks,
)
from .sending import Route, adeliver, deliver

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: workers and mules import this module, keep it cheap
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Any, ParamSpec, TypeVar

    from ..declarations.backends import Backend
    from . import Farm, Mule, OffloadedFunction

    _P = ParamSpec("_P")
    _R = TypeVar("_R")
    Send = Callable[[bytes, int | bytes], bool]
    Swap = Callable[[Send, Send], Send]

CO_GENERATORS = 0x20 | 0x200  # inspect.CO_GENERATOR | inspect.CO_ASYNC_GENERATOR


def unrunnable(func: Callable[..., Any], module: str, qualname: str) -> str:
    """Why a mule could not run ``func`` from its key; empty when it can.

    :param func: The function.
    :param module: Its ``__module__``.
    :param qualname: Its ``__qualname__``.
    """
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
    if code is not None and code.co_flags & CO_GENERATORS:
        return "a generator function would only create a generator in the mule, and never run"
    return ""


def remote_route(name: str, backend: Backend, timeout: float) -> Route:
    """The route of a farm routed to an offload backend: no size limit of a mule queue, the
    backend's own send function (its engine's module is imported here, only for such a farm) and
    its check of the arguments. Outside uWSGI, when the calls do not go to the engine (see
    :func:`engine_bypassed`), no send function is made (nor the engine's client imported).

    :param name: The farm.
    :param backend: Its backend.
    :param timeout: Seconds a send may take (``send_timeout``).
    """
    from importlib import import_module

    engine = import_module(ENGINES[backend.scheme])
    label = f"farm {name!r} ({backend.where()})"
    check = None
    if backend.serializer == "json":  # the engine's sender refuses what JSON would not give back
        check_json = engine.check_json

        def check(key: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            check_json(key, args, kwargs, label)

    bypassed = engine_bypassed()
    sender = None if bypassed else engine.sender(backend, label, timeout)
    later = None if bypassed else engine.delayed_sender(backend, label, timeout)
    return Route(name.encode(), label, sys.maxsize, timeout, sender=sender, check=check, later=later)


def engine_bypassed() -> bool:
    """Whether calls to farms routed to an offload backend stay in this process: outside uWSGI,
    in a test mode, or when the declarations come from a configuration module
    (``UWSGICONF_MULES_CONFIG``: a development server, tests) rather than from a record (a
    script, a worker host), so that checking the targets never queues real jobs."""
    return _instance.uwsgi is None and (_instance.local_send is not None or _instance.loaded_from is not None)


def _checked(check: Callable[[str, tuple[Any, ...], dict[str, Any]], None], send: Send) -> Send:
    """``send``, after the check of a routed farm's engine (for its calls that stay here)."""

    def checked(message: bytes, dest: int | bytes) -> bool:
        key, args, kwargs = _protocol.decode(message)
        check(key.decode(), args, kwargs)
        return send(message, dest)

    return checked


def _target_ids(target: Mule | Farm) -> tuple[int, ...]:
    mules = getattr(target, "mules", None)
    return tuple(mule.id for mule in mules) if mules is not None else (target.id,)  # type: ignore[union-attr]


def _run_inline(message: bytes, dest: int | bytes) -> bool:
    """Outside uWSGI, an offloaded call runs here, from its encoded message."""
    _tasks.run(message)
    return True


def _resolved(target: Mule | Farm) -> Route:
    """The route of ``target``, refused while the spool cannot keep calls to its dispatch mules."""
    route = target._route()
    if _spool_watch.spool_problem is not None and route.sender is None and not route.refused:
        refused = _spool_watch.spool_refusal(_instance.declarations(), _target_ids(target))
        if refused is not None:
            route = Route(route.dest, route.label, route.limit, route.timeout, refused)
    return route


def _sender(route: Route, counts_inline: bool, swap: Swap) -> tuple[Send, list[int]]:
    """The send function of ``route`` and the cell of its ``queued`` count (a list nobody reads
    when the calls are not counted inline).

    :param route: The resolved route.
    :param counts_inline: Whether the offloaded function counts what it queued itself.
    :param swap: Replaces the send function of the offloaded function (see :func:`build`).
    """
    uwsgi = _instance.uwsgi
    send: Send
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
            count = _metrics.cell(_metrics.target_name(route.dest))
            send = _starting(send, swap)
        else:
            send = _metrics.counting(send, route.dest)
    if uwsgi is not None and route.sender is None and not _spool_watch._watching:
        send = _watching(send, swap)
    return send, count


def _watching(raw: Send, swap: Swap) -> Send:
    """``raw``, starting this process's spool watcher first (see ``spool_watch.watch_spool``);
    replaced by ``raw`` (or by a refusal, when the spool cannot keep calls) once it runs."""

    def first(message: bytes, to: int | bytes) -> bool:
        if _spool_watch.watch_spool():
            return swap(first, raw)(message, to)  # what the watcher's first check left
        return raw(message, to)  # the master: no watcher

    return first


def _starting(raw: Send, swap: Swap) -> Send:
    """``raw``, starting this process's flushing thread first; replaced by ``raw`` once the
    thread runs (in a worker or a mule: never in the master)."""

    def first(message: bytes, to: int | bytes) -> bool:
        if _metrics.start():
            swap(first, raw)
        return raw(message, to)

    return first


def _task(func: Callable[..., Any], result_ttl: object = None, target: Mule | Farm | None = None
          ) -> tuple[str, int | None]:
    """The task key of ``func``, registered, once it is checked to be a function a mule can run,
    and its ``result_ttl`` checked (None: the task keeps no results, and is registered as it is)."""
    qualname = getattr(func, "__qualname__", None)
    module = getattr(func, "__module__", None)
    if not callable(func) or not qualname or not module:
        raise MulesRuntimeError(f"mule_offload() needs a function, not {func!r}")
    problem = unrunnable(func, module, qualname)
    if problem:
        raise MulesRuntimeError(f"cannot offload {module}.{qualname}: {problem}")
    key = f"{module}:{qualname}"
    if result_ttl is None:
        _tasks.register(key, func)
        return key, None
    ttl = _results.check_ttl(key, result_ttl)
    if target is not None:
        _result_offload.check_store(key, target)
    _tasks.register(key, _results.wrap(key, func, ttl))  # its calls carry their result id first
    return key, ttl


def build(func: Callable[_P, _R], target: Mule | Farm,  # noqa: PLR0915 - closures
          options: dict[str, Any] | None = None) -> OffloadedFunction[_P, _R]:
    """Build what ``mule_offload`` returns: a function that queues calls of ``func`` for ``target``.

    A closure rather than an object with ``__call__``: this is the hot path of every offload.

    :param func: The function offloaded.
    :param target: Where its calls go.
    :param options: The task's options, by name: ``result_ttl``, seconds the result of each call is
        kept (see :mod:`.results`; without it the call returns True once queued), and the lifecycle's
        (see :mod:`.policy`). None: today's path.
    """
    options = dict(options or {})
    key, ttl = _task(func, options.pop("result_ttl", None), target)
    encode = _protocol.encoder(key)
    policy = _policy.policy_of(key, _deferred.label(target), options, **_deferred.target_kind(target)) \
        if options else None
    if policy is not None:  # a declared lifecycle: its calls run through the policy (runtime.policy)
        _policy.register(key, func if ttl is None else _results.wrap(key, func, ttl, retried=policy.retried), policy,
                         encode, lambda: _deferred.target_note(target))
    # Where calls go, resolved once (at decoration when the declarations are known, which also
    # checks the target; otherwise at the first call) and kept in closure cells for the hot path.
    route: Route | None = None
    limit = -1
    dest: int | bytes = 0
    send: Send = _run_inline
    # With the counters on (see metrics): the target's `queued` count, counted inline when the
    # declarations are known at decoration (under uWSGI); otherwise its sends are wrapped by
    # metrics.counting, and `count` is a list nobody reads.
    count: list[int] = [0, 0]
    counts_inline = _instance.declarations() is not None and _metrics.enabled()

    def resolve() -> Route:
        nonlocal route, limit, dest, send, count
        if route is None:
            route = _resolved(target)
            limit, dest = min(route.limit, MALLOC_MAPPED), route.dest  # larger: checked at each call (steady_heap)
            send, count = _sender(route, counts_inline, swap)
        return route

    def swap(old: Send, new: Send) -> Send:
        nonlocal send
        if send is old:
            send = new
        return send

    def offloaded(*args: Any, **kwargs: Any) -> bool:
        # attempt(), inlined and without its count: the hot path of every offload with the counters
        # off. benchmarks/sender_body.py (three runs, best of 25 x 200,000 calls, a C send): 488-493 ns
        # a call here, 529-551 with the count inline, 579-585 through attempt() (benchmarks/README.md).
        message = encode(args, kwargs)
        if len(message) > limit:  # also true before the route is resolved (limit -1)
            resolve().check_size(len(message), key)
        if send(message, dest):
            return True
        current = resolve()
        return deliver(message, dest, f"{key} to {current.label}", current.timeout)

    def offloaded_counting(*args: Any, **kwargs: Any) -> bool:
        # attempt(), inlined (see offloaded()): the hot path with the counters on, counted inline
        # (a wrapper around the send would cost a call more per offload).
        message = encode(args, kwargs)
        if len(message) > limit:
            resolve().check_size(len(message), key)
        if send(message, dest):
            count[0] += 1
            return True
        current = resolve()
        return deliver(message, dest, f"{key} to {current.label}", current.timeout)

    def attempt(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes | None:
        """None once the call is queued; its message when the queue is full."""
        message = encode(args, kwargs)
        if len(message) > limit:
            resolve().check_size(len(message), key)
        if send(message, dest):
            count[0] += 1
            return None
        return message

    def forget() -> None:
        nonlocal route, limit, send
        route, limit, send = None, -1, _run_inline

    def refresh() -> None:
        """Resolve the route again (the spool watcher found a change), without ever passing
        through an unresolved state that a concurrent call could see."""
        nonlocal route
        if route is not None:
            route = None
            resolve()

    def deliver_one(message: bytes) -> bool:
        """Send one envelope (a delayed call's) to the target, as a call is sent."""
        if len(message) > limit:
            resolve().check_size(len(message), key)
        if send(message, dest):
            count[0] += 1
            return True
        current = resolve()
        return deliver(message, dest, f"{key} to {current.label}", current.timeout)

    def remote() -> Callable[[bytes, int], bool] | None:
        """The engine's send of delayed calls, for a farm routed to one whose calls go there."""
        current = resolve()
        return current.later if send is current.sender else None

    def delayed(how: str, when: Any) -> Callable[..., bool]:
        """``later(seconds)`` and ``at(when)``: one body (see ``deferred.delayed_sender``)."""
        if ttl is not None and _deferred.target_kind(target)["routed"]:
            from ..errors import TaskOptionError

            raise TaskOptionError(f"task {key}: {_deferred.label(target)} is routed to an offload backend, and a task "
                                  f"with result_ttl cannot be delayed there yet: {how}() is refused", task=key,
                                  option=f"{how}()")
        return _deferred.delayed_sender(key, encode, deliver_one, lambda: _deferred.target_note(target, how),
                                        how=how, when=when, remote=remote)

    later = functools.partial(delayed, "later")
    at = functools.partial(delayed, "at")

    def current() -> tuple[Route, Send, int | bytes, list[int]]:
        return resolve(), send, dest, count

    if _instance.declarations() is not None:
        resolve()
    # With results, each call (and each delayed one) returns its handle (see runtime.result_offload).
    sends = _result_offload.with_results((offloaded_counting if counts_inline else offloaded,
                                          _nowait(attempt, resolve, key), _aoffload(attempt, resolve, key)),
                                         key, ttl, target)
    chosen = sends[0]
    chosen.policy = policy  # type: ignore[attr-defined]
    chosen.later = _result_offload.delayed(later, key, ttl, target)  # type: ignore[attr-defined]
    chosen.at = _result_offload.delayed(at, key, ttl, target)  # type: ignore[attr-defined]
    chosen.map, chosen.starmap = _batches(key, encode, current, ttl)  # type: ignore[attr-defined]
    return _published(sends, func, key, target, forget=forget, refresh=refresh)


def _batches(key: str, encode: _protocol.Encoder, current: Callable[[], tuple[Route, Send, int | bytes, list[int]]],
             ttl: int | None) -> tuple[Callable[..., int], Callable[..., int]]:
    """``map`` and ``starmap`` of an offloaded function (see :mod:`.batches`, imported at the first batch)."""

    def starmap(calls: Iterable[Iterable[Any]], /) -> int:
        if ttl is not None:
            raise UsageError(f"{key} keeps results (result_ttl): f.map() and f.starmap() return no handles; "
                             "call it once per call to get each Result")
        from .batches import send_calls

        return send_calls(key, encode, current, calls)  # type: ignore[arg-type]

    def map(args: Iterable[Any], /) -> int:
        return starmap(zip(args))  # one-tuples made in C

    return map, starmap


def _nowait(attempt: Callable[[tuple[Any, ...], dict[str, Any]], bytes | None], resolve: Callable[[], Route],
            key: str) -> Callable[..., bool]:
    """The ``nowait`` of an offloaded function: a full queue raises ``DeliveryError`` at once."""

    def nowait(*args: Any, **kwargs: Any) -> bool:
        message = attempt(args, kwargs)
        if message is None:
            return True
        route = resolve()
        raise DeliveryError(f"{key} to {route.label}: the queue is full; the message ({len(message)} bytes) "
                            "was not sent (nowait: no wait for room)", target=route.dest)

    return nowait


def _aoffload(attempt: Callable[[tuple[Any, ...], dict[str, Any]], bytes | None], resolve: Callable[[], Route],
              key: str) -> Callable[..., Any]:
    """The ``aoffload`` of an offloaded function: a full queue is waited on from the running event loop."""

    async def aoffload(*args: Any, **kwargs: Any) -> bool:
        route = resolve()
        if route.sender is not None:  # a farm routed to RQ: Redis is waited on in a thread of the loop's executor
            return await _in_executor(attempt, args, kwargs, route, key)
        message = attempt(args, kwargs)
        if message is None:
            return True
        return await adeliver(message, route.dest, f"{key} to {route.label}", route.timeout)

    return aoffload


async def _in_executor(attempt: Callable[[tuple[Any, ...], dict[str, Any]], bytes | None], args: tuple[Any, ...],
                       kwargs: dict[str, Any], route: Route, key: str) -> bool:
    """``aoffload`` to a farm routed to an offload backend: its send (a Redis round trip) runs in a
    thread of the running loop's executor, never blocking the loop."""
    import asyncio

    message = await asyncio.get_running_loop().run_in_executor(None, attempt, args, kwargs)
    if message is None:
        return True
    return await adeliver(message, route.dest, f"{key} to {route.label}", route.timeout)


def _published(sends: tuple[Callable[..., Any], ...], func: Callable[_P, _R], key: str, target: Mule | Farm,
               **methods: Callable[..., Any]) -> OffloadedFunction[_P, _R]:
    """The call of ``sends`` (call, ``nowait``, ``aoffload``) as the offloaded function: ``func``'s name
    and doc, its key, target and methods (the two others; ``_forget`` and ``_refresh`` for the
    instance's state)."""
    call = sends[0]
    functools.update_wrapper(call, func)
    call.nowait = sends[1]  # type: ignore[attr-defined]
    call.aoffload = sends[2]  # type: ignore[attr-defined]
    call.key = key  # type: ignore[attr-defined]
    call.target = target  # type: ignore[attr-defined]
    call._forget = methods["forget"]  # type: ignore[attr-defined]
    call._refresh = methods["refresh"]  # type: ignore[attr-defined]
    _instance.remember(call)  # type: ignore[arg-type]
    return call  # type: ignore[return-value]
