"""The function that runs every job of a farm routed to RQ, in the RQ worker.

``uwsgiconf_mules.remote.run(key, *args, **kwargs)`` is what each job names (RQ finds it by
this import path): it runs the function that ``mule_offload`` registered under ``key``
(``module:qualname``), importing the key's module first as a dispatch mule does, and refuses any
other key. So a job never calls anything that was not offloaded on purpose, and it runs the
original function, never its offloading wrapper: a job does not offload itself again.

``uwsgiconf_mules.remote.Job`` is the job class ``uwsgiconf-mules worker`` gives RQ: a job that
names any function other than :func:`run` fails without running, so whoever can write to Redis
cannot make the worker call an arbitrary function (with the ``json`` serializer; a pickled job
runs code as it is unpickled, which is why pickle is a declared choice).

This module imports RQ: only RQ workers import it.
"""

from __future__ import annotations

from rq.job import Job as _RQJob

from . import _tasks
from .errors import UnknownTaskError

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: keep worker imports cheap
if TYPE_CHECKING:
    from typing import Any

__all__ = ["Job", "run"]

_RUN = f"{__name__}.run"  # how jobs name run()


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


class Job(_RQJob):
    """RQ's job, refusing any job that names another function than :func:`run`."""

    @property
    def func(self) -> Any:
        """The function the job runs: :func:`run`, or :class:`UnknownTaskError` for any other."""
        if self.func_name != _RUN or self.instance is not None:
            raise UnknownTaskError(f"job refused: it names {self.func_name!r}, and workers of farms routed by "
                                   f"uwsgiconf-mules run only {_RUN}", key=self.func_name)
        return run

