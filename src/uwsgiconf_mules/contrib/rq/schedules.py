"""The ticks of schedules on farms routed to RQ: each enqueued once for the whole cluster, and not
while the previous tick's job has not ended (unless the schedule declares ``overlap=True``).

Every uWSGI instance that runs the same config fires the schedule (in its first dispatch mule, see
:mod:`uwsgiconf_mules.mule.schedules`); before it enqueues a tick it takes the tick's lock in the
farm's Redis, ``SET uwsgiconf_mules:schedule:<id>:<tick> <host:pid> NX EX <ttl>``: of the instances,
the one that sets it enqueues the job, the others find it set. The key expires (at least an hour,
twice the period for longer ones), so Redis keeps one small key per schedule and recent tick. When
Redis took the lock but not the job (a connection lost between the two), the mule tries the tick
again a second later, and the lock it holds (its value says ``host:pid``) lets it enqueue the job.

No overlap. The id of the last job a tick enqueued is kept in ``uwsgiconf_mules:schedule:<id>:job``
(written in the same transaction as the job, with the lock's expiry, which each skipped tick
renews). The instance that holds a tick's lock reads that job's status with RQ's own API
(``Job.get_status``) before it enqueues: a job that has not ended (``queued``, ``started``,
``deferred``, ``scheduled``, and RQ's other states before an end) makes it skip the tick; one that
ended (``finished``, ``failed``, ``stopped``, ``canceled``) or that RQ no longer has lets it
enqueue. The lock serialises the instances on each tick, so the decision holds for the cluster.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from ...declarations import Backend
from ...errors import DeliveryError
from .sender import RUN, SERIALIZER_PATHS, _client, job_options

ENDED = frozenset(("finished", "failed", "stopped", "canceled"))
"""RQ job statuses after which the next tick may be enqueued (a job RQ no longer has counts too)."""

ENQUEUED, ELSEWHERE, SKIPPED = "enqueued", "elsewhere", "skipped"
"""What :func:`enqueue_tick` did: enqueued the tick's job, found the tick taken by another instance,
or skipped the tick because the previous tick's job has not ended."""


def last_job_key(lock: str) -> str:
    """The key that keeps the id of the last job of a schedule's ticks.

    :param lock: A tick's lock key, ``uwsgiconf_mules:schedule:<id>:<tick>``.
    """
    return lock.rpartition(":")[0] + ":job"


def running(client: Any, job_id: str) -> str | None:
    """The status of job ``job_id`` when it has not ended (RQ's own reading of it), else None (ended,
    or RQ no longer has it).

    :param client: The Redis client.
    :param job_id: The job's id.
    """
    from rq.exceptions import InvalidJobOperation, NoSuchJobError
    from rq.job import Job

    try:
        found = Job(job_id, connection=client).get_status(refresh=True)
    except (InvalidJobOperation, NoSuchJobError, ValueError):  # ValueError: no job id RQ takes (a key written
        return None  # by something else): as a job RQ no longer has, never an error at each tick
    status = str(getattr(found, "value", found))
    return None if status in ENDED else status


def _options(func: str) -> dict[str, Any]:
    """The RQ options of task ``func`` (its retries and time limit, see ``sender.job_options``), its
    module imported first as a mule imports it for a call; none for a function that is no task
    (the worker refuses its job)."""
    from ...runtime import tasks as _tasks

    return {} if isinstance(_tasks.find(func.encode()), str) else job_options(func)


def enqueue_tick(backend: Backend, lock: str, *, ttl: int, func: str, args: tuple[Any, ...], kwargs: dict[str, Any],
                 timeout: float, overlap: bool = True) -> str:
    """Enqueue one tick's job unless another instance did, or (without ``overlap``) the previous
    tick's job has not ended; what this instance did: :data:`ENQUEUED`, :data:`ELSEWHERE` or
    :data:`SKIPPED`.

    :param backend: The farm's route.
    :param lock: The tick's lock key.
    :param ttl: Seconds the lock (and the key of the last job) lives.
    :param func: The task, ``package.module:function``.
    :param args: Its positional arguments.
    :param kwargs: Its keyword arguments.
    :param timeout: The send timeout: the longest wait for each reply of Redis.
    :param overlap: Whether a tick is enqueued while the previous one's job has not ended.
    :raises DeliveryError: when Redis cannot be reached (the tick is tried again by the mule).
    """
    import redis.exceptions
    import rq

    client = _client(backend, timeout)
    last = last_job_key(lock)
    me = f"{socket.gethostname()}:{os.getpid()}"
    try:
        # A lock of this process's own: it took it, and Redis did not take the job (its try again, not lost).
        if not client.set(lock, me, nx=True, ex=ttl) and client.get(lock) not in (me, me.encode()):
            return ELSEWHERE
        if not overlap:
            previous = client.get(last)
            if previous and running(client, previous.decode(errors="replace")) is not None:
                client.expire(last, ttl)
                return SKIPPED
        queue = rq.Queue(backend.queue, connection=client, serializer=SERIALIZER_PATHS[backend.serializer])
        job_id = os.urandom(16).hex()
        with client.pipeline() as pipe:  # one transaction: the job and the key that names it
            queue.enqueue_call(RUN, args=(func, *args), kwargs=kwargs, job_id=job_id, pipeline=pipe, **_options(func))
            if not overlap:
                pipe.set(last, job_id, ex=ttl)
            pipe.execute()
    except (redis.exceptions.RedisError, OSError) as exc:
        raise DeliveryError(f"{func} to farm {backend.farm!r}: Redis did not take the scheduled tick "
                            f"({type(exc).__name__}: {exc})", target=backend.farm) from None
    return ENQUEUED
