"""A sender that waits for room while another client pings the same worker: the app, and the
client that measures it (what ``tests/integration/test_loop_engines.py`` asserts and
``benchmarks/loop_engines.py`` prints).

``/offload?START:COUNT[:PAUSE]`` offloads COUNT calls of ``TEST_TASK_SECONDS`` (default 2 ms) to
mule 1, numbered from START, from one request (after a call that holds the mule PAUSE seconds);
``/aoffload?START:COUNT[:PAUSE]`` does the same from a coroutine (``await f.aoffload``, in an event
loop of its own) while a ticker on that loop measures the longest time the loop was held. Each call
records its number once it ran (``results/ran``).
"""

from __future__ import annotations

import os
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from .harness import UWSGI, UWSGI_ARGS, Server

MODES = {
    "--threads 8": ("--threads", "8"),
    "--gevent 50 --gevent-monkey-patch": ("--gevent", "50", "--gevent-monkey-patch"),
    "--gevent 50": ("--gevent", "50"),
    "--async 10 --ugreen": ("--async", "10", "--ugreen"),
    "--asyncio 10 --greenlet": ("--asyncio", "10", "--greenlet"),
    "--asyncio 10": ("--asyncio", "10"),
}
"""Worker modes: name -> uWSGI options (one worker)."""


ASYNCIO_UWSGI = os.environ.get("UWSGICONF_MULES_TEST_UWSGI_ASYNCIO", "")
"""A uWSGI built with the asyncio and greenlet plugins (pip builds it without them): ``make test``
builds one into the venv (``make uwsgi-asyncio``) and names it here."""


def uwsgi_for(mode: str) -> tuple[str, ...] | None:
    """The uWSGI to run ``mode`` with: :data:`ASYNCIO_UWSGI` (on this venv) for ``--asyncio``, else
    the harness's (None)."""
    if MODES[mode][0] == "--asyncio" and ASYNCIO_UWSGI:
        return ASYNCIO_UWSGI, "--virtualenv", sys.prefix
    return None


def missing(mode: str) -> str:
    """Why no uWSGI of the tests can run ``mode`` (its first option is not in ``uwsgi --help``:
    the plugin is not built in; pip builds uWSGI without the greenlet and asyncio plugins, see
    :data:`ASYNCIO_UWSGI`); empty when one can."""
    import subprocess

    option = MODES[mode][0]
    command = uwsgi_for(mode) or (str(UWSGI), *UWSGI_ARGS)
    shown = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=30,
                           stdin=subprocess.DEVNULL, check=False).stdout
    if any(line.split()[:1] == [option] for line in shown.splitlines()):
        return ""
    return f"{command[0]} has no {option} (its plugin is not built in; `make uwsgi-asyncio` builds one that has)"


PING_APP = '''
import asyncio
import time

from uwsgiconf_mules.errors import DeliveryError

TASK_SECONDS = float(os.environ.get("TEST_TASK_SECONDS", "0.002"))


@mule_offload()
def task(i):
    time.sleep(TASK_SECONDS)
    record("ran", i=i)


@mule_offload()
def pause(seconds):
    time.sleep(seconds)


def numbers(query):
    start, count, *stall = query.split(":")
    if stall:  # the mule stops reading for as long first: the queue stays full that long
        pause(float(stall[0]))
    return range(int(start), int(start) + int(count))


@route("/offload")
def offload(query):
    queued, started = 0, time.monotonic()
    try:
        for i in numbers(query):
            task(i)
            queued += 1
    except DeliveryError as exc:
        return {"queued": queued, "error": str(exc), "waited": time.monotonic() - started}
    return {"queued": queued, "waited": time.monotonic() - started}


@route("/aoffload")
def aoffload(query):
    async def run():
        held, done = [0.0], []

        async def ticker():
            last = time.monotonic()
            while not done:
                await asyncio.sleep(0.001)
                now = time.monotonic()
                held[0] = max(held[0], now - last)
                last = now

        ticking = asyncio.ensure_future(ticker())
        await asyncio.sleep(0.01)  # the ticker runs from now on
        queued, started = 0, time.monotonic()
        try:
            for i in numbers(query):
                await task.aoffload(i)
                queued += 1
        except DeliveryError as exc:
            return {"queued": queued, "error": str(exc), "waited": time.monotonic() - started}
        finally:
            done.append(True)
            await ticking
        return {"queued": queued, "waited": time.monotonic() - started, "loop_held": held[0]}

    loop = asyncio.new_event_loop()  # not asyncio.run(): in uWSGI's main thread it takes SIGINT from uWSGI
    try:
        return loop.run_until_complete(run())
    finally:
        loop.close()
'''


@dataclass
class Pinged:
    """What one request that offloads returned, and the pings answered while it ran."""

    body: Any
    pings: list[float] = field(default_factory=list)
    """Seconds each ``/ping`` took, in order."""

    @property
    def p50(self) -> float:
        return statistics.median(self.pings) if self.pings else float("inf")

    def describe(self) -> str:
        if not self.pings:
            return "no ping answered"
        return (f"{len(self.pings)} pings, p50 {self.p50 * 1000:.1f} ms, max {max(self.pings) * 1000:.1f} ms")


def ping_while(server: Server, path: str, every: float = 0.05, settle: float = 0.2,
               timeout: float = 120.0) -> Pinged:
    """GET ``path`` in a thread and, while it runs, ``/ping`` every ``every`` seconds (after
    ``settle`` seconds, once the sender met the full queue); each ping is timed."""
    outcome: dict[str, Any] = {}
    sender = threading.Thread(target=lambda: outcome.update(reply=server.get(path, timeout=timeout)))
    sender.start()
    time.sleep(settle)
    pings = []
    while sender.is_alive():
        started = time.perf_counter()
        status, body = server.get("/ping", timeout=timeout)
        if not sender.is_alive():  # answered once the sender was done: not a ping while it waited
            break
        assert (status, body) == (200, "pong"), (status, body)
        pings.append(time.perf_counter() - started)
        time.sleep(every)
    sender.join(timeout)
    status, body = outcome["reply"]
    assert status == 200, body
    return Pinged(body, pings)


def ran(server: Server) -> list[int]:
    """Numbers of the calls the mule ran, sorted (a number twice: a call run twice)."""
    return sorted(int(r["i"]) for r in server.lines("ran"))
