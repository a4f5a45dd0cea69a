"""Loop engines on the sending side, without uWSGI: which engine a process runs is told once from
``uwsgi.opt``; under gevent a waiting sender yields to the hub; budgets are kept per request stack;
``aoffload`` waits on the event loop. (On a real uWSGI: tests/integration/test_loop_engines.py.)"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from typing import Any

import gevent
import pytest

from uwsgiconf_mules.errors import DeliveryError, PayloadError
from uwsgiconf_mules.runtime import instance as _instance, mule_offload, sending as _sending


class FakeUwsgi:
    """What the sending side asks of ``uwsgi`` in a worker."""

    def __init__(self, opt: dict[str, bytes], full: int = 0, worker: int = 1) -> None:
        self.opt = opt
        self.full = full  # how many sends find the queue full before one goes through
        self.worker = worker
        self.sent: list[bytes] = []

    def worker_id(self) -> int:
        return self.worker

    def request_id(self) -> int:
        return 7

    def mule_msg(self, message: bytes, dest: object) -> bool:
        if self.full:
            self.full -= 1
            return False
        self.sent.append(message)
        return True


@pytest.fixture
def worker(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Run as a uWSGI worker with the given options: ``worker(opt, full=0)``."""
    for name, value in (("_engine", None), ("_waiter", None), ("_send_sockets", [])):
        monkeypatch.setattr(_sending, name, value)
    monkeypatch.setattr(_sending, "_budgets", {})

    def make(opt: dict[str, bytes], full: int = 0, worker_id: int = 1) -> FakeUwsgi:
        fake = FakeUwsgi(opt, full, worker_id)
        monkeypatch.setattr(_instance, "uwsgi", fake)
        return fake

    return make


@pytest.mark.parametrize(("opt", "engine"), [
    ({"threads": b"8"}, ""), ({"gevent": b"50"}, "gevent"),
    ({"gevent": b"50", "gevent-monkey-patch": b"true"}, "gevent"),
    ({"async": b"10", "ugreen": b"true"}, "ugreen"), ({"asyncio": b"10"}, "asyncio"), ({"async": b"10"}, "async")])
def test_the_loop_engine_is_told_from_the_options_once(worker: Any, opt: dict[str, bytes], engine: str) -> None:
    fake = worker(opt)
    assert _sending.loop_engine() == engine
    fake.opt = {"gevent": b"1"}
    assert _sending.loop_engine() == engine  # once per process


def test_mules_run_no_loop_engine(worker: Any) -> None:
    worker({"gevent": b"50"}, worker_id=0)
    assert _sending.loop_engine() == ""


def test_under_gevent_a_sender_waiting_for_room_lets_other_greenlets_run(worker: Any) -> None:
    worker({"gevent": b"50"})
    sender, receiver = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sender.setblocking(False)
    _sending._send_sockets = [sender]
    try:
        while True:
            try:
                sender.send(b"x" * 1000)
            except BlockingIOError:
                break
        ticks: list[float] = []

        def ticker() -> None:
            for _ in range(20):
                gevent.sleep(0.01)
                ticks.append(time.monotonic())

        other = gevent.spawn(ticker)
        started = time.monotonic()
        gevent.spawn(_sending.wait_for_room, 0.0, 0.5).join()  # nothing drains it: waits 0.5 s
        waited = time.monotonic() - started
        other.join()
        assert waited >= 0.45
        assert len([t for t in ticks if t < started + waited]) >= 10  # the ticker ran while the sender waited
    finally:
        sender.close()
        receiver.close()


def test_under_gevent_a_queue_socket_above_fd_1023_is_waited_on(worker: Any) -> None:
    # A worker with many open files: select() cannot watch an fd from 1024 on, gevent's hub can.
    worker({"gevent": b"50"})
    sender, receiver = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    high = socket.socket(fileno=os.dup2(sender.fileno(), 1500))
    high.setblocking(False)
    _sending._send_sockets = [high]
    try:
        while True:
            try:
                high.send(b"x" * 1000)
            except BlockingIOError:
                break
        started = time.monotonic()
        gevent.spawn(_sending.wait_for_room, 0.0, 0.2).get(timeout=30)
        assert time.monotonic() - started >= 0.15
    finally:
        for sock in (high, sender, receiver):
            sock.close()


