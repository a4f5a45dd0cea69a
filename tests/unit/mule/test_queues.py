"""Direct queue reads and waits for room, on real socket pairs like uWSGI's (no uWSGI needed)."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from uwsgiconf_mules.declarations import parse_record
from uwsgiconf_mules.mule import queues as _queues
from uwsgiconf_mules.protocol.envelope import PROBE
from uwsgiconf_mules.runtime import sending as _sending, tasks as _tasks


class FakeUwsgi:
    """``mule_msg`` and ``mule_get_msg`` over socket pairs, as uWSGI's queues are."""

    def __init__(self) -> None:
        self.queues: dict[int | bytes, tuple[socket.socket, socket.socket]] = {}
        self.sent: list[bytes] = []
        self.mates: set[int | bytes] = set()  # queues whose messages another mule reads as soon as they are sent
        self.finders: list[_queues.QueueFinder] = []  # their sockets are closed at the end

    def queue(self, dest: int | bytes) -> tuple[socket.socket, socket.socket]:
        pair = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for end in pair:
            end.setblocking(False)
        self.queues[dest] = pair
        return pair

    def mule_msg(self, message: bytes, dest: int | bytes) -> bool:
        self.sent.append(message)
        try:
            self.queues[dest][0].send(message)
        except BlockingIOError:
            return False
        if dest in self.mates:
            self.queues[dest][1].recv(len(message))
        return True

    def mule_get_msg(self, signals: bool, farms: bool, size: int, timeout: int) -> bytes | None:
        for _, receiver in self.queues.values():
            try:
                return receiver.recv(size)
            except BlockingIOError:
                continue
        return None  # uWSGI returns None when it handled a signal instead

    def finder(self, destinations: list[int | bytes]) -> _queues.QueueFinder:
        finder = _queues.QueueFinder(self, destinations)
        self.finders.append(finder)
        return finder

    def close(self) -> None:
        for finder in self.finders:
            finder.close()
            for sock in finder.found.values():
                sock.close()
        for pair in self.queues.values():
            for end in pair:
                end.close()


@pytest.fixture
def uwsgi() -> Iterator[FakeUwsgi]:
    fake = FakeUwsgi()
    yield fake
    fake.close()


def reads_queue(found: Any, pair: tuple[socket.socket, socket.socket]) -> bool:
    """Whether ``found`` (a socket of the finder) receives what is sent into ``pair``."""
    pair[0].send(b"marker")
    return found.recv(100).startswith(PROBE) and found.recv(100) == b"marker"  # type: ignore[no-any-return]


def test_finder_finds_the_own_queue_and_a_farm_queue(uwsgi: FakeUwsgi) -> None:
    own, farm, other = uwsgi.queue(1), uwsgi.queue(b"farm"), uwsgi.queue(2)
    other[0].send(b"for another mule")  # a decoy with a message waiting
    finder = uwsgi.finder([1, b"farm"])
    assert [m[:len(PROBE)] for m in uwsgi.sent] == [PROBE, PROBE]
    finder.scan()
    assert set(finder.found) == {1, b"farm"}
    assert not finder.searching
    assert reads_queue(finder.found[1], own) and reads_queue(finder.found[b"farm"], farm)
    assert other[1].recv(100) == b"for another mule"  # peeking took nothing


def test_a_probe_behind_older_messages_is_found_once_they_are_read(uwsgi: FakeUwsgi) -> None:
    own = uwsgi.queue(1)
    for i in range(3):
        own[0].send(b"older %d" % i)
    finder = uwsgi.finder([1])
    for i in range(3):
        finder.scan()
        assert finder.found == {}
        assert own[1].recv(100) == b"older %d" % i  # what uWSGI's reader does meanwhile
    finder.scan()
    assert list(finder.found) == [1]
    assert own[1].recv(100).startswith(PROBE)  # left in the queue; the loop drops it


def test_a_farm_probe_read_by_another_mule_is_sent_again(uwsgi: FakeUwsgi) -> None:
    uwsgi.queue(b"farm")
    uwsgi.mates.add(b"farm")  # another mule of the farm takes it before it is looked for
    finder = uwsgi.finder([b"farm"])
    uwsgi.mates.clear()
    for _ in range(_queues.PROBE_RESEND):
        assert finder.found == {}
        finder.scan()
    assert len(uwsgi.sent) == 2  # sent again, and looked for at once
    assert list(finder.found) == [b"farm"]


