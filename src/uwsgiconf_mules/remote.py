"""The function that runs every job of a farm routed to RQ, in the RQ worker.

``uwsgiconf_mules.remote.run(key, *args, **kwargs)`` is what each job names (RQ finds it by
this import path): it runs the function that ``mule_offload`` registered under ``key``
(``module:qualname``), importing the key's module first as a dispatch mule does, and refuses any
other key. So a job never calls anything that was not offloaded on purpose, and it runs the
original function, never its offloading wrapper: a job does not offload itself again.
"""

from __future__ import annotations

from . import _tasks
from .errors import UnknownTaskError

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: keep worker imports cheap
if TYPE_CHECKING:
    from typing import Any

__all__ = ["run"]


def run(key: str, *args: Any, **kwargs: Any) -> Any:
    """Run the offloaded function registered as ``key`` with these arguments; return its result.

    :param key: The task key, ``module:qualname``.
    :param args: Positional arguments of the call.
    :param kwargs: Keyword arguments of the call.
    :raises UnknownTaskError: when no function is registered under ``key`` by ``mule_offload``
        (the job fails in RQ with this message, and nothing runs).
    """
    found = _tasks.find(key.encode()) if isinstance(key, str) else f"task key {key!r} is not a string"
    if isinstance(found, str):
        raise UnknownTaskError(f"job refused: {found}", key=key)
    return found(*args, **kwargs)