@pytest.mark.parametrize(("opt", "why"), [
    ({"async": b"10", "ugreen": b"true"}, "under ugreen a sender yields on Python 3.10 only: from 3.11 on, uWSGI's "
                                          "ugreen loses Python's frames across a switch"),
    ({"asyncio": b"10"}, "under asyncio a sender yields with --greenlet only"),
])
def test_a_loop_engine_the_wait_cannot_yield_to_is_named_once_with_why(
        worker: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, opt: dict[str, bytes],
        why: str) -> None:
    from uwsgiconf_mules.runtime import engines as _engines

    monkeypatch.setattr(_engines, "UGREEN_UNSAFE", (3, 0))  # what Python 3.11 and later are told, on any Python
    worker(opt)
    for _ in range(3):
        _sending.wait_for_room(0.0, 0.0)
    said = [r.getMessage() for r in caplog.records if "loop engine" in r.getMessage()]
    engine = "ugreen" if "ugreen" in opt else "asyncio"
    assert said == [f"uwsgiconf-mules: worker 1 runs the {engine} loop engine: a sender waiting for room in a full "
                    f"mule queue holds the worker's other requests until there is room (at most send_timeout) ({why}); "
                    "await aoffload() from coroutines, or run the workers with --gevent or --threads"]


def test_a_plain_async_worker_is_told_without_a_reason(worker: Any, caplog: pytest.LogCaptureFixture) -> None:
    worker({"async": b"10"})
    _sending.wait_for_room(0.0, 0.0)
    said = [r.getMessage() for r in caplog.records if "loop engine" in r.getMessage()]
    assert said == ["uwsgiconf-mules: worker 1 runs the async loop engine: a sender waiting for room in a full mule "
                    "queue holds the worker's other requests until there is room (at most send_timeout); await "
                    "aoffload() from coroutines, or run the workers with --gevent or --threads"]


def test_threads_say_nothing(worker: Any, caplog: pytest.LogCaptureFixture) -> None:
    worker({"threads": b"8"})
    _sending.wait_for_room(0.0, 0.0)
    assert [r for r in caplog.records if "loop engine" in r.getMessage()] == []


def test_under_a_loop_engine_each_request_stack_has_a_budget_of_its_own(worker: Any) -> None:
    worker({"gevent": b"50"})
    budgets: list[tuple[int, int, float] | None] = []

    def request(spent: float) -> None:  # a request's stack: the greenlet's
        budget = _sending.request_budget(5.0)
        assert budget is not None
        budgets.append(budget)
        _sending._budgets[budget[0]] = (budget[1], budget[2] - spent)
        gevent.sleep(0.01)
        budgets.append(_sending.request_budget(5.0))

    gevent.joinall([gevent.spawn(request, 1.0), gevent.spawn(request, 2.0)])
    first, second, first_again, second_again = budgets
    assert first is not None and second is not None and first[0] != second[0]  # one thread, two keys
    assert first_again == (first[0], 7, 4.0) and second_again == (second[0], 7, 3.0)


def test_adeliver_waits_for_room_on_the_event_loop(worker: Any) -> None:
    fake = worker({"threads": b"8"}, full=200)

    async def main() -> tuple[bool, int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0)
                ticks += 1

        ticking = asyncio.ensure_future(ticker())
        sent = await _sending.adeliver(b"call", 1, "app:task to mule 1", 30.0)
        ticking.cancel()
        return sent, ticks

    sent, ticks = asyncio.run(main())
    assert sent is True and fake.sent == [b"call"]
    assert ticks >= 100  # the loop ran its other tasks between the 200 attempts


def test_adeliver_raises_delivery_error_after_the_send_timeout(worker: Any) -> None:
    fake = worker({"threads": b"8"}, full=10**9)
    started = time.monotonic()
    with pytest.raises(DeliveryError, match=r"^app:task to mule 1: the queue stayed full for 0.2 s; the message "
                                            r"\(4 bytes\) was not sent"):
        asyncio.run(_sending.adeliver(b"call", 1, "app:task to mule 1", 0.2))
    assert 0.2 <= time.monotonic() - started < 30
    assert fake.sent == []


def test_aoffload_outside_uwsgi_runs_the_call_and_is_typed_like_it() -> None:
    ran: list[int] = []

    def record(i: int) -> None:
        ran.append(i)

    record.__module__, record.__qualname__ = __name__, "record_here"
    globals()["record_here"] = record
    offloaded = mule_offload()(record)
    assert asyncio.run(offloaded.aoffload(3)) is True
    assert ran == [3]


def test_the_first_large_message_lets_the_heap_keep_buffers_of_its_size(monkeypatch: pytest.MonkeyPatch) -> None:
    from uwsgiconf_mules.protocol import limits

    monkeypatch.setattr(limits, "_steady", [0])
    route = _sending.Route(1, "mule 1", 1_000_000, 1.0)
    route.check_size(limits.MALLOC_MAPPED, "small")
    assert limits._steady == [0]  # nothing for messages malloc keeps in its heap anyway
    route.check_size(200_000, "large")
    assert limits._steady == [800_000]
    route.check_size(150_000, "smaller")
    assert limits._steady == [800_000]  # once per size reached
    with pytest.raises(PayloadError):
        route.check_size(1_000_001, "too large")
