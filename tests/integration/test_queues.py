"""Dispatch mules read their queues directly, on a real uWSGI: found, fair, lossless.

The tests share one server (``server``, module-scoped); each passes its own run name
(``?run=...``), under which the calls it makes record their results.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.harness import Server, declaration, start_server

QUEUES = declaration(
    "mules=[None, None, None, 'consumer.py'], farms=[section.workers.mule_farm('solo', [1]), "
    "section.workers.mule_farm('pair', [2, 3]), section.workers.mule_farm('mixed', [3, 4])]")

CONSUMER = '''
import json, os
import uwsgi

while True:  # uWSGI's own reader: a probe would show up here
    message = uwsgi.mule_get_msg(farms=True)
    with open(os.path.join(os.environ["TEST_RESULTS"], "consumer"), "a") as handle:
        handle.write(json.dumps({"message": repr(message)}) + "\\n")
'''

QUEUES_APP = '''
import time
from urllib.parse import parse_qsl

from uwsgiconf_mules.mule import loop as _dispatch


def params(query):
    return dict(parse_qsl(query))


def report(run, tag):
    direct = [d.decode() if isinstance(d, bytes) else d for d in _dispatch.current_queues().direct]
    record(f"{run}.direct", tag=tag, direct=direct)


report1, report2, report3 = (mule_offload(i)(report) for i in (1, 2, 3))


@mule_offload(1)
def block(seconds):
    time.sleep(seconds)


@mule_offload(1)
def direct(run, i):
    record(f"{run}.order", via="mule", i=i)


@mule_offload("solo")
def farmed(run, i):
    record(f"{run}.order", via="farm", i=i)


@mule_offload("pair")
def paired(run, i):
    record(f"{run}.pair", i=i)


@route("/report")
def report_all(query):
    run = params(query)["run"]
    return [report1(run, "1"), report2(run, "2"), report3(run, "3")]


@route("/interleave")
def interleave(query):
    run = params(query)["run"]
    block(1.0)
    return [direct(run, i) for i in range(150)] + [farmed(run, i) for i in range(150)]


@route("/pair")
def pair(query):
    run, n = params(query)["run"], int(params(query)["n"])
    return all(paired(run, i) for i in range(n))


@route("/consumer")
def consumer(query):
    return Mule(4).send("for the consumer")
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the module; each test records under its own run name."""
    server = start_server(tmp_path_factory.mktemp("queues"), QUEUES, QUEUES_APP, modules={"consumer": CONSUMER})
    yield server
    server.stop()


def found_queues(server: Server, run: str) -> dict[int, list[int | str]]:
    """What mules 1-3 read directly, once each has been in use (the search starts then)."""
    for attempt in range(1, 51):
        assert server.get(f"/report?run={run}")[1] == [True, True, True]
        lines = server.wait_lines(f"{run}.direct", 3 * attempt)
        direct = {r["mule"]: r["direct"] for r in lines[-3:]}
        if all(mule in found for mule, found in direct.items()):
            return direct
        time.sleep(0.1)
    raise AssertionError(f"the mules did not find their own queues: {direct}")


def test_dispatch_mules_read_their_own_queue_and_their_farms_directly(server: Server) -> None:
    direct = found_queues(server, "own-queue")
    assert set(direct[1]) == {1, "solo"}  # the only reader of its farm: always found
    assert 2 in direct[2] and 3 in direct[3]
    # 'mixed' has a programmed mule, which would not know a probe: never probed, read through uWSGI.
    assert "mixed" not in direct[3]


def test_queues_read_directly_take_turns(server: Server) -> None:
    assert "solo" in found_queues(server, "turns")[1]
    status, body = server.get("/interleave?run=turns")
    assert (status, body) == (200, [True] * 300)
    order = [(r["via"], r["i"]) for r in server.wait_lines("turns.order", 300, timeout=30)]
    assert sorted(order) == sorted([("mule", i) for i in range(150)] + [("farm", i) for i in range(150)])
    assert [i for via, i in order if via == "mule"] == list(range(150))
    assert [i for via, i in order if via == "farm"] == list(range(150))
    # uWSGI's own reader would run all 150 direct calls first; turns of 64 let the farm in.
    assert order.index(("farm", 0)) < order.index(("mule", 149))


