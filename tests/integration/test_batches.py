"""Batches (``f.map``, ``f.starmap``) on a real uWSGI: every call run once and in order, a batch
larger than the queue, a reload (SIGHUP) in the middle of a batch, and per-call failures."""

from __future__ import annotations

import collections
import os
import signal
from pathlib import Path

import pytest

from support.harness import Server, declaration, start_server

APP = '''
import time

@mule_offload(1)
def item(i, pad):
    record("item", i=i)


@mule_offload(1)
def slow(i, seconds):
    time.sleep(seconds)
    record("slow", i=i)


@mule_offload(1)
def fails(i):
    if i % 3 == 0:
        raise ValueError(f"call {i} fails")
    record("fails", i=i)


@route("/starmap")
def starmap(query):
    n, size = (int(x) for x in query.split(","))
    return item.starmap((i, "x" * size) for i in range(n))


@route("/map-fails")
def map_fails(query):
    return fails.map(range(int(query)))


@route("/slow")
def slow_batch(query):
    n, ms = (int(x) for x in query.split(","))
    return slow.starmap((i, ms / 1000) for i in range(n))


@route("/refused")
def refused(query):
    n, bad = (int(x) for x in query.split(","))
    try:
        item.starmap((i, (lambda: 0) if i == bad else "") for i in range(n))
    except Exception as exc:
        return {"error": type(exc).__name__, "failed": list(exc.failed), "queued": exc.queued, "message": str(exc)}
    return "sent"
'''

pytestmark = pytest.mark.integration


def start(tmp_path: Path) -> Server:
    config = declaration(f"mules=1, spool_dir={str(tmp_path / 'spool')!r}, reload_mercy=20")
    return start_server(tmp_path, config, APP, workers=1)


def test_a_batch_larger_than_the_queue_runs_every_call_once_in_order(tmp_path: Path) -> None:
    server = start(tmp_path)
    try:
        n = 20_000  # 150-byte calls: about 4 MB, 15 times what the queue holds
        status, body = server.get(f"/starmap?{n},100", timeout=60)
        assert (status, body) == (200, n)
        done = server.wait_lines("item", n, timeout=60)
        assert [line["i"] for line in done] == list(range(n))
        status, body = server.get("/refused?3,1")  # a call that cannot be pickled: none of its batch is sent
        assert (body["error"], body["failed"], body["queued"]) == ("PayloadError", [1], 0), body
        assert "call 1 of the batch cannot be sent" in body["message"]
        status, body = server.get("/map-fails?30")
        assert (status, body) == (200, 30)
        server.wait_lines("fails", 20)
        server.wait_for(lambda: server.log().count("ValueError: call ") >= 10, 20, "the failures")
        assert sorted(line["i"] for line in server.lines("fails")) == [i for i in range(30) if i % 3]
        assert len(server.lines("item")) == n  # the refused batch sent nothing
        status, body = server.get("/refused?5000,4000")  # the messages sent before the bad call stay queued
        assert body["failed"] == [4000] and 0 < body["queued"] < 4000, body
        done = server.wait_lines("item", n + body["queued"])
        assert [line["i"] for line in done[n:]] == list(range(body["queued"]))
    finally:
        server.stop()


def test_a_reload_in_the_middle_of_a_batch_loses_nothing_and_runs_nothing_twice(tmp_path: Path) -> None:
    server = start(tmp_path)
    try:
        n = 600  # 2 ms each: about 1.2 s for the batch, one message
        status, body = server.get(f"/slow?{n},2")
        assert (status, body) == (200, n)
        server.wait_lines("slow", 50)  # the mule is in the middle of the batch
        os.kill(server.proc.pid, signal.SIGHUP)
        server.wait_for(lambda: len(server.lines("slow")) >= n, 60, "every call of the batch")
        runs = collections.Counter(line["i"] for line in server.lines("slow"))
        assert sorted(runs) == list(range(n))  # none lost
        assert max(runs.values()) == 1  # none twice
        pids = [line["pid"] for line in server.lines("slow")]
        assert len(set(pids)) == 2, "the rest of the batch ran in the next mule"
        order = [line["i"] for line in server.lines("slow")]
        assert order == list(range(n))  # the rest, kept in one file of the spool, runs in order
        assert "queued call(s) kept in the spool" in server.log()
    finally:
        server.stop()
