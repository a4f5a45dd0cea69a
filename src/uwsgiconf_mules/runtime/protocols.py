"""The types of what ``mule_offload`` returns, for type checkers only (import them under
``TYPE_CHECKING``, from :mod:`uwsgiconf_mules.runtime`): nothing here runs in a uWSGI process."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, ParamSpec, Protocol, TypeVar

from . import policy as _policy

if TYPE_CHECKING:
    from . import Farm, Mule
    from .handles import Result

_P = ParamSpec("_P")
_R = TypeVar("_R")
_T = TypeVar("_T")


class OffloadedFunction(_policy.Delayable[_P], Protocol[_P, _R]):
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

    def map(self: Callable[[_T], object], args: Iterable[_T], /) -> int:
        """Queue one call per item of ``args`` (a task of one parameter: type checkers check the
        items against it), packed into as few messages as the target reads whole; returns how
        many were queued. A call that cannot be sent raises ``PayloadError`` before any is sent
        (its ``failed``: their indices); a queue that stays full raises ``DeliveryError`` (its
        ``queued``: how many, the first ones)."""

    def starmap(self, calls: Iterable[tuple[Any, ...]], /) -> int:
        """:meth:`map` for tasks of several parameters: one call per tuple of positional
        arguments. Type checkers see ``tuple[Any, ...]``: a ParamSpec's ``args`` cannot be named
        as a tuple type (PEP 612), and overloads per arity would need a catch-all that accepts any
        tuple anyway; :meth:`map` is checked (a task of one positional parameter)."""


class ResultFunction(Protocol[_P, _R]):
    """What ``mule_offload(..., result_ttl=...)`` returns (for type annotations; import it under
    TYPE_CHECKING): as :class:`OffloadedFunction`, but a call returns the
    :class:`~uwsgiconf_mules.runtime.results.Result` of the call once queued."""

    key: str
    """The task key, ``module:qualname``."""
    target: Mule | Farm
    """The ``Mule`` or ``Farm`` calls are sent to."""
    __wrapped__: Callable[_P, _R]

    def __call__(self, *args: _P.args, **kwargs: _P.kwargs) -> Result[_R]: ...

    def nowait(self, *args: _P.args, **kwargs: _P.kwargs) -> Result[_R]:
        """Queue a call without waiting for room (a full queue raises ``DeliveryError``)."""

    async def aoffload(self, *args: _P.args, **kwargs: _P.kwargs) -> Result[_R]:
        """Queue a call from a coroutine."""