def test_farm_probes_are_never_lost_calls_nor_passed_on(server: Server) -> None:
    assert server.get("/pair?run=probes&n=3000", timeout=60) == (200, True)
    runs = server.wait_lines("probes.pair", 3000, timeout=60)
    assert sorted(r["i"] for r in runs) == list(range(3000))  # each call ran exactly once
    assert {r["mule"] for r in runs} <= {2, 3}
    # The programmed mule of farm 'mixed' got what was sent to it, and never a probe.
    assert server.get("/consumer") == (200, True)
    assert [r["message"] for r in server.wait_lines("consumer", 1)] == ["b'for the consumer'"]
    log = server.log()
    for sign in ("dropped a", "cannot decode", "unknown task", "Traceback"):
        assert sign not in log



ALL_DISPATCH = declaration("mules=2, farms=[section.workers.mule_farm('pair', [1, 2])]")

WAIT_APP = '''
import sys
import time
import uwsgi
from uwsgiconf_mules.mule import loop as _dispatch

MASTER_MODULES = set(sys.modules)


def hook(message):  # a foreign message, to the queue every mule reads
    sent = float(message.decode())
    record("foreign", late=time.time() - sent)


uwsgi.mule_msg_hook = hook


def report(tag):
    queues = _dispatch.current_queues()
    record("waits", tag=tag, itself=queues.waits_itself, imported=sorted(set(sys.modules) - MASTER_MODULES))


def big(payload, tag):
    record("big", tag=tag, size=len(payload), intact=payload == bytes(range(256)) * (len(payload) // 256))


report1, report2 = mule_offload(1)(report), mule_offload(2)(report)
big_farm = mule_offload("pair")(big)


@route("/report")
def report_all(query):
    return [report1(query), report2(query)]


@route("/foreign")
def foreign(query):
    return uwsgi.mule_msg(repr(time.time()).encode())


@route("/big")
def send_big(query):
    return big_farm(bytes(range(256)) * 600, query)
'''


def test_dispatch_mules_that_found_every_queue_wait_on_them_and_miss_nothing(tmp_path: Path) -> None:
    # Every mule dispatches: the queue every mule reads is probed too, so each mule finds all the
    # queues uWSGI would poll for it (its own, that one, its farm's) and waits on them itself.
    server = start_server(tmp_path, ALL_DISPATCH, WAIT_APP)
    try:
        # A probe read first by the mate (a loaded machine can stop a mule between its send and its peek) is
        # sent again every PROBE_RESEND waits, PROBE_TRIES times: one wait of each mule per attempt.
        for attempt in range(1, 301):
            assert server.get(f"/report?{attempt}")[1] == [True, True]
            lines = server.wait_lines("waits", 2 * attempt)
            if all(r["itself"] for r in lines[-2:]):
                break
            time.sleep(0.01)
        assert {r["mule"] for r in lines[-2:] if r["itself"]} == {1, 2}
        assert [r["imported"] for r in lines[-2:]] == [[], []]  # the wait's modules came with the loop, in the master
        for i in range(5):  # to any mule: read at once by the mule whose wait it wakes
            assert server.get("/foreign")[1] is True
            late = server.wait_lines("foreign", i + 1)[-1]["late"]
            assert late < 0.5  # not at the end of a wait's second
        for i in range(3):  # 150 KiB straight into the loop's buffer
            assert server.get(f"/big?{i}")[1] is True
        assert sorted((r["tag"], r["size"], r["intact"]) for r in server.wait_lines("big", 3)) == [
            (str(i), 153600, True) for i in range(3)]
        assert len(server.lines("foreign")) == 5
    finally:
        server.stop()


UNDECLARED_APP = '''
import uwsgi
from uwsgiconf_mules.mule import loop as _dispatch
from uwsgiconf_mules.protocol.envelope import PROBE


def hook(message):  # uWSGI's own loop in the undeclared mule 2 (and foreign messages in mule 1)
    record("hooked", probe=message.startswith(PROBE))


uwsgi.mule_msg_hook = hook


@mule_offload(1)
def report(tag):
    record("waits", tag=tag, itself=_dispatch.current_queues().waits_itself)


@route("/report")
def report_route(query):
    return report(query)
'''


def test_a_mule_the_builders_did_not_declare_never_receives_a_probe(tmp_path: Path) -> None:
    # uWSGI's --mules adds a mule of its own loop: it reads the queue every mule reads, so that
    # queue is never probed, and the dispatch mule waits in uWSGI, as before.
    server = start_server(tmp_path, declaration("mules=1"), UNDECLARED_APP, extra_args=["--mules", "1"],
                          expect_mules=2)
    try:
        for i in range(20):
            assert server.get(f"/report?{i}")[1] is True
        lines = server.wait_lines("waits", 20)
        assert not any(r["itself"] for r in lines)
        time.sleep(0.3)
        assert [r for r in server.lines("hooked") if r["mule"] == 2] == []
    finally:
        server.stop()
