"""What an offloaded function whose task declares ``result_ttl`` does with each call: it gives the
call a result id (sent as the call's first argument, see :func:`uwsgiconf_mules.runtime.results.wrap`),
sends it and returns its :class:`~uwsgiconf_mules.runtime.handles.Result`, ``queued``: nothing is
written before the call starts (an unexpired id with no record is ``queued``). A call to a farm
routed to an offload backend is the engine's job instead, sent with its own id and ``result_ttl``:
the engine keeps its result.
"""

from __future__ import annotations

from ..declarations.backends import ENGINES
from . import handles as _handles, instance as _instance, result_store as _result_store, results as _results
from .result_ids import timed_id_maker

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: workers and mules import this module, keep it cheap
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from ..declarations.backends import Backend
    from . import Farm, Mule


def delayed(make: Callable[[Any], Callable[..., Any]], key: str, ttl: int | None, target: Mule | Farm,
            ) -> Callable[[Any], Callable[..., Any]]:
    """``later`` or ``at`` of an offloaded function (``make(when)`` gives the delayed send), each of
    whose calls returns its handle for a task with results (``make`` itself without: ``ttl`` None).

    :param make: ``later`` or ``at``.
    :param key: The task key.
    :param ttl: Its ``result_ttl``, or None.
    :param target: Where its calls go.
    """
    if ttl is None:
        return make

    def when(moment: Any) -> Callable[..., Any]:
        return _with_result(make(moment), key, ttl, target)

    return when


def _offload_bypassed() -> bool:
    from .offload import engine_bypassed

    return engine_bypassed()


def with_results(sends: tuple[Callable[..., Any], Callable[..., Any], Callable[..., Any]], key: str, ttl: int | None,
                 target: Mule | Farm) -> tuple[Callable[..., Any], Callable[..., Any], Callable[..., Any]]:
    """The call, ``nowait`` and ``aoffload`` of an offloaded function, each returning its call's handle;
    ``sends`` itself for a task without results (``ttl`` None).

    :param sends: The three, as they are without results.
    :param key: The task key.
    :param ttl: Its ``result_ttl``, or None.
    :param target: Where its calls go.
    """
    if ttl is None:
        return sends
    return (_with_result(sends[0], key, ttl, target), _with_result(sends[1], key, ttl, target),
            _awith_result(sends[2], key, ttl, target))


def check_store(key: str, target: Mule | Farm) -> None:
    """Refuse ``result_ttl`` for a farm of mules when the declarations declare no results store."""
    declarations = _instance.declarations()
    name = getattr(target, "name", None)
    if declarations is None or declarations.results is not None or (
            name is not None and declarations.get_backend(name) is not None):
        return  # nothing declared (a local store), a store, or a routed farm (the engine keeps results)
    from ..errors import MulesConfigurationError

    raise MulesConfigurationError(
        f"task {key} declares result_ttl, but the config declares no results store: declare one with "
        "set_mules_params(results=True) (or a mapping of items, item_size, store) and compile it again",
        culprit="results")


def _routed(target: Mule | Farm) -> Backend | None:
    """The backend ``target`` is routed to, when its calls go to the engine (not kept here)."""
    name = getattr(target, "name", None)
    declarations = _instance.declarations()
    if name is None or declarations is None or _offload_bypassed():
        return None
    return declarations.get_backend(name)


def _with_result(call: Callable[..., bool], key: str, ttl: int, target: Mule | Farm) -> Callable[..., Any]:
    """``call`` (a send of the task), for a task that keeps results: each call gets a result id,
    sent as its first argument, and returns its :class:`~uwsgiconf_mules.runtime.handles.Result`.
    A call to a routed farm is the engine's job, whose own result the handle reads. Under uWSGI,
    whether the target is routed is decided at the first call (the declarations do not change)."""
    new_id, handle = timed_id_maker(ttl), _handles.Result
    routed: list[Any] = []  # [send of the engine's jobs with an id and a ttl], once resolved
    look = [True]  # whether a call looks for a routed farm first: always outside uWSGI, once under it

    def with_result(*args: Any, **kwargs: Any) -> Any:
        if look[0]:
            backend = _routed(target)
            if backend is not None:
                return _routed_result(routed, backend, key, ttl, (args, kwargs))
            if _instance.uwsgi is None:
                return _here(call, new_id()[0], args, kwargs)
            look[0] = False
        result_id, expires = new_id()
        call(result_id, *args, **kwargs)  # raises when not sent: nothing was written
        return handle(result_id, None, expires)

    return with_result


def _here(call: Callable[..., Any], result_id: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """A call outside uWSGI, run here (inline, eager) or recorded (capture): its handle as it is now."""
    try:
        call(result_id, *args, **kwargs)
    except BaseException:
        found = _result_store.store().get(result_id)
        if found is not None and _results._decode(found)[1] in _results.FINAL:  # eager: the task's own exception
            return _handles.Result(result_id, _results._decode(found))
        raise
    return _handles.Result.get(result_id)


def _routed_result(routed: list[Any], backend: Backend, key: str, ttl: int,
                   call: tuple[tuple[Any, ...], dict[str, Any]]) -> Any:
    """A call to a farm routed to an offload backend, sent as a job with its own id and ``ttl``."""
    if not routed:
        from importlib import import_module

        engine = import_module(ENGINES[backend.scheme])
        declarations = _instance.declarations()
        timeout = declarations.send_timeout if declarations is not None else 5.0
        routed.append(engine.result_sender(backend, f"farm {backend.farm!r} ({backend.where()})", timeout))
    job_id = routed[0](key, call[0], call[1], ttl)
    return _handles.Result(_handles.routed_id(backend.farm, job_id))


def _awith_result(call: Callable[..., Any], key: str, ttl: int, target: Mule | Farm) -> Callable[..., Any]:
    """:func:`_with_result` for ``aoffload``."""
    routed: list[Any] = []  # [send of the engine's jobs with an id and a ttl], once resolved

    async def with_result(*args: Any, **kwargs: Any) -> Any:
        backend = _routed(target)
        if backend is not None:
            import asyncio

            return await asyncio.get_running_loop().run_in_executor(
                None, lambda: _routed_result(routed, backend, key, ttl, (args, kwargs)))
        result_id = _results.new_id(ttl)
        await call(result_id, *args, **kwargs)  # raises when not sent: nothing was written
        return _handles.Result(result_id) if _instance.uwsgi is not None else _handles.Result.get(result_id)

    return with_result
