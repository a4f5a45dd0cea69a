"""The queues of a dispatch mule: finding which socket is which, and reading them.

uWSGI gives Python no handle on its queues, only ``mule_get_msg``, which polls every queue and
signal pipe and allocates a buffer for each message (3.1 µs per message on the machine of the
benchmarks, against 1.9 µs for reading the socket directly). The queues are AF_UNIX packet
sockets that every mule inherits, so :class:`QueueFinder` tells them apart with probes and
:class:`Queues` reads the ones found directly, taking turns. Once every queue ``mule_get_msg``
would poll for this mule is found (its own, the queue every mule reads, its farms'), the mule
waits on them itself (``poll``, then a read straight into the loop's buffer); until then, and
for good where one cannot be found, it waits in uWSGI.
"""

from __future__ import annotations

import _socket  # the C module only: ``socket`` imports selectors, enum and more
import mmap
import os
import select  # a C module, as _socket: loaded in the master with the loop, a mule imports nothing after the fork

from ..protocol.envelope import PROBE, PROBE_SIZE
from ..protocol.limits import packet_sockets
from . import running, signals as _signals

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: workers and mules import this module, keep it cheap
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import Any

    from ..declarations import Declarations

PROBE_TRIES = 8
"""Probes sent to a queue before it is read through uWSGI for the life of the mule."""
PROBE_RESEND = 32
"""Scans between two probes to a queue not found yet."""
STREAK = 64
"""Messages read from one queue in a row while others may be waiting."""
SHARED = 0
"""The destination of the queue every mule reads (``uwsgi.mule_msg`` without a mule id): probed
like the others when every mule of the instance is a dispatch mule, and never a mule id."""
WAIT_MS = 1000
"""Longest wait for a message, in milliseconds: then the loop looks at its state again."""


class QueueFinder:
    """Finds which socket of this mule receives what is sent to its own queue and to its farms.

    The mule sends a *probe* (a random message) to a destination and peeks at the next message of
    each packet socket, right away and at each wait: the one whose next message is the probe is
    that destination's queue, and can be read directly. A probe behind older messages is found once
    they are read; a probe read first by another mule (of the farm, or any mule for :data:`SHARED`)
    is dropped there and sent again, up to :data:`PROBE_TRIES` times. Whatever is not found
    stays read through uWSGI: the finder costs speed, never a message.

    :param uwsgi: The ``uwsgi`` module (or a stand-in with ``mule_msg``).
    :param destinations: Destinations (own mule id, farm names as bytes) to look for.
    """

    def __init__(self, uwsgi: Any, destinations: list[int | bytes]) -> None:
        self._send = uwsgi.mule_msg
        self._sockets = packet_sockets()
        self._pending: dict[bytes, int | bytes] = {}  # probe -> destination
        self._tries = {dest: PROBE_TRIES for dest in destinations} if self._sockets else {}
        self._waits = 0
        self.found: dict[int | bytes, Any] = {}  # destination -> socket
        self._probe()

    @property
    def searching(self) -> bool:
        """Whether some destination is still looked for."""
        return bool(self._tries or self._pending)

    def _probe(self) -> None:
        for dest in list(self._tries):
            self._tries[dest] -= 1
            if not self._tries[dest]:
                del self._tries[dest]
            probe = PROBE + os.urandom(PROBE_SIZE - len(PROBE))
            if self._send(probe, dest):
                self._pending[probe] = dest
        if self._pending:  # idle mates wait on a farm's queue, every mule on SHARED: peek before they read
            self._peek()

    def close(self) -> None:
        """Close the sockets no destination was found on (duplicates: uWSGI's stay open)."""
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()
        self._tries.clear()
        self._pending.clear()

    def scan(self) -> None:
        """Peek at the next message of every socket not yet assigned; record the probes found."""
        self._peek()
        self._waits += 1
        if self._waits % PROBE_RESEND == 0:
            if self._tries:
                self._probe()
            elif self._waits >= PROBE_RESEND * (PROBE_TRIES + 1):
                self._pending.clear()  # probes still on their way are dropped when read

    def _peek(self) -> None:
        peek = _socket.MSG_PEEK | _socket.MSG_DONTWAIT
        for sock in list(self._sockets):
            try:
                head = sock.recv(PROBE_SIZE, peek)
            except OSError:
                continue
            dest = self._pending.pop(head, None)
            if dest is None or dest in self.found:
                continue
            self.found[dest] = sock
            self._sockets.remove(sock)
            self._tries.pop(dest, None)
            for probe in [probe for probe, other in self._pending.items() if other == dest]:
                del self._pending[probe]