def test_the_finder_gives_up_after_a_bounded_number_of_probes(uwsgi: FakeUwsgi) -> None:
    uwsgi.queue(b"farm")
    uwsgi.mates.add(b"farm")  # every probe is taken by another mule
    finder = uwsgi.finder([b"farm"])
    scans = 0
    while finder.searching:
        finder.scan()
        scans += 1
        assert scans <= _queues.PROBE_RESEND * (_queues.PROBE_TRIES + 1)
    assert finder.found == {}
    assert len(uwsgi.sent) == _queues.PROBE_TRIES


def test_without_proc_nothing_is_probed(uwsgi: FakeUwsgi, monkeypatch: pytest.MonkeyPatch) -> None:
    uwsgi.queue(1)
    monkeypatch.setattr(_queues, "packet_sockets", lambda: [])
    finder = uwsgi.finder([1])
    assert uwsgi.sent == [] and not finder.searching


def test_only_farms_of_dispatch_mules_are_probed() -> None:
    declarations = parse_record("v2;mules=4;programmed=4;farm=solo:1;farm=pair:2,3;farm=mixed:3,4")
    assert _queues.probe_destinations(declarations, 1) == [1, b"solo"]
    assert _queues.probe_destinations(declarations, 3) == [3, b"pair"]
    assert _queues.probe_destinations(None, 1) == []


def test_every_mule_drops_probes_silently(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, "uwsgiconf_mules"):
        assert _tasks.receive(PROBE + b"\x00" * 12) is None
    assert caplog.records == []


def next_message(queues: _queues.Queues) -> bytes | None:
    """What ``mule_loop`` reads next: from the current queue, or else through ``_Queues.wait``."""
    try:
        size: int | None = queues.current(queues.buffer)
    except BlockingIOError:
        size = queues.wait()
    return None if size is None else queues.buffer[:size]


def test_queues_take_turns_and_wait_in_uwsgi_when_all_are_empty(uwsgi: FakeUwsgi) -> None:
    own, farm = uwsgi.queue(1), uwsgi.queue(b"farm")
    queues = _queues.Queues(uwsgi, [1, b"farm"], True, 1000)
    own[0].send(b"first")
    # Nothing is looked for until the mule gets its first message (through uWSGI).
    assert uwsgi.sent == []
    assert next_message(queues) == b"first"
    assert [m[:len(PROBE)] for m in uwsgi.sent] == [PROBE, PROBE]
    assert queues._finder is not None
    uwsgi.finders.append(queues._finder)
    # The next wait finds both queues, then reads through uWSGI: the probe to the own queue.
    assert (next_message(queues) or b"").startswith(PROBE)
    assert queues.direct == [1, b"farm"]
    own[0].send(b"own 1")
    assert next_message(queues) == b"own 1"  # read directly
    assert (next_message(queues) or b"").startswith(PROBE)  # own ran empty: the farm (its probe)
    farm[0].send(b"farm 1")
    own[0].send(b"own 2")
    assert next_message(queues) == b"farm 1"
    assert next_message(queues) == b"own 2"
    assert next_message(queues) is None  # every queue empty: uWSGI's reader (here: a signal handled)
    own[0].send(b"own 3")
    farm[0].send(b"farm 2")
    queues.rotate()  # a streak ended: the other queue's turn, although this one has more
    assert next_message(queues) == b"farm 2"
    assert next_message(queues) == b"own 3"


def test_wait_for_room_wakes_when_a_full_queue_drains(monkeypatch: pytest.MonkeyPatch) -> None:
    sender, receiver = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sender.setblocking(False)
    monkeypatch.setattr(_sending, "_send_sockets", None)  # list this process's sockets again
    try:
        sent = 0
        while True:
            try:
                sender.send(b"x" * 1000)
                sent += 1
            except BlockingIOError:
                break

        def drain() -> None:
            time.sleep(0.3)  # the waiter is polling by then
            for _ in range(sent):
                receiver.recv(2000)

        drainer = threading.Thread(target=drain)
        drainer.start()
        started = time.monotonic()
        _sending.wait_for_room(0.0, 60.0)
        waited = time.monotonic() - started
        drainer.join()
        # Woken by the room made: not before the drain started, nor at the end of its 60 s.
        assert 0.25 <= waited < 30
        sender.send(b"x" * 1000)
    finally:
        sender.close()
        receiver.close()
        for sock in _sending._send_sockets or ():
            sock.close()


