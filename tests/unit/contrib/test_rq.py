"""Farms routed to RQ, the runtime side, outside uWSGI (a plain script with the declarations
record set: the same routing applies), against a real redis-server and RQ's own worker
(``SimpleWorker`` in this process; the forking worker runs in tests/integration/test_rq.py)."""

from __future__ import annotations

import datetime
import math
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import rq

from support import TESTS, remote_tasks
from support.redis_server import RedisServer
from uwsgiconf_mules import remote
from uwsgiconf_mules.contrib.rq import jobs as _jobs, sender as _remote
from uwsgiconf_mules.declarations import MuleFarm, declare
from uwsgiconf_mules.errors import DeliveryError, MulesRuntimeError, PayloadError, UnknownTaskError, UsageError
from uwsgiconf_mules.runtime import Farm

KEY = "support.remote_tasks:report"


def routes(server: RedisServer | int, send_timeout: float = 5.0, **urls: str) -> str:
    """The record of farms ``reports`` and ``pickled`` routed to ``server`` (or a port)."""
    port = server if isinstance(server, int) else server.port
    backends = {"reports": f"rq://127.0.0.1:{port}/0", "pickled": f"rq://127.0.0.1:{port}/0?serializer=pickle"}
    backends.update(urls)
    return declare(backends=backends, send_timeout=send_timeout).record()


def forget_clients() -> None:
    for _, client in _remote._clients.values():
        client.close()
    _remote._clients.clear()


@pytest.fixture
def routed(declared: Callable[[str], None], empty_redis: RedisServer) -> Iterator[RedisServer]:
    """Farms ``reports`` (JSON) and ``pickled`` routed to the session's (emptied) redis-server."""
    forget_clients()
    declared(routes(empty_redis))
    remote_tasks.CALLS.clear()
    yield empty_redis
    forget_clients()


def queue(server: RedisServer, name: str = "reports", serializer: str = "json") -> rq.Queue:
    return rq.Queue(name, connection=server.client(), serializer=_remote.SERIALIZER_PATHS[serializer])


def work(server: RedisServer, name: str = "reports", serializer: str = "json") -> None:
    """Run RQ's SimpleWorker in burst mode, with the job class ``uwsgiconf-mules worker`` gives it."""
    worker = rq.SimpleWorker([queue(server, name, serializer)], connection=server.client(),
                             serializer=_remote.SERIALIZER_PATHS[serializer], job_class=remote.Job)
    worker.work(burst=True, max_jobs=100)  # bounded: a job that queued itself again would never end a burst


def our_clients(server: RedisServer) -> list[str]:
    names = [client["name"] for client in server.client().client_list()]
    return sorted(name for name in names if name.startswith("uwsgiconf-mules:"))


def test_an_offload_to_a_routed_farm_is_an_rq_job_that_a_worker_runs_once(routed: RedisServer) -> None:
    assert remote_tasks.report(1, "a", extra=[1, {"k": None, "f": 0.5}]) is True
    assert remote_tasks.send_mail("bob@example.com") is True  # @mule_offload('reports')
    assert remote_tasks.CALLS == []  # queued, not run here
    jobs = queue(routed).jobs
    assert [(job.func_name, job.args[0]) for job in jobs] == [
        ("uwsgiconf_mules.remote.run", KEY), ("uwsgiconf_mules.remote.run", "support.remote_tasks:send_mail")]
    work(routed)
    assert remote_tasks.CALLS == [("report", (1, "a"), {"extra": [1, {"k": None, "f": 0.5}]}),
                                  ("send_mail", ("bob@example.com",), {"when": None})]
    assert len(queue(routed)) == 0  # the job ran the function, not its offloading wrapper: nothing re-queued
    assert jobs[0].fetch(jobs[0].id, connection=routed.client(), serializer=_remote.SERIALIZER_PATHS["json"]
                         ).return_value() == "report 1"


def test_rq_option_names_are_the_tasks_own_arguments(routed: RedisServer) -> None:
    options = {"job_timeout": 1, "description": "mine", "result_ttl": 0, "at_front": True, "job_id": "x",
               "depends_on": "y", "timeout": 2, "meta": {"a": 1}}
    assert remote_tasks.report(7, **options)
    work(routed)
    assert remote_tasks.CALLS == [("report", (7,), options)]