def probe_destinations(declarations: Declarations | None, mule_id: int) -> list[int | bytes]:
    """The queues a dispatch mule may read directly: its own, the queue every mule reads
    (:data:`SHARED`) when every mule is a dispatch mule, and farms of dispatch mules only (a
    programmed mule would receive probes it does not know).

    :param declarations: This instance's declarations; None gives none.
    :param mule_id: The dispatch mule's id.
    """
    if declarations is None:
        return []
    programmed = set(declarations.programmed)
    shared = [] if programmed or not _only_declared(declarations) else [SHARED]
    return [mule_id] + shared + [
        spec.name.encode() for spec in declarations.farms_of(mule_id) if programmed.isdisjoint(spec.mules)]


def _only_declared(declarations: Declarations) -> bool:
    """Whether this mule inherited the queues of the declared mules and farms and no more. uWSGI
    makes one socket pair per mule, per farm and for the queue every mule reads (its signal pipes
    are streams); under a master, a mule keeps every sending end and the reading ends of its own
    queue, of that one and of the farms. More (a mule the builders did not declare, which would
    receive probes it does not know, or a packet socket of the app's) and that queue is never probed."""
    sockets = packet_sockets()
    for sock in sockets:
        sock.close()
    mules, farms = len(declarations.programs), len(declarations.farms)
    return len(sockets) in (mules + 2 * farms + 3, 2 * (1 + mules + farms))  # under a master, or without


def polled_destinations(declarations: Declarations | None, mule_id: int) -> frozenset[int | bytes]:
    """The queues uWSGI's ``mule_get_msg`` polls for a dispatch mule (signals aside): its own, the
    queue every mule reads, and its farms'. Once all are found, the mule waits on them itself.

    :param declarations: This instance's declarations; None gives none (the mule waits in uWSGI).
    :param mule_id: The dispatch mule's id.
    """
    if declarations is None:
        return frozenset()
    return frozenset([mule_id, SHARED, *(spec.name.encode() for spec in declarations.farms_of(mule_id))])


def empty(buffer: Any) -> int:
    """The reader of no queue: always empty."""
    raise BlockingIOError


