"""The ticks of schedules on farms routed to RQ: each enqueued once for the whole cluster.

Every uWSGI instance that runs the same config fires the schedule (in its first dispatch mule, see
:mod:`uwsgiconf_mules.mule.schedules`); before it enqueues a tick it takes the tick's lock in the
farm's Redis, ``SET uwsgiconf_mules:schedule:<id>:<tick> <host:pid> NX EX <ttl>``: of the instances,
the one that sets it enqueues the job, the others find it set. The key expires (at least an hour,
twice the period for longer ones), so Redis keeps one small key per schedule and recent tick. When
Redis took the lock but not the job (a connection lost between the two), the mule tries the tick
again a second later, and the lock it holds (its value says ``host:pid``) lets it enqueue the job.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from ...declarations import Backend
from ...errors import DeliveryError
from .sender import RUN, SERIALIZER_PATHS, _client, job_options


def _options(func: str) -> dict[str, Any]:
    """The RQ options of task ``func`` (its retries and time limit, see ``sender.job_options``), its
    module imported first as a mule imports it for a call; none for a function that is no task
    (the worker refuses its job)."""
    from ...runtime import tasks as _tasks

    return {} if isinstance(_tasks.find(func.encode()), str) else job_options(func)


def enqueue_tick(backend: Backend, lock: str, *, ttl: int, func: str, args: tuple[Any, ...], kwargs: dict[str, Any],
                 timeout: float) -> bool:
    """Enqueue one tick's job unless another instance did; whether this one did.

    :param backend: The farm's route.
    :param lock: The tick's lock key.
    :param ttl: Seconds the lock lives.
    :param func: The task, ``package.module:function``.
    :param args: Its positional arguments.
    :param kwargs: Its keyword arguments.
    :param timeout: The send timeout: the longest wait for each reply of Redis.
    :raises DeliveryError: when Redis cannot be reached (the tick is tried again by the mule).
    """
    import redis.exceptions
    import rq

    client = _client(backend, timeout)
    me = f"{socket.gethostname()}:{os.getpid()}"
    try:
        # A lock of this process's own: it took it, and Redis did not take the job (its try again, not lost).
        if not client.set(lock, me, nx=True, ex=ttl) and client.get(lock) not in (me, me.encode()):
            return False
        queue = rq.Queue(backend.queue, connection=client, serializer=SERIALIZER_PATHS[backend.serializer])
        queue.enqueue_call(RUN, args=(func, *args), kwargs=kwargs, **_options(func))
    except (redis.exceptions.RedisError, OSError) as exc:
        raise DeliveryError(f"{func} to farm {backend.farm!r}: Redis did not take the scheduled tick "
                            f"({type(exc).__name__}: {exc})", target=backend.farm) from None
    return True