def test_wait_for_room_sleeps_when_no_queue_is_blocked(monkeypatch: pytest.MonkeyPatch) -> None:
    # No socket to watch (no /proc, or a message too large for any queue to poll writable):
    # a short sleep, not the long wait for room.
    monkeypatch.setattr(_sending, "_send_sockets", [])
    started = time.monotonic()
    waiter = threading.Thread(target=_sending.wait_for_room, args=(0.2, 600.0))
    waiter.start()
    waiter.join(30)
    assert not waiter.is_alive()
    assert time.monotonic() - started >= 0.2  # it slept


def found_all(uwsgi: FakeUwsgi, destinations: list[int | bytes], polled: frozenset[int | bytes]) -> _queues.Queues:
    """Queues that had their first message (through uWSGI) and one more wait: the search is done."""
    queues = _queues.Queues(uwsgi, destinations, True, 1000, polled=polled)
    uwsgi.queues[1][0].send(b"first")
    assert next_message(queues) == b"first"
    assert queues._finder is not None
    uwsgi.finders.append(queues._finder)
    assert (next_message(queues) or b"").startswith(PROBE)  # found at that wait, read through uWSGI once more
    return queues


def empty_all(queues: _queues.Queues) -> None:
    """Read the probes still queued (the loop drops them)."""
    while True:
        message = next_message(queues)
        if message is None:
            return
        assert message.startswith(PROBE)


def test_once_every_queue_uwsgi_polls_is_found_the_mule_waits_on_them_itself(
        uwsgi: FakeUwsgi, monkeypatch: pytest.MonkeyPatch) -> None:
    own, shared, farm = uwsgi.queue(1), uwsgi.queue(_queues.SHARED), uwsgi.queue(b"farm")
    monkeypatch.setattr(_queues, "WAIT_MS", 20)
    queues = found_all(uwsgi, [1, _queues.SHARED, b"farm"], frozenset({1, _queues.SHARED, b"farm"}))
    assert queues._poll is not None
    assert queues.direct == [1, b"farm"]  # the targets' queues: the shared one is no target's

    def not_uwsgi(*args: Any) -> bytes:
        raise AssertionError("the mule waited in uWSGI")

    monkeypatch.setattr(queues, "_get", not_uwsgi)
    empty_all(queues)
    for message, pair in ((b"own", own), (b"shared", shared), (b"farm", farm)):
        pair[0].send(message)
        assert next_message(queues) == message  # polled, then read straight into the buffer
        assert next_message(queues) is None  # nothing more: back after WAIT_MS, not forever
    big = bytes(range(256)) * 3
    farm[0].send(big)
    assert next_message(queues) == big
    shared[0].send(b"to any mule")
    own[0].send(b"kept")
    monkeypatch.undo()  # the drain of a stopping mule asks uWSGI last, whatever was found
    drained = sorted(queues.drain(), key=repr)
    assert drained == [(1, b"kept"), (None, b"to any mule")]  # the shared queue's: no target named


def test_where_no_thread_can_wait_for_uwsgi_signals_the_mule_waits_in_uwsgi_which_handles_them(
        uwsgi: FakeUwsgi, monkeypatch: pytest.MonkeyPatch) -> None:
    from uwsgiconf_mules.mule import signals as _signals

    own = uwsgi.queue(1)
    uwsgi.queue(_queues.SHARED), uwsgi.queue(b"farm")
    monkeypatch.setattr(_signals, "THREAD", [False])  # --asyncio: the signal thread returned at once
    queues = found_all(uwsgi, [1, _queues.SHARED, b"farm"], frozenset({1, _queues.SHARED, b"farm"}))
    assert queues._poll is None  # every queue found, and still uWSGI's wait: it runs the signals' handlers
    empty_all(queues)
    waited: list[tuple[Any, ...]] = []
    get = queues._get
    monkeypatch.setattr(queues, "_get", lambda *args: waited.append(args) or get(*args))
    assert next_message(queues) is None and waited  # nothing queued: uWSGI's wait, which handles signals
    queues._wait_on_queues()  # waiting itself already when the thread returned: uWSGI's wait all the same
    waited.clear()
    own[0].send(b"after")
    assert b"after" in [next_message(queues) for _ in range(2)]
    assert next_message(queues) is None and waited