JSON_REFUSED = {
    "tuple": ((1, 2), {}, "argument 'number' is a tuple (JSON would give the worker a list)"),
    "bytes": (b"x", {}, "argument 'number' is a bytes"),
    "set": ({1}, {}, "argument 'number' is a set"),
    "datetime": (1, {"when": datetime.datetime(2026, 1, 1)}, "argument 'when' is a datetime"),
    "int keys": ({1: "a"}, {}, "argument 'number' is a dict with the int key 1 (JSON keys are strings)"),
    "nested": ([{"a": (1,)}], {}, "argument 'number'[0]['a'] is a tuple"),
    "nan": (math.nan, {}, "argument 'number' is nan, which JSON does not carry"),
}


@pytest.mark.parametrize("case", sorted(JSON_REFUSED))
def test_json_jobs_refuse_what_json_would_change_naming_the_argument(routed: RedisServer, case: str) -> None:
    value, kwargs, message = JSON_REFUSED[case]
    func = remote_tasks.send_mail if "when" in kwargs else remote_tasks.report
    with pytest.raises(PayloadError) as info:
        func(value, **kwargs)
    assert message.replace("'number'", "'to'" if func is remote_tasks.send_mail else "'number'") in str(info.value)
    assert str(info.value).startswith(f"{func.key}: argument")
    assert "declare serializer=pickle" in str(info.value)
    assert len(queue(routed)) == 0


def test_extra_positional_arguments_are_named_by_position(routed: RedisServer) -> None:
    with pytest.raises(PayloadError, match=r"argument 3 \(positional\) is a tuple"):
        remote_tasks.report(1, "a", (2,))


def test_pickle_is_a_declared_choice_and_keeps_every_type(routed: RedisServer) -> None:
    value = (1, b"x", {2}, datetime.date(2026, 1, 1), {3: "int key"})
    assert remote_tasks.pickled(value)
    work(routed, "pickled", "pickle")
    assert remote_tasks.CALLS == [("pickled", (value,), {})]


def test_a_job_runs_only_a_function_registered_by_mule_offload(routed: RedisServer) -> None:
    with pytest.raises(UnknownTaskError, match=r"unknown task support\.remote_tasks:not_offloaded"):
        remote.run("support.remote_tasks:not_offloaded", 1)
    with pytest.raises(UnknownTaskError, match="unknown task os:getcwd"):
        remote.run("os:getcwd")
    forged = queue(routed)
    forged.enqueue_call(_remote.RUN, args=("support.remote_tasks:not_offloaded", 1))
    forged.enqueue_call("support.remote_tasks.not_offloaded", args=(2,))  # a job naming another function
    forged.enqueue_call("os.getcwd")
    work(routed)
    assert remote_tasks.CALLS == []
    failed = rq.registry.FailedJobRegistry(queue=forged)
    assert len(failed) == 3
    for job_id in failed.get_job_ids():
        job = forged.fetch_job(job_id)
        assert job is not None
        assert "UnknownTaskError: job refused" in (job.latest_result().exc_string or "")  # type: ignore[union-attr]


