"""On a real uWSGI: a sender that waits for room in a full queue lets the other requests of its
worker run under ``--threads`` and gevent (monkey-patched or not), loses no call, and stays within
its request's budget; ``await f.aoffload(...)`` never holds its event loop; under a loop engine a
waiting sender cannot yield to (ugreen), the worker says so once in its log.

The figures (pings, p50, max) are printed by ``benchmarks/loop_engines.py``; the bounds here are
generous, for a loaded machine: a stalled worker answers one ping after seconds."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from support.harness import Server, declaration
from support.pings import MODES, PING_APP, missing, ping_while, ran, uwsgi_for
from uwsgiconf_mules.runtime.engines import UGREEN_UNSAFE

CALLS = 1500


def all_ran(server: Server, queued: int) -> None:
    server.wait_for(lambda: len(server.lines("ran")) >= queued, 120, f"{queued} calls run")
    time.sleep(0.3)  # a call run twice would show up now
    numbers = ran(server)
    assert numbers == list(range(queued)), f"lost: {sorted(set(range(queued)) - set(numbers))[:20]}, run twice: " \
        f"{sorted({n for n in numbers if numbers.count(n) > 1})[:20]}"


UGREEN_YIELDS = sys.version_info < UGREEN_UNSAFE  # see uwsgiconf_mules.runtime.engines


@pytest.mark.parametrize("mode", ["--threads 8", "--gevent 50 --gevent-monkey-patch", "--gevent 50",
                                  "--asyncio 10 --greenlet", "--async 10 --ugreen"])
def test_other_requests_run_while_a_sender_waits_for_room(uwsgi_server: Callable[..., Server], mode: str) -> None:
    if missing(mode):
        pytest.skip(missing(mode))
    if mode == "--async 10 --ugreen" and not UGREEN_YIELDS:
        pytest.skip("under ugreen a sender yields on Python 3.10 only (see uwsgiconf_mules.runtime.engines)")
    server = uwsgi_server(declaration("mules=1"), PING_APP, workers=1, extra_args=MODES[mode], uwsgi=uwsgi_for(mode))
    pinged = ping_while(server, f"/offload?0:{CALLS}")
    assert pinged.body == {"queued": CALLS, "waited": pinged.body["waited"]}
    # 1,500 calls of 2 ms keep the sender waiting about 2.5 s: a ping every 50 ms gives ~40; a
    # worker that stalls while its sender waits answers one, after seconds.
    assert len(pinged.pings) >= 10, pinged.describe()
    assert pinged.p50 < 0.025, pinged.describe()
    assert "holds the worker's other requests" not in server.log()
    all_ran(server, CALLS)


@pytest.mark.parametrize("mode", ["--gevent 50", "--asyncio 10 --greenlet"])
def test_the_budget_of_a_request_holds_per_request_under_a_loop_engine(
        uwsgi_server: Callable[..., Server], monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    # Two requests wait on the same full queue at once, in one thread: each has a budget of its own,
    # and neither waits longer than its send_timeout in total.
    if missing(mode):
        pytest.skip(missing(mode))
    monkeypatch.setenv("TEST_TASK_SECONDS", "0.005")
    server = uwsgi_server(declaration("mules=1, send_timeout=1"), PING_APP, workers=1, extra_args=MODES[mode],
                          uwsgi=uwsgi_for(mode))
    import threading

    replies: list[object] = []
    threads = [threading.Thread(target=lambda start=start: replies.append(server.get(f"/offload?{start}:3000")[1]))
               for start in (0, 100000)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(replies) == 2, replies
    for body in replies:
        assert isinstance(body, dict) and "error" in body, body
        assert "already waited 1 s on full queues" in body["error"] or "stayed full for 1 s" in body["error"], body
        assert body["waited"] < 1 + 2, body


def test_aoffload_never_holds_its_event_loop(uwsgi_server: Callable[..., Server]) -> None:
    server = uwsgi_server(declaration("mules=1"), PING_APP, workers=1, extra_args=MODES["--threads 8"])
    pinged = ping_while(server, f"/aoffload?0:{CALLS}:1")
    assert pinged.body["queued"] == CALLS, pinged.body
    # The mule reads nothing for 1 s, so the queue stays full that long: waiting in the loop (as
    # calling the function does) would hold it that long; awaiting, the loop's ticker of 1 ms runs on.
    assert pinged.body["loop_held"] < 0.3, pinged.body
    assert pinged.p50 < 0.025, pinged.describe()
    all_ran(server, CALLS)


@pytest.mark.parametrize(("mode", "engine"), [("--async 10 --ugreen", "ugreen"), ("--asyncio 10", "asyncio")])
def test_a_loop_engine_that_cannot_be_yielded_to_is_named_in_the_log(
        uwsgi_server: Callable[..., Server], mode: str, engine: str) -> None:
    # Not yielded to (ugreen from Python 3.11 on, asyncio without greenlet: see runtime/engines.py):
    # the wait holds the worker, bounded by send_timeout, and loses nothing; the worker says so once.
    if missing(mode):
        pytest.skip(missing(mode))
    if engine == "ugreen" and UGREEN_YIELDS:
        pytest.skip("under ugreen on Python 3.10 a sender yields (test_other_requests_run_while_a_sender_waits...)")
    server = uwsgi_server(declaration("mules=1"), PING_APP, workers=1, extra_args=MODES[mode], uwsgi=uwsgi_for(mode))
    status, body = server.get("/offload?0:600")
    assert status == 200 and body["queued"] == 600, body
    all_ran(server, 600)
    assert server.log().count(f"runs the {engine} loop engine: a sender waiting for room in a full mule queue holds "
                              "the worker's other requests") == 1


def test_a_reload_while_a_sender_waits_loses_nothing(tmp_path: Path, uwsgi_server: Callable[..., Server]) -> None:
    spool = tmp_path / "spool"
    server = uwsgi_server(declaration(f"mules=1, spool_dir={str(spool)!r}, reload_mercy=20"), PING_APP, workers=1,
                          extra_args=MODES["--gevent 50"])
    import threading

    reply: list[object] = []
    sender = threading.Thread(target=lambda: reply.append(server.get(f"/offload?0:{CALLS}", timeout=60)[1]))
    sender.start()
    time.sleep(0.5)  # the sender waits for room by now
    os.kill(server.proc.pid, signal.SIGHUP)
    sender.join(60)
    assert reply and isinstance(reply[0], dict), reply
    body = reply[0]
    # Every call the sender was told was queued runs once (queued calls are kept in the spool
    # across the reload); one it was told was not sent does not run.
    all_ran(server, body["queued"])
    assert body["queued"] == CALLS or "error" in body, body
    assert server.log().count("spawned uWSGI mule 1 ") >= 2  # the reload came (the mule respawned)
    assert "queued call(s) kept in the spool" in server.log()  # while the sender waited: the queue was full


def test_a_reload_while_a_sender_waits_under_asyncio_loses_nothing(
        tmp_path: Path, uwsgi_server: Callable[..., Server]) -> None:
    # uWSGI 2.0.x ends a worker of a loop engine at once on SIGHUP (it has no graceful reload in
    # async mode): the waiting request is cut without a reply. Every call it queued runs once all
    # the same: those still in the mule's queue are kept in the spool across the reload.
    mode = "--asyncio 10 --greenlet"
    if missing(mode):
        pytest.skip(missing(mode))
    spool = tmp_path / "spool"
    server = uwsgi_server(declaration(f"mules=1, spool_dir={str(spool)!r}, reload_mercy=20"), PING_APP, workers=1,
                          extra_args=MODES[mode], uwsgi=uwsgi_for(mode))
    import threading

    def send() -> None:
        with contextlib.suppress(OSError):  # cut by the reload
            server.get(f"/offload?0:{CALLS}", timeout=60)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    server.wait_for(lambda: len(server.lines("ran")) >= 100, what="the sender waits for room")
    os.kill(server.proc.pid, signal.SIGHUP)
    sender.join(60)
    server.wait_for(lambda: server.log().count("spawned uWSGI mule 1 ") >= 2, what="the reload")
    server.wait_for(lambda: len(server.lines("ran")) >= 200, what="calls kept run after the reload")
    time.sleep(2)  # what the spool kept runs by now; a call run twice would show up too
    numbers = ran(server)
    assert numbers == list(range(len(numbers))), (f"gaps: {sorted(set(range(max(numbers))) - set(numbers))[:20]}, "
                                                  f"run twice: {sorted({n for n in numbers if numbers.count(n) > 1})}")
    assert "queued call(s) kept in the spool" in server.log()
