"""Schedules across hosts on a real uWSGI: a farm routed to RQ gets each tick once from two
instances of the same config (one redis-server), and none while the previous tick's job is queued
or running on RQ; a per-host flag keeps a schedule of a farm of mules to the hosts that set it."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable

import pytest
import rq

from support.harness import BIN, Server
from support.redis_server import RedisServer

ROUTED = """
import os
from uwsgiconf_mules import Section
section = Section()
section.workers.set_mules_params(mules=1, spool_dir=os.path.join(os.getcwd(), 'spool'))
section.workers.set_offload_backends(reports='rq://127.0.0.1:{port}/0?queue=reports')
section.workers.schedule('app:report', every=1, farm='reports', args=['tick']{options})
uwsgi_configuration = section.as_configuration()
"""
LOCKS = "uwsgiconf_mules:schedule:*[0-9]"  # the ticks' locks (not the key of the last job)

APP = '''
import time


@Farm("reports").offload()
def report(label):
    record("report", label=label, at=time.time())


@Farm("reports").offload()
def slow(label):
    began = time.time()
    time.sleep(2.5)
    record("slow", label=label, at=began, end=time.time())
'''

LOCAL = '''
import time


@mule_offload(1)
def local(label):
    record("local", label=label, at=time.time())
'''


def test_two_instances_of_one_config_enqueue_each_tick_once(uwsgi_server: Callable[..., Server],
                                                            own_redis: RedisServer) -> None:
    config = ROUTED.format(port=own_redis.port, options=", overlap=True")
    servers = [uwsgi_server(config, APP, workers=1), uwsgi_server(config, APP, workers=1)]
    time.sleep(6)
    for server in servers:
        server.stop()
    client = own_redis.client()
    locks = sorted(int(key.rpartition(b":")[2]) // 1_000_000_000 for key in client.keys(LOCKS))
    jobs = len(rq.Queue("reports", connection=client))
    assert jobs == len(locks) >= 5, (jobs, locks)  # each tick enqueued once, by one instance
    assert locks == list(range(locks[0], locks[0] + len(locks))), locks  # none lost while both ran
    states = [json.loads(next((server.directory / "spool" / "schedules").glob("*.json")).read_text())
              for server in servers]
    assert sum(state.get("runs", 0) for state in states) == jobs
    assert all(state.get("runs", 0) + state.get("elsewhere", 0) >= 4 for state in states), states  # both fired
    assert all(0 < client.ttl(key) <= 3600 for key in client.keys(LOCKS))
    proc = subprocess.run([str(BIN / "uwsgiconf-mules"), "worker", "--burst", "uwsgicfg.py"],
                          cwd=servers[0].directory, env=dict(os.environ, TEST_RESULTS=str(servers[0].results)),
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(servers[0].lines("report")) == jobs


FLAGGED = """
import os
from uwsgiconf_mules import Section
section = Section()
section.workers.set_mules_params(mules=1, spool_dir=os.path.join(os.getcwd(), 'spool'))
section.workers.schedule('app:local', every=1, mule=1, args=['flagged'], host_env='RUN_SCHEDULES')
uwsgi_configuration = section.as_configuration()
"""


def test_a_schedule_with_a_host_flag_fires_only_where_it_is_set(uwsgi_server: Callable[..., Server],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RUN_SCHEDULES", raising=False)
    plain = uwsgi_server(FLAGGED, LOCAL, workers=1)
    monkeypatch.setenv("RUN_SCHEDULES", "1")  # the environment of the second host's uWSGI
    flagged = uwsgi_server(FLAGGED, LOCAL, workers=1)
    time.sleep(3.5)
    assert len(flagged.lines("local")) >= 2
    assert plain.lines("local") == []
    assert not (plain.directory / "spool" / "schedules").exists()


def test_a_long_rq_job_is_not_overlapped_across_two_instances_and_the_skips_are_counted(
        uwsgi_server: Callable[..., Server], own_redis: RedisServer) -> None:
    config = ROUTED.format(port=own_redis.port, options="").replace("'app:report'", "'app:slow'") \
        .replace("mules=1,", "mules=1, stats=os.path.join(os.getcwd(), 'stats.sock'),")
    servers = [uwsgi_server(config, APP, workers=1), uwsgi_server(config, APP, workers=1)]
    worker_log = servers[0].directory / "worker.log"
    with open(worker_log, "wb") as log:
        worker = subprocess.Popen([str(BIN / "uwsgiconf-mules"), "worker", "uwsgicfg.py"], cwd=servers[0].directory,
                                  env=dict(os.environ, TEST_RESULTS=str(servers[0].results)),
                                  stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    client = own_redis.client()
    queue = rq.Queue("reports", connection=client)
    seen = []  # jobs of the schedule queued or running, every 0.2 s

    def in_rq() -> int:  # read in one transaction: a job moving from the queue to the started registry
        pipe = client.pipeline(transaction=True)  # is never counted twice
        pipe.llen(queue.key)
        pipe.zcard(queue.started_job_registry.key)
        return sum(pipe.execute())
    try:
        servers[0].wait_lines("slow", 1, timeout=15)  # the worker is up and ran a first job
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            seen.append(in_rq())
            time.sleep(0.2)
        top = subprocess.run([str(BIN / "uwsgiconf-mules"), "top", "--once", "uwsgicfg.py"],
                             cwd=servers[0].directory, capture_output=True, text=True, timeout=30, check=False)
        for server in servers:
            server.stop()
        assert max(seen) == 1, seen  # never a second job while one is queued or running
        servers[0].wait_for(lambda: in_rq() == 0, timeout=10, what="the last job ended")
    finally:
        worker.terminate()
        try:
            worker.wait(20)
        except subprocess.TimeoutExpired:  # say so, without hiding what failed above
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(10)
        with contextlib.suppress(ProcessLookupError):  # the scheduler and the work horse it may have left
            os.killpg(worker.pid, signal.SIGKILL)
    errors = worker_log.read_text(errors="replace")
    runs = servers[0].lines("slow")
    assert all(b["at"] >= a["end"] for a, b in itertools.pairwise(runs)), (runs, errors[-3000:])
    states = [json.loads(next((server.directory / "spool" / "schedules").glob("*.json")).read_text())
              for server in servers]
    assert sum(state.get("runs", 0) for state in states) == len(runs) >= 3, (states, runs)
    assert sum(state.get("skipped", 0) for state in states) >= 5, states  # 2 of every 3 ticks at least
    assert all(state.get("runs", 0) + state.get("skipped", 0) + state.get("elsewhere", 0) >= 6 for state in states)
    assert sum("the RQ job of its previous tick has not ended" in server.log() for server in servers) >= 1
    assert top.returncode == 0, top.stderr
    lines = top.stdout.splitlines()
    at = next(index for index, line in enumerate(lines) if line.startswith("SCHEDULE"))
    row = lines[at + 1].split()
    assert row[:2] == ["app:slow", "farm:reports"] and int(row[4]) >= 1, (lines[at], lines[at + 1])  # its skips