def test_a_queue_that_cannot_be_probed_keeps_the_wait_in_uwsgi(uwsgi: FakeUwsgi) -> None:
    uwsgi.queue(1), uwsgi.queue(_queues.SHARED), uwsgi.queue(b"mixed")
    # 'mixed' has a programmed mule: never probed, so uWSGI's wait is the only one that reads it.
    queues = found_all(uwsgi, [1], frozenset({1, _queues.SHARED, b"mixed"}))
    assert queues._poll is None
    uwsgi.queues[b"mixed"][0].send(b"for the farm")
    assert b"for the farm" in [next_message(queues) for _ in range(2)]  # through mule_get_msg (a probe first)


def test_a_probe_is_looked_for_right_after_it_is_sent(uwsgi: FakeUwsgi) -> None:
    shared = uwsgi.queue(_queues.SHARED)
    finder = uwsgi.finder([_queues.SHARED])
    assert shared[1].recv(100).startswith(PROBE)  # another mule took it right after: found before that
    assert list(finder.found) == [_queues.SHARED]


def test_the_shared_queue_is_probed_only_when_every_mule_dispatches(uwsgi: FakeUwsgi,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_queues, "packet_sockets",
                        lambda: [end.dup() for pair in uwsgi.queues.values() for end in pair])
    declared = parse_record("v2;mules=2;farm=pair:1,2")
    for dest in (_queues.SHARED, 1, 2, b"pair"):  # the queues of what is declared, as uWSGI makes them
        uwsgi.queue(dest)
    assert _queues.probe_destinations(declared, 1) == [1, _queues.SHARED, b"pair"]
    assert _queues.probe_destinations(parse_record("v2;mules=3;programmed=3;farm=pair:1,2"), 1) == [1, b"pair"]
    uwsgi.queue(3)  # a mule the builders did not declare: it would read a probe of the shared queue
    assert _queues.probe_destinations(declared, 1) == [1, b"pair"]
    assert _queues.polled_destinations(parse_record("v2;mules=4;programmed=4;farm=mixed:3,4"), 3) == {
        3, _queues.SHARED, b"mixed"}
    assert _queues.polled_destinations(None, 1) == frozenset()


@pytest.mark.parametrize("how", ["thread", "signal"])
def test_interrupt_ends_the_wait_on_the_queues_at_once(uwsgi: FakeUwsgi, monkeypatch: pytest.MonkeyPatch,
                                                       how: str) -> None:
    import os
    import signal

    uwsgi.queue(1)
    queues = found_all(uwsgi, [1], frozenset({1}))
    empty_all(queues)
    monkeypatch.setattr(_queues, "WAIT_MS", 20_000)
    if how == "signal":  # the loop's stop handler: Python resumes an interrupted poll after running it
        previous = signal.signal(signal.SIGUSR1, lambda signum, frame: queues.interrupt())
        timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGUSR1))
    else:
        timer = threading.Timer(0.2, queues.interrupt)
    timer.start()
    started = time.monotonic()
    try:
        assert next_message(queues) is None
    finally:
        timer.join()
        if how == "signal":
            signal.signal(signal.SIGUSR1, previous)
    assert time.monotonic() - started < 10  # not the 20 s bound


def test_the_signal_thread_says_when_uwsgi_cannot_wait_for_signals_in_a_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    from uwsgiconf_mules.mule import signals as _signals

    class AsyncioMule:
        def signal_wait(self) -> None:
            raise SystemError(f"uwsgi.signal_wait() can be called {_signals.NO_REQUEST}")

    monkeypatch.setattr(_signals, "THREAD", [True])
    monkeypatch.setattr(_signals._tasks, "current_mule", lambda: 1)
    _signals.handle(AsyncioMule(), ())  # returns: under --asyncio, uWSGI's wait handles them
    assert _signals.THREAD == [False]
