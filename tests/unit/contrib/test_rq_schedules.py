"""The ticks of a schedule on a farm routed to RQ (contrib.rq.schedules) against a real
redis-server: each tick once (its lock), and not while the previous tick's job has not ended, as
RQ's own status of that job says."""

from __future__ import annotations

import pytest
import rq
from rq.job import Job, JobStatus

from support.redis_server import RedisServer
from uwsgiconf_mules.contrib.rq import schedules as engine
from uwsgiconf_mules.declarations.backends import parse_backend

LOCK = "uwsgiconf_mules:schedule:1234567890123:{tick}"


def tick(redis: RedisServer, number: int, overlap: bool = False) -> str:
    backend = parse_backend("reports", f"rq://127.0.0.1:{redis.port}/0?queue=reports")
    return engine.enqueue_tick(backend, LOCK.format(tick=number), ttl=60, func="app:report", args=("x",), kwargs={},
                               timeout=5.0, overlap=overlap)


def last_job(redis: RedisServer) -> Job:
    client = redis.client()
    return Job.fetch(client.get("uwsgiconf_mules:schedule:1234567890123:job").decode(), connection=client,
                     serializer=rq.serializers.JSONSerializer)


def test_a_tick_is_enqueued_once_and_its_job_named_under_the_schedule_s_keys(empty_redis: RedisServer,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    assert tick(empty_redis, 1) == engine.ENQUEUED
    with monkeypatch.context() as patched:
        patched.setattr(engine.socket, "gethostname", lambda: "another-host")
        assert tick(empty_redis, 1) == engine.ELSEWHERE  # another instance, the same tick
    client = empty_redis.client()
    queue = rq.Queue("reports", connection=client, serializer=rq.serializers.JSONSerializer)
    assert queue.job_ids == [last_job(empty_redis).id]
    assert last_job(empty_redis).args == ["app:report", "x"]
    assert 0 < client.ttl("uwsgiconf_mules:schedule:1234567890123:job") <= 60


@pytest.mark.parametrize("status", ["queued", "started", "deferred", "scheduled"])
def test_a_tick_while_the_previous_job_has_not_ended_is_skipped(empty_redis: RedisServer, status: str) -> None:
    assert tick(empty_redis, 1) == engine.ENQUEUED
    last_job(empty_redis).set_status(JobStatus(status))
    client = empty_redis.client()
    client.expire("uwsgiconf_mules:schedule:1234567890123:job", 5)
    assert tick(empty_redis, 2) == engine.SKIPPED
    assert client.ttl("uwsgiconf_mules:schedule:1234567890123:job") > 5  # renewed while it is skipped
    assert tick(empty_redis, 3, overlap=True) == engine.ENQUEUED  # overlap=True: enqueued anyway
    assert len(rq.Queue("reports", connection=client)) == 2


@pytest.mark.parametrize("status", ["finished", "failed", "stopped", "canceled", None])
def test_a_tick_after_the_previous_job_ended_or_is_gone_is_enqueued(empty_redis: RedisServer,
                                                                    status: str | None) -> None:
    assert tick(empty_redis, 1) == engine.ENQUEUED
    first = last_job(empty_redis)
    if status is None:
        first.delete()  # its result_ttl passed
    else:
        first.set_status(JobStatus(status))
    assert tick(empty_redis, 2) == engine.ENQUEUED
    assert last_job(empty_redis).id != first.id


@pytest.mark.parametrize("planted", [b"not a job id!", b"\xff\xfe", b"a" * 5000], ids=["spaces", "bytes", "long"])
def test_a_last_job_key_that_names_no_job_rq_takes_does_not_stop_the_schedule(empty_redis: RedisServer,
                                                                             planted: bytes) -> None:
    empty_redis.client().set("uwsgiconf_mules:schedule:1234567890123:job", planted)  # written by something else
    assert tick(empty_redis, 1) == engine.ENQUEUED  # as a job RQ no longer has: never a ValueError at each tick