class Queues:
    """Where a dispatch mule's messages come from, for the mule loop (:mod:`uwsgiconf_mules.mule.loop`).

    Queues found by :class:`QueueFinder` are read directly into one buffer, each for at most
    :data:`STREAK` messages in a row while others wait; when they are all empty, the mule waits
    in ``uwsgi.mule_get_msg``, which reads the queues not found (uWSGI signals are handled by a
    thread of the mule loop's, see :mod:`uwsgiconf_mules.mule.loop`). The search starts with
    the first message: a mule that never gets one spends nothing on it.

    :param uwsgi: The ``uwsgi`` module.
    :param destinations: Destinations (own mule id, farm names) to look for.
    :param farms: Whether ``mule_get_msg`` polls the farm queues too.
    :param buffer_size: Largest message read whole, in bytes.
    :param record: (spool, mule id) whose record of the running call the buffer is (see
        :mod:`uwsgiconf_mules.mule.running`), or None for anonymous memory and no record.
    :param polled: The queues ``mule_get_msg`` polls for this mule (:func:`polled_destinations`):
        once every one is found, the mule waits on them itself; empty: it always waits in uWSGI.
    """

    def __init__(self, uwsgi: Any, destinations: list[int | bytes], farms: bool, buffer_size: int,
                 record: tuple[Any, int] | None = None, *, polled: frozenset[int | bytes] = frozenset()) -> None:
        # One buffer for every message (a fresh one per read costs page faults); anonymous memory
        # (or the record's file), so only the pages that messages reach are ever touched.
        mapped = running.buffer(*record, buffer_size) if record is not None else None
        self.buffer: mmap.mmap = mapped[0] if mapped is not None else mmap.mmap(-1, buffer_size)
        self.record: Any = mapped[1] if mapped is not None else [0]
        """The record of the running call: ``record[0]`` its size, 0 for none (see :mod:`.running`)."""
        self.view = memoryview(self.buffer)
        self.current: Callable[[Any], int] = empty  # the reader of the queue read now
        self._readers: list[Callable[[Any], int]] = []
        self._turn = 0  # index of current in _readers
        self._uwsgi = uwsgi
        self._get = uwsgi.mule_get_msg
        self._farms = farms
        self._size = buffer_size
        self._destinations = destinations  # not looked for yet
        self._finder: QueueFinder | None = None
        self._found: dict[int | bytes, Any] = {}  # destination -> socket (SHARED aside: not a target's queue)
        self._shared: Any = None  # the socket of SHARED, once found
        self._polled = polled
        self._poll: Callable[[int], list[tuple[int, int]]] | None = None  # the wait on the queues, once all found
        self._by_fd: dict[int, tuple[int, Callable[[Any], int]]] = {}  # fd -> (turn, reader); None: the wake fd
        self._wake = -1  # an eventfd in that wait: written by interrupt()

    @property
    def waits_itself(self) -> bool:
        """Whether the mule waits on its queues itself (every queue uWSGI polls for it was found)."""
        return self._poll is not None

    @property
    def direct(self) -> list[int | bytes]:
        """The destinations whose queues are read directly (mule id, farm names as bytes)."""
        return list(self._found)

    def rotate(self) -> Callable[[Any], int]:
        """Give the next queue its turn; returns its reader."""
        self._turn = (self._turn + 1) % len(self._readers)
        self.current = self._readers[self._turn]
        return self.current

    def wait(self) -> int | None:
        """Put the next message in the buffer once the current queue ran empty and return its
        size: from another queue read directly, or from uWSGI (None: interrupted, or nothing
        within :data:`WAIT_MS`)."""
        # Every queue found, and uWSGI signals the signal thread's (under --asyncio only uWSGI's wait
        # handles them): poll says which queue has a message; one copy, into the buffer.
        if self._poll is not None and _signals.THREAD[0]:
            for fd, _ in self._poll(WAIT_MS):
                found = self._by_fd.get(fd)
                if found is None:  # the wake fd: told to stop
                    return None
                try:
                    size: int = found[1](self.buffer)
                except BlockingIOError:  # the queue every mule reads: another mule was first
                    continue
                self._turn, self.current = found
                return size
            return None
        readers, emptied = self._readers, self.current
        for step in range(1, len(readers) + 1):
            turn = (self._turn + step) % len(readers)
            if readers[turn] is emptied:  # just ran empty: one failed read (an exception) is enough
                continue
            try:
                size = readers[turn](self.buffer)
            except BlockingIOError:
                continue
            self._turn, self.current = turn, readers[turn]
            return size
        if self._finder is not None:
            self._search(self._finder)
        # True: signals are the signal thread's. A wait of at most a second: a stop signal that
        # arrives just before the wait begins is seen at the latest then.
        message = self._get(True, self._farms, self._size, 1)
        # Next, the queue read last: a burst that woke the mule is likely to go on there.
        self.current = readers[self._turn] if readers else empty
        if self._destinations:  # the mule is in use: look for its queues from now on
            self._finder = QueueFinder(self._uwsgi, self._destinations)
            self._destinations = []
        if not message:  # None: a uWSGI signal was handled; b"": interrupted by a signal of the system
            return None
        self.buffer[:len(message)] = message
        return len(message)

    def interrupt(self) -> None:
        """End the wait on the queues now (the mule was told to stop); nothing while it waits in
        uWSGI, whose wait a signal interrupts."""
        if self._wake >= 0:
            os.eventfd_write(self._wake, 1)

    def drain(self) -> Iterator[tuple[int | bytes | None, bytes]]:
        """Take every message queued now, without waiting and without running uWSGI signal
        handlers: (destination, message), the destination None where uWSGI read it or it came
        from the queue every mule reads."""
        found: list[tuple[int | bytes | None, Any]] = list(self._found.items())
        for dest, sock in found + ([(None, self._shared)] if self._shared is not None else []):
            while True:
                try:
                    yield dest, sock.recv(self._size, _socket.MSG_DONTWAIT)
                except OSError:  # BlockingIOError: empty
                    break
        while True:
            message = self._get(True, self._farms, self._size, 0)  # True: leave signals alone; 0: no wait
            if not message:
                return
            yield None, message

    def _search(self, finder: QueueFinder) -> None:
        finder.scan()
        for dest, sock in finder.found.items():
            if sock.recv_into not in self._readers:
                self._readers.append(sock.recv_into)
                if dest == SHARED:
                    self._shared = sock
                else:
                    self._found[dest] = sock
        if not finder.searching:
            finder.close()
            self._finder = None
        if self._polled and self._poll is None and _signals.THREAD[0] and self._polled <= {*self._found, *finder.found}:
            self._wait_on_queues()

    def _wait_on_queues(self) -> None:
        """From now on, wait on the queues found (all that uWSGI would poll) and a wake fd."""
        poller = select.poll()
        self._wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        poller.register(self._wake, select.POLLIN)
        for turn, reader in enumerate(self._readers):
            fd = reader.__self__.fileno()  # type: ignore[attr-defined]
            poller.register(fd, select.POLLIN)
            self._by_fd[fd] = (turn, reader)
        self._poll = poller.poll
