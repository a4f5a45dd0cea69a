"""The lifecycle of calls on farms routed to RQ, on a real uWSGI, a real redis-server and real
``uwsgiconf-mules worker`` processes (RQ's forking worker and its SimpleWorker, with RQ's
scheduler): retries as RQ's ``Retry`` with the declared spacing, ``later``/``at`` as scheduled
jobs, ``time_limit`` as ``job_timeout``, and the job class still refusing forged fields."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import rq

from support.harness import BIN, Server
from support.redis_server import RedisServer

CONFIG = """
from uwsgiconf_mules import Section
section = Section()
section.workers.set_mules_params(mules=1, send_timeout=5)
section.workers.set_offload_backends(reports='rq://127.0.0.1:{port}/0?queue=reports')
uwsgi_configuration = section.as_configuration()
"""

APP = '''
import datetime
import time

from uwsgiconf_mules.runtime import current_attempt

BACKOFF = 3.0


@Farm("reports").offload(retries=2, retry_for=ValueError, retry_backoff=BACKOFF, retry_jitter=False)
def flaky(tag):
    record("flaky", tag=tag, attempt=current_attempt(), at=time.time())
    if current_attempt() < 3:
        raise ValueError(f"attempt {current_attempt()} fails")


@Farm("reports").offload(retries=2, retry_for=ValueError, retry_backoff=0.0)
def picky(tag):
    record("picky", tag=tag, attempt=current_attempt())
    raise KeyError(tag)  # not named by retry_for: not retried


@Farm("reports").offload(time_limit=2)
def slow(tag):
    record("slow", tag=tag, event="start")
    time.sleep(30)
    record("slow", tag=tag, event="end")


@Farm("reports").offload()
def stamp(tag, due):
    record("stamp", tag=tag, due=due, at=time.time())


def dropped(*args):
    record("dropped", args=list(args))


@route("/send")
def send(query):
    flaky("f")
    picky("p")
    slow("s")
    due = time.time() + 4
    stamp.later(4)("later", due)
    when = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=5)
    return stamp.at(when)("at", when.timestamp())
'''


@pytest.fixture
def worker_of(tmp_path: Path) -> Iterator[Callable[[Server, tuple[str, ...]], subprocess.Popen[bytes]]]:
    """Start ``uwsgiconf-mules worker`` (not in burst: RQ's scheduler runs) for a server's config;
    each is stopped at teardown (SIGTERM, then after a bound SIGKILL of its process group)."""
    started: list[subprocess.Popen[bytes]] = []

    def start(server: Server, args: tuple[str, ...]) -> subprocess.Popen[bytes]:
        log = open(tmp_path / f"worker{len(started)}.log", "wb")  # noqa: SIM115 - the worker's own output
        proc = subprocess.Popen([str(BIN / "uwsgiconf-mules"), "worker", *args, "uwsgicfg.py"], cwd=server.directory,
                                env=dict(os.environ, TEST_RESULTS=str(server.results)), stdout=log, stderr=log,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        with contextlib.suppress(ProcessLookupError):  # the scheduler and the work horse it may have left
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.parametrize("worker_args", [(), ("--worker-class", "rq.worker.SimpleWorker")],
                         ids=["forking-worker", "simple-worker"])
def test_retries_delays_and_time_limits_run_in_rq_and_forged_retries_stay_refused(
        uwsgi_server: Callable[..., Server], empty_redis: RedisServer, worker_args: tuple[str, ...],
        worker_of: Callable[[Server, tuple[str, ...]], subprocess.Popen[bytes]], tmp_path: Path) -> None:
    server = uwsgi_server(CONFIG.format(port=empty_redis.port), APP)
    queue = rq.Queue("reports", connection=empty_redis.client(), serializer="rq.serializers.JSONSerializer")
    forged = {  # written straight into Redis: retries past what the task declares, a callback with retries
        "many": queue.enqueue_call("uwsgiconf_mules.remote.run", args=("app:flaky", "many"), retry=rq.Retry(max=50)),
        "callback": queue.enqueue_call("uwsgiconf_mules.remote.run", args=("app:flaky", "callback"),
                                       retry=rq.Retry(max=2), on_failure=rq.Callback("app.dropped")),
        "undeclared": queue.enqueue_call("uwsgiconf_mules.remote.run", args=("app:stamp", "undeclared", 0),
                                         retry=rq.Retry(max=1)),
    }
    sent = time.time()
    assert server.get("/send") == (200, True)
    worker = worker_of(server, worker_args)

    flaky = server.wait_lines("flaky", 3, timeout=60)
    assert [line["attempt"] for line in flaky] == [1, 2, 3]  # failed twice, then succeeded
    spacing = [flaky[1]["at"] - flaky[0]["at"], flaky[2]["at"] - flaky[1]["at"]]
    # The declared spacing, 3 s then 6 s, within 20 %, give or take the whole seconds RQ keeps scheduled times in
    # (rounded down) and the 1 s rounds of its scheduler.
    for seconds, declared in zip(spacing, (3.0, 6.0), strict=True):
        assert declared * 0.8 - 1.0 <= seconds <= declared * 1.2 + 1.0, spacing
    stamps = server.wait_lines("stamp", 2, timeout=30)
    assert sorted(line["tag"] for line in stamps) == ["at", "later"]
    for line in stamps:  # none early; RQ's scheduler moves a due job within about a second
        assert line["due"] <= line["at"] <= line["due"] + 3.0, line
        assert line["at"] >= sent + 3.0
    time.sleep(1.5)  # nothing runs twice
    assert len(server.lines("flaky")) == 3 and len(server.lines("stamp")) == 2
    assert [line["attempt"] for line in server.lines("picky")] == [1]
    assert [line["event"] for line in server.lines("slow")] == ["start"]  # stopped by job_timeout
    assert server.lines("dropped") == []  # the forged callback never ran
    failed = rq.registry.FailedJobRegistry(queue=queue)
    for name, job in forged.items():
        job.refresh()
        assert job.get_status() == "failed", name
        assert "UnknownTaskError: job refused" in (job.latest_result().exc_string or ""), name  # type: ignore[union-attr]
    assert len(failed) == 5  # the three forged, picky and slow
    texts = [queue.fetch_job(job_id).latest_result().exc_string  # type: ignore[union-attr]
             for job_id in failed.get_job_ids()]
    assert any("JobTimeoutException" in (text or "") for text in texts), texts
    assert worker.poll() is None