def test_no_connection_before_the_first_send_then_one_per_process(routed: RedisServer) -> None:
    route = Farm("reports")._route()  # what resolving a routed farm does (in uWSGI: in the master)
    assert route.sender is not None
    assert our_clients(routed) == []
    assert remote_tasks.report(1) and remote_tasks.report(2) and remote_tasks.send_mail("x")
    assert our_clients(routed) == [f"uwsgiconf-mules:{os.getpid()}"]
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            remote_tasks.report(3)
            os.write(write, "\n".join(our_clients(routed)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        seen = pipe.read().split("\n")
    os.waitpid(pid, 0)
    assert seen == sorted([f"uwsgiconf-mules:{os.getpid()}", f"uwsgiconf-mules:{pid}"])
    assert remote_tasks.report(4)  # the parent's connection was not shared with the child
    work(routed)
    assert [call[1][0] for call in remote_tasks.CALLS] == [1, 2, "x", 3, 4]


def test_redis_down_is_a_delivery_error_and_nothing_is_queued(declared: Callable[[str], None],
                                                              own_redis: RedisServer) -> None:
    forget_clients()
    declared(routes(own_redis))
    remote_tasks.CALLS.clear()
    assert remote_tasks.report(1)
    work(own_redis)
    own_redis.stop()
    with pytest.raises(DeliveryError) as info:
        remote_tasks.report(2)
    assert isinstance(info.value, MulesRuntimeError)
    assert f"{KEY} to farm 'reports' (RQ queue 'reports' at 127.0.0.1:{own_redis.port}/0): Redis did not accept " \
           "the job (ConnectionError" in str(info.value)
    assert "the call was not queued" in str(info.value)
    own_redis.start()  # the same port, empty: the same sender connects again
    assert remote_tasks.report(3)
    work(own_redis)
    assert [call[1][0] for call in remote_tasks.CALLS] == [1, 3]
    forget_clients()


def test_a_silent_redis_is_a_delivery_error_within_the_timeouts(declared: Callable[[str], None]) -> None:
    forget_clients()
    with socket.socket() as silent:  # accepts connections (the kernel does), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        declared(routes(silent.getsockname()[1], send_timeout=0.3))
        outcome: list[BaseException] = []

        def call() -> None:
            try:
                remote_tasks.report(1)
            except BaseException as exc:
                outcome.append(exc)

        thread = threading.Thread(target=call, daemon=True)
        thread.start()
        thread.join(30)  # a bound for the test itself: without timeouts the call would never return
        assert not thread.is_alive(), "the send did not return: Redis's silence was waited on without a bound"
    assert len(outcome) == 1 and isinstance(outcome[0], DeliveryError), outcome
    assert "Redis did not accept the job (TimeoutError" in str(outcome[0])
    assert "send timeout 0.3 s" in str(outcome[0])
    forget_clients()


def test_credentials_come_from_the_environment_at_run_time(declared: Callable[[str], None], tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    server = RedisServer(tmp_path / "redis", password="s3cret").start()
    try:
        forget_clients()
        record = routes(server, reports=f"rq://127.0.0.1:{server.port}/0?password_env=TEST_REDIS_PASSWORD",
                        pickled="rq://?url_env=TEST_REDIS_URL&serializer=pickle")
        assert "s3cret" not in record
        declared(record)
        monkeypatch.delenv("TEST_REDIS_PASSWORD", raising=False)
        monkeypatch.delenv("TEST_REDIS_URL", raising=False)
        with pytest.raises(DeliveryError, match="environment variable TEST_REDIS_PASSWORD is not set here"):
            remote_tasks.report(1)
        with pytest.raises(DeliveryError, match="environment variable TEST_REDIS_URL is not set here"):
            remote_tasks.pickled(1)
        monkeypatch.setenv("TEST_REDIS_PASSWORD", "s3cret")
        monkeypatch.setenv("TEST_REDIS_URL", f"redis://:s3cret@127.0.0.1:{server.port}/0")
        assert remote_tasks.report(1) and remote_tasks.pickled(2)
        assert len(queue(server)) == 1 and len(queue(server, "pickled", "pickle")) == 1
    finally:
        forget_clients()
        server.stop()


def test_a_routed_farm_takes_offloads_not_messages(routed: RedisServer) -> None:
    farm = Farm("reports")
    assert farm.mules == ()
    assert "reports" not in [farm.name for farm in Farm.get_farms()]
    with pytest.raises(UsageError, match="routed to an offload backend"):
        farm.send("hello")


def imported_by(record: str, code: str) -> list[str]:
    script = f"import sys\n{code}\nprint(sorted(name for name in sys.modules if name.split('.')[0] in ('rq', 'redis')))"
    env = dict(os.environ, UWSGICONF_MULES=record, PYTHONPATH=str(TESTS))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env).stdout
    return eval(out)  # type: ignore[no-any-return]


def test_rq_is_imported_only_for_a_routed_farm() -> None:
    # remote_tasks offloads to farms 'reports' and 'pickled', resolved at import (the record is set).
    assert "rq" in imported_by(routes(6379), "import support.remote_tasks")
    as_mules = declare(farms=[MuleFarm("reports", 1), MuleFarm("pickled", 1)]).record()
    assert imported_by(as_mules, "import support.remote_tasks") == []


def test_a_task_takes_keyword_arguments_named_key_self_args_kwargs(routed: RedisServer) -> None:
    assert remote_tasks.lookup(key="k1", value=1, self="s", args=[2], kwargs={"a": 3}) is True
    assert remote_tasks.lookup("k2") is True
    work(routed)
    assert remote_tasks.CALLS == [
        ("lookup", (), {"key": "k1", "value": 1, "self": "s", "args": [2], "kwargs": {"a": 3}}),
        ("lookup", (), {"key": "k2", "value": None, "self": None, "args": None, "kwargs": None})]
    assert len(rq.registry.FailedJobRegistry(queue=queue(routed))) == 0


def test_forged_callbacks_retries_and_repeats_never_run(routed: RedisServer) -> None:
    forged = queue(routed)
    cases = {
        "success": {"on_success": rq.Callback("support.remote_tasks.dropped")},
        "failure": {"on_failure": rq.Callback("support.remote_tasks.dropped")},
        "stopped": {"on_stopped": rq.Callback("support.remote_tasks.dropped")},
        "retry": {"retry": rq.Retry(max=3)},
        "repeat": {"repeat": rq.Repeat(times=3)},
    }
    ids = {name: forged.enqueue_call(_remote.RUN, args=(KEY, name), **options).id for name, options in cases.items()}
    # A job naming another function, with a failure callback: refused, and the callback does not run either.
    ids["other"] = forged.enqueue_call("builtins.print", args=("x",),
                                       on_failure=rq.Callback("support.remote_tasks.dropped")).id
    blocker = forged.enqueue_call(_remote.RUN, args=(KEY, "first"))
    ids["depends"] = forged.enqueue_call(_remote.RUN, args=(KEY, "after"), depends_on=blocker).id
    work(routed)
    assert remote_tasks.CALLS == [("report", ("first",), {})]  # only the plain job ran; nothing was dropped
    failed = rq.registry.FailedJobRegistry(queue=forged)
    assert sorted(failed.get_job_ids()) == sorted(ids.values())
    for name, job_id in ids.items():
        job = forged.fetch_job(job_id)
        assert job is not None
        exc = job.latest_result().exc_string or ""  # type: ignore[union-attr]
        assert "UnknownTaskError: job refused" in exc, (name, exc)
    assert len(forged) == 0  # nothing was queued again (retry, repeat)


def test_every_field_of_a_job_is_refused_or_known_harmless(routed: RedisServer) -> None:
    # A guard for RQ upgrades: a field RQ adds to the job hash must be classified here.
    harmless = {"created_at", "data", "origin", "description", "enqueued_at", "started_at", "ended_at",
                "last_heartbeat", "worker_name", "group_id", "result", "exc_info", "result_ttl",
                "failure_ttl", "ttl", "status", "meta", "enqueue_at_front", "success_callback_timeout",
                "failure_callback_timeout", "stopped_callback_timeout"}
    from rq.webhook import Webhook

    job = rq.job.Job.create(_remote.RUN, args=(KEY,), connection=routed.client(), result_ttl=1, ttl=1, failure_ttl=1,
                            description="d", depends_on=["x"], timeout=1, id="i", origin="q", meta={"a": 1},
                            on_success=rq.Callback("m.f", timeout=1), on_failure=rq.Callback("m.f", timeout=1),
                            on_stopped=rq.Callback("m.f", timeout=1), group_id="g",
                            webhooks=[Webhook("http://x/", "finished")])
    job.retries_left, job.retry_intervals, job.number_of_retries, job.enqueue_at_front_on_retry = 1, [1], 1, True
    job.repeats_left, job.repeat_intervals, job.rate_limit_key, job.rate_limit_concurrency = 1, [1], "k", 1
    job.allow_dependency_failures, job.enqueue_at_front, job._result, job._exc_info = True, True, 1, "e"
    fields = set(job.to_dict())
    assert fields - harmless - set(remote.REFUSED_FIELDS) - set(_jobs.CHECKED_FIELDS) == set()
    assert set(remote.REFUSED_FIELDS) <= fields


def test_the_job_class_never_runs_callbacks(routed: RedisServer) -> None:
    callback = rq.Callback("support.remote_tasks.dropped")
    job = remote.Job.create(_remote.RUN, args=(KEY,), connection=routed.client(), on_success=callback,
                            on_failure=callback, on_stopped=callback)
    assert (job.success_callback, job.failure_callback, job.stopped_callback) == (None, None, None)


def test_the_worker_runs_the_mule_init_hook_once_before_the_first_task(declared: Callable[[str], None],
                                                                       empty_redis: RedisServer) -> None:
    forget_clients()
    declared(declare(backends={"reports": f"rq://127.0.0.1:{empty_redis.port}/0"},
                     mule_init="support.remote_tasks:init_hook").record())
    remote_tasks.CALLS.clear()
    _jobs._started.clear()  # this process has not run the start-up steps yet
    assert remote_tasks.report(1) and remote_tasks.report(2)
    work(empty_redis)
    assert [call[0] for call in remote_tasks.CALLS] == ["init_hook", "report", "report"]
    forget_clients()


def test_a_job_hash_rq_cannot_read_fails_that_job_only(routed: RedisServer) -> None:
    forged = queue(routed)
    client = routed.client()
    assert remote_tasks.report(1)
    bad = forged.enqueue_call(_remote.RUN, args=(KEY, "bad"), description="kept", result_ttl=77)
    client.hset(bad.key, mapping={"timeout": "abc", "status": "bogus"})
    assert remote_tasks.report(3)
    work(routed)
    assert [call[1][0] for call in remote_tasks.CALLS] == [1, 3]  # the worker went on; the bad job did not run
    job = remote.Job.fetch(bad.id, connection=client, serializer=_remote.SERIALIZER_PATHS["json"])
    assert job.is_failed
    assert (job.description, job.result_ttl, job.origin) == ("kept", 77, "reports")  # the fields RQ could read
    exc = job.latest_result().exc_string or ""  # type: ignore[union-attr]
    assert ("UnknownTaskError: job refused: RQ cannot read its field(s) 'status' (ValueError: 'bogus' is not a "
            "valid JobStatus), 'timeout' (AssertionError); nothing ran") in exc, exc


def test_aoffload_to_a_routed_farm_never_holds_its_event_loop(routed: RedisServer) -> None:
    import asyncio

    ticks: list[float] = []

    async def tick() -> None:
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.01)

    async def main() -> bool:
        ticker = asyncio.ensure_future(tick())
        await asyncio.sleep(0.02)
        routed.client().execute_command("CLIENT", "PAUSE", "400", "WRITE")  # Redis holds writes 0.4 s
        began = time.monotonic()
        try:
            return await remote_tasks.report.aoffload(1)
        finally:
            assert time.monotonic() - began >= 0.3  # the send did wait for Redis...
            assert len([at for at in ticks if at > began]) >= 10  # ...while the loop went on
            ticker.cancel()

    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(main()) is True
    finally:
        loop.close()
    assert [job.args[0] for job in queue(routed).jobs] == [KEY]


def test_a_batch_to_a_routed_farm_is_one_pipeline_of_jobs_checked_first(routed: RedisServer,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    remote_tasks.report(-1, "connects")
    queue(routed).empty()
    monkeypatch.setattr(rq.Queue, "enqueue_call", None)  # not one job at a time: Queue.enqueue_many
    assert remote_tasks.report.starmap([(i, "b") for i in range(50)]) == 50
    jobs = queue(routed).jobs
    assert [list(job.args) for job in jobs] == [[KEY, i, "b"] for i in range(50)]
    with pytest.raises(PayloadError, match=r"1 of 3 calls cannot be sent, so none was: call 2: .*a tuple") as info:
        remote_tasks.report.starmap([(50, "b"), (51, "b"), ((1, 2), "b")])  # JSON: checked before any is sent
    assert info.value.failed == (2,)
    assert len(queue(routed)) == 50
    work(routed)
    assert [args for _, args, _ in remote_tasks.CALLS] == [(i, "b") for i in range(50)]


FLAKY = "support.remote_tasks:flaky"


def test_retries_and_the_time_limit_of_a_task_become_rqs_retry_and_job_timeout(routed: RedisServer) -> None:
    assert _remote.job_options(KEY) == {}  # a task that declares nothing: RQ's defaults, as before
    remote_tasks.flaky("a", 3)
    (job,) = queue(routed).jobs
    assert (job.retries_left, job.retry_intervals, job.timeout) == (2, [0.0, 0.0], 30)
    work(routed)  # fails twice (ValueError), then succeeds: RQ ran it three times, the attempt visible to the task
    assert remote_tasks.CALLS == [("flaky", ("a", 1), {}), ("flaky", ("a", 2), {}), ("flaky", ("a", 3), {})]
    remote_tasks.CALLS.clear()
    remote_tasks.flaky("b", 9)  # its retries run out: failed in RQ
    remote_tasks.flaky("c", 9, "KeyError")  # not named by retry_for: not retried (RQ alone retries everything)
    work(routed)
    assert sorted(remote_tasks.CALLS) == [("flaky", ("b", 1), {}), ("flaky", ("b", 2), {}), ("flaky", ("b", 3), {}),
                                          ("flaky", ("c", 1), {})]
    assert len(rq.registry.FailedJobRegistry(queue=queue(routed))) == 2


def test_the_backoff_is_drawn_for_each_job_and_retry_delay_sets_the_next_interval(routed: RedisServer) -> None:
    from uwsgiconf_mules.runtime import policy

    found = policy.policy_of("m:f", "farm 'reports'", {"retries": 3, "retry_backoff": 2.0, "retry_backoff_max": 5.0,
                                                       "retry_jitter": False}, routed=True)
    assert found is not None
    policy.POLICIES["m:f"] = found
    try:
        assert _remote.job_options("m:f")["retry"].intervals == [2.0, 4.0, 5.0]
        found.retry_jitter = True
        drawn = [_remote.job_options("m:f")["retry"].intervals for _ in range(20)]
        assert all(1.0 <= first <= 2.0 and 2.0 <= second <= 4.0 for first, second, _ in drawn)
        assert len({tuple(one) for one in drawn}) > 1  # each job its own jitter
    finally:
        del policy.POLICIES["m:f"]
    remote_tasks.flaky("r", 2, "Retry")  # Retry() without a delay: the declared interval (0 here)
    work(routed)
    assert remote_tasks.CALLS == [("flaky", ("r", 1), {}), ("flaky", ("r", 2), {})]


def test_a_retry_field_within_what_the_task_declares_runs_and_a_forged_one_does_not(routed: RedisServer) -> None:
    forged = queue(routed)
    ids = {
        "too many": forged.enqueue_call(_remote.RUN, args=(FLAKY, "x", 9), retry=rq.Retry(max=50)).id,
        "far interval": forged.enqueue_call(_remote.RUN, args=(FLAKY, "y", 9),
                                            retry=rq.Retry(max=1, interval=10**9)).id,
        "callback": forged.enqueue_call(_remote.RUN, args=(FLAKY, "z", 9), retry=rq.Retry(max=2),
                                        on_failure=rq.Callback("support.remote_tasks.dropped")).id,
        "no retries declared": forged.enqueue_call(_remote.RUN, args=(KEY, "w"), retry=rq.Retry(max=1)).id,
    }
    remote_tasks.flaky("ours", 2)  # what our sender set: accepted
    work(routed)
    assert remote_tasks.CALLS == [("flaky", ("ours", 1), {}), ("flaky", ("ours", 2), {})]
    for name, job_id in ids.items():
        job = forged.fetch_job(job_id)
        assert job is not None and job.get_status() == "failed", name
        assert "UnknownTaskError: job refused" in (job.latest_result().exc_string or ""), name  # type: ignore[union-attr]
    assert len(forged) == 0 and len(rq.registry.ScheduledJobRegistry(queue=forged)) == 0  # none retried


def test_later_and_at_schedule_a_job_in_rqs_scheduled_registry(routed: RedisServer) -> None:
    when = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=10)
    sender = remote_tasks.report.at(when)  # type: ignore[attr-defined]
    before = time.time()
    assert remote_tasks.report.later(60)(1, via="later") is True  # type: ignore[attr-defined]
    time.sleep(0.3)
    assert sender(2) is True  # kept for a while: still the moment asked, no drift
    assert remote_tasks.flaky.later(5)("late", 1) is True  # type: ignore[attr-defined]
    registry = rq.registry.ScheduledJobRegistry(queue=queue(routed))
    scheduled = {tuple(queue(routed).fetch_job(job_id.decode()).args[1:]): score  # type: ignore[union-attr]
                 for job_id, score in routed.client().zrange(registry.key, 0, -1, withscores=True)}
    assert set(scheduled) == {(1,), (2,), ("late", 1)}
    assert before + 60 <= scheduled[(1,)] <= time.time() + 61  # never early: whole seconds rounded up
    assert scheduled[(2,)] == math.ceil(when.timestamp())  # RQ keeps whole seconds: rounded up
    jobs = {tuple(job.args[1:]): job for job in (queue(routed).fetch_job(i.decode())
                                                 for i in routed.client().zrange(registry.key, 0, -1)) if job}
    assert jobs[(1,)].get_status() == "scheduled" and jobs[(1,)].kwargs == {"via": "later"}
    assert (jobs[("late", 1)].retries_left, jobs[("late", 1)].timeout) == (2, 30)  # the task's options too
    assert len(queue(routed)) == 0 and remote_tasks.CALLS == []


def test_a_forged_timeout_past_what_the_senders_set_is_refused(routed: RedisServer) -> None:
    forged = queue(routed)
    ids = {
        "no limit": forged.enqueue_call(_remote.RUN, args=(FLAKY, "x", 1), timeout=-1).id,
        "far limit": forged.enqueue_call(_remote.RUN, args=(FLAKY, "y", 1), timeout=10**6).id,
        "no limit, none declared": forged.enqueue_call(_remote.RUN, args=(KEY, "z"), timeout=-1).id,
    }
    remote_tasks.flaky("ours", 1)  # timeout=30: its time_limit
    forged.enqueue_call(_remote.RUN, args=(KEY, "default"))  # RQ's default timeout (180 s): what our senders set
    work(routed)
    assert sorted(remote_tasks.CALLS) == [("flaky", ("ours", 1), {}), ("report", ("default",), {})]
    for name, job_id in ids.items():
        job = forged.fetch_job(job_id)
        assert job is not None and job.get_status() == "failed", name
        assert "UnknownTaskError: job refused" in (job.latest_result().exc_string or ""), name  # type: ignore[union-attr]
        assert "timeout" in (job.latest_result().exc_string or ""), name  # type: ignore[union-attr]


def test_a_routed_schedule_s_tick_carries_the_task_s_retries_and_time_limit(routed: RedisServer) -> None:
    from uwsgiconf_mules.contrib.rq import schedules as _rq_schedules
    from uwsgiconf_mules.declarations.backends import parse_backend

    backend = parse_backend("reports", f"rq://127.0.0.1:{routed.port}/0")
    assert _rq_schedules.enqueue_tick(backend, "uwsgiconf_mules:schedule:t:1", ttl=60, func=FLAKY, args=("t", 1),
                                      kwargs={}, timeout=5.0) == _rq_schedules.ENQUEUED
    (job,) = queue(routed).jobs
    assert (list(job.args), job.retries_left, job.timeout) == ([FLAKY, "t", 1], 2, 30)


def test_a_routed_tick_that_redis_did_not_take_is_enqueued_at_the_next_try(routed: RedisServer,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import redis.exceptions

    from uwsgiconf_mules.contrib.rq import schedules as _rq_schedules
    from uwsgiconf_mules.declarations.backends import parse_backend

    backend = parse_backend("reports", f"rq://127.0.0.1:{routed.port}/0")
    lock = "uwsgiconf_mules:schedule:t:2"

    def dropped(*args: object, **kwargs: object) -> None:
        raise redis.exceptions.ConnectionError("connection reset by peer")  # after the lock was set

    with monkeypatch.context() as patched:
        patched.setattr(rq.Queue, "enqueue_call", dropped)
        with pytest.raises(DeliveryError, match="Redis did not take the scheduled tick"):
            _rq_schedules.enqueue_tick(backend, lock, ttl=60, func=KEY, args=("t",), kwargs={}, timeout=5.0)
    # The mule tries the tick again a second later: not lost for the whole cluster behind its own lock.
    assert _rq_schedules.enqueue_tick(backend, lock, ttl=60, func=KEY, args=("t",), kwargs={},
                                      timeout=5.0) == _rq_schedules.ENQUEUED
    assert [list(job.args) for job in queue(routed).jobs] == [[KEY, "t"]]


@pytest.mark.parametrize("job_id", ["../x", "a b", "x\nHSET", "", "é"])
def test_a_result_id_of_a_routed_farm_with_no_job_id_rq_takes_is_no_result(routed: RedisServer, job_id: str) -> None:
    from uwsgiconf_mules.errors import ResultNotFound
    from uwsgiconf_mules.runtime import Result

    with pytest.raises(ResultNotFound, match="no result"):
        Result.get(f"reports/{job_id}")  # a status page's id from the request: never a ValueError of RQ


def test_a_result_of_a_routed_farm_whose_job_hash_rq_cannot_read_is_no_result(routed: RedisServer) -> None:
    from uwsgiconf_mules.errors import ResultNotFound
    from uwsgiconf_mules.runtime import Result

    client = routed.client()
    client.hset("rq:job:planted", mapping={"data": b"not json", "timeout": "abc", "status": "bogus"})
    client.hset("rq:job:nodata", mapping={"status": "finished"})
    for job_id in ("planted", "nodata"):
        with pytest.raises(ResultNotFound):
            Result.get(f"reports/{job_id}")
