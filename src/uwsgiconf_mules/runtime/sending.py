"""The sending side: where a message goes, how large it may be, and waiting for room.

Messages go through ``uwsgi.mule_msg`` (to a farm by its name as bytes), which never blocks: it
returns False when the queue is full. A sender then waits until the queue has room again
(:func:`wait_for_room`) and tries again, for at most the declared ``send_timeout``, after which
:class:`~uwsgiconf_mules.errors.DeliveryError` says the message was not sent (:func:`retry`).
In a worker, ``send_timeout`` is also the budget of one request: the total time all the sends of
one request may wait on full queues (a burst of sends that each wait a little would otherwise
hold the request for as long as the mules take to run the burst). The budget is kept per thread
and request (``uwsgi.request_id()``, the request count of the thread's core) and spent only on
this slow path.
Under gevent (``--gevent``, monkey-patched or not), ``--asyncio`` with ``--greenlet``, and ugreen
on Python 3.10, a waiting sender yields to the loop engine, so the worker's other requests run
meanwhile; elsewhere under a loop engine the wait holds the worker (said once in its log; see
:mod:`uwsgiconf_mules.runtime.engines`). The engine is told apart
once per process, at its first wait (:func:`loop_engine`), and the budget is kept per request under
any of them (their requests share a thread, each on a stack of its own). Coroutines wait with
:func:`adeliver`, which never blocks their event loop.
A message larger than the target reads whole is refused before sending (:meth:`Route.check_size`).

While the spool cannot keep calls, offloaded calls to dispatch mules are refused (see
:mod:`uwsgiconf_mules.runtime.spool_watch`).
"""

from __future__ import annotations

import os
import time
from _thread import get_ident

from ..declarations import Declarations
from ..errors import DeliveryError, MulesRuntimeError, PayloadError, UnknownTargetError
from ..protocol.limits import MALLOC_MAPPED, PROGRAMMED_READ_LIMIT, socket_message_limit, steady_heap
from . import instance as _instance, metrics as _metrics

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: workers and mules import this module, keep it cheap
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from .engines import Waiter

BACKOFF_FIRST = 0.0001
"""Seconds slept after the first failed retry when no queue can be watched (doubles each time)."""
BACKOFF_MAX = 0.01
"""Longest of those sleeps, in seconds."""
ROOM_WAIT = 0.05
"""Longest single wait for a full queue to poll writable, in seconds."""

RECOMPILE = (" (if the config changed, compile it again and reload uWSGI: the runtime reads the declarations "
             "the running uWSGI was started with)")
"""Said with every undeclared target."""


def recompile() -> str:
    """What to say with an undeclared target: :data:`RECOMPILE`, or, for declarations loaded from
    the project's config outside uWSGI, which config they are."""
    source = _instance.loaded_from
    if source is None:
        return RECOMPILE
    return f" (declarations of {source}, as uWSGI reads them once the config is compiled)"

_send_sockets: list[Any] | None = None  # this process's packet sockets, listed at the first full queue
_budgets: dict[int, tuple[int, float]] = {}  # thread -> (request id, seconds its request may still wait)
_engine: str | None = None  # the loop engine of this process's requests, told at the first wait (loop_engine)
_waiter: Waiter | None = None
# (poll factory, sleep, wait for one of these fds to be writable): how a sender waits here; chosen with _engine
BUDGETS_KEPT = 1024
"""Under a loop engine, budgets of requests are kept by the request's stack; beyond this many, the
ones of earlier requests are dropped."""


def check_mule_id(mule_id: object, declarations: Declarations | None) -> int:
    """Return ``mule_id`` if it names a declared mule (any id from 1 when nothing is declared).

    uWSGI does not check ids: one out of range fails with EBADF or segfaults the worker.

    :param mule_id: The id to check.
    :param declarations: This instance's declarations, or None outside uWSGI.
    :raises UnknownTargetError: naming the id and what is declared.
    """
    if isinstance(mule_id, bool) or not isinstance(mule_id, int):
        raise UnknownTargetError(f"mule id must be an integer, not {mule_id!r}", target=mule_id)
    if declarations is not None:
        if not 1 <= mule_id <= declarations.mule_count:
            raise UnknownTargetError(
                f"mule {mule_id} is not declared; declared: {declarations.describe()}{recompile()}", target=mule_id)
    elif mule_id < 1:
        raise UnknownTargetError(f"mule id {mule_id} is out of range: mule ids start at 1", target=mule_id)
    return mule_id


def mule_limit(declarations: Declarations | None, mule_id: int) -> int:
    """Largest message mule ``mule_id`` reads whole: the socket limit, and 64 KiB for a
    programmed mule (the buffer of ``get_message``).

    :param declarations: This instance's declarations, or None outside uWSGI.
    :param mule_id: A declared mule id.
    """
    limit = socket_message_limit(declarations.msg_size if declarations else None)
    if declarations is not None and declarations.programs[mule_id - 1] is not None:
        return min(limit, PROGRAMMED_READ_LIMIT)
    return limit


def missing_script(declarations: Declarations | None, mule_ids: tuple[int, ...]) -> str | None:
    """Why dispatch mules among ``mule_ids`` cannot run: the entry script the config names does
    not exist here (a config compiled in another environment); None when they can.

    :param declarations: This instance's declarations, or None outside uWSGI.
    :param mule_ids: The target's mules.
    """
    if declarations is None or declarations.dispatch_script is None:
        return None
    script = declarations.dispatch_script
    if os.path.exists(script) or not set(mule_ids) & set(declarations.dispatchers):
        return None
    return (f"the config names the dispatch mule script {script}, which does not exist here, so its dispatch "
            "mules cannot start: compile the config again in the environment that runs it, and reload uWSGI")


def as_bytes(message: str | bytes) -> bytes:
    """A message to send as bytes (text as UTF-8).

    :param message: Text or bytes-like.
    :raises PayloadError: for anything else.
    """
    if isinstance(message, str):
        return message.encode()
    if isinstance(message, (bytes, bytearray, memoryview)):
        return bytes(message)
    raise PayloadError(f"message must be str or bytes, not {type(message).__name__}")


def loop_engine() -> str:
    """The loop engine this process's requests run in, told once per process: ``gevent``
    (``--gevent``, monkey-patched or not), ``ugreen`` (``--async`` with ``--ugreen``), ``asyncio``,
    ``async`` (``--async`` with no other suspend engine), or ``""``: none (threads, or a mule, the
    master, outside uWSGI: mules run no loop engine)."""
    global _engine
    if _engine is None:
        _engine = _tell_engine()
    return _engine


def _tell_engine() -> str:
    uwsgi = _instance.uwsgi
    try:
        if uwsgi is None or not uwsgi.worker_id():
            return ""
        options = uwsgi.opt
    except Exception:  # a uWSGI without these: no loop engine to know of
        return ""
    if "gevent" in options:
        return "gevent"
    if "asyncio" in options:
        return "asyncio"
    if "async" in options:
        return "ugreen" if "ugreen" in options else "async"
    return ""


def _choose_waiter() -> Waiter:
    """How a sender waits for room in this process (see :func:`loop_engine` and
    :mod:`uwsgiconf_mules.runtime.engines`); says once in the log when the wait holds the worker's
    other requests (a loop engine it cannot yield to)."""
    global _waiter
    from . import engines as _engines

    engine = loop_engine()
    uwsgi = _instance.uwsgi
    if engine == "gevent":
        _waiter = _engines.gevent_waiter()
    else:
        chosen = {"asyncio": _engines.asyncio_waiter, "ugreen": _engines.ugreen_waiter}.get(engine)
        found = chosen(uwsgi) if chosen is not None else ""
        if isinstance(found, str):
            if engine:
                import logging

                logging.getLogger("uwsgiconf_mules").warning(
                    "uwsgiconf-mules: worker %s runs the %s loop engine: a sender waiting for room in a full mule "
                    "queue holds the worker's other requests until there is room (at most send_timeout)%s; await "
                    "aoffload() from coroutines, or run the workers with --gevent or --threads",
                    uwsgi.worker_id(), engine, f" ({found})" if found else "")
            found = _engines.polling()
        _waiter = found
    return _waiter


def wait_for_room(sleep: float, wait: float, left: float = 0.0) -> None:
    """Wait until a full queue has room again.

    A queue's sending socket polls writable again once the mule has read three quarters of what
    it holds, so the sender wakes when there is room instead of after a guessed time. Which socket
    belongs to the queue is not known here: every packet socket that is not writable now is
    watched, at most ``wait`` seconds (any of them waking the sender costs one more attempt).
    With none (a message so large that it needs a queue emptier than writable), this sleeps
    ``sleep`` seconds.

    :param sleep: Seconds to sleep when no socket can be watched.
    :param wait: Longest wait for a socket to become writable, in seconds.
    :param left: Seconds the send may still wait in all (a loop engine whose timeouts are whole
        seconds yields only with a second or more left).
    """
    global _send_sockets
    import select

    if _send_sockets is None:
        from ..protocol.limits import packet_sockets

        _send_sockets = packet_sockets()
    poll, pause, wait_writable = _waiter or _choose_waiter()
    poller = poll()
    for sock in _send_sockets:
        poller.register(sock, select.POLLOUT)
    writable = {fd for fd, _ in poller.poll(0)}
    if len(writable) == len(_send_sockets):
        pause(sleep)
        return
    wait_writable([fd for fd in (sock.fileno() for sock in _send_sockets) if fd not in writable], wait, left)


def serves_requests() -> bool:
    """Whether this thread is one of uWSGI's request threads (cores): the main thread, or a thread
    uWSGI started (Python sees those as dummy threads), not one the app started."""
    import threading

    current = threading.current_thread()
    return current is threading.main_thread() or isinstance(current, threading._DummyThread)


def request_budget(timeout: float) -> tuple[int, int, float] | None:
    """In a worker, during a request: (thread, request id, seconds the request may still wait on
    full queues), a fresh ``timeout`` at a request's first wait; None elsewhere (mules, the master,
    threads the app started: each send is bounded alone).

    :param timeout: The declared ``send_timeout``: the budget of one request.
    """
    uwsgi = _instance.uwsgi
    try:
        if uwsgi is None or not uwsgi.worker_id() or not serves_requests():
            return None
        request = int(uwsgi.request_id())  # the requests its core finished: constant during one
    except Exception:  # a thread uWSGI does not know: no request
        return None
    thread = get_ident() if not loop_engine() else _request_stack()
    known = _budgets.get(thread)
    return thread, request, known[1] if known is not None and known[0] == request else timeout


def _request_stack() -> int:
    """Under a loop engine, which request this is: its requests share a thread, each on a stack of
    its own, told by the stack's first frame (which lives as long as the request)."""
    import sys

    frame = sys._getframe(1)
    while frame.f_back is not None:
        frame = frame.f_back
    if len(_budgets) > BUDGETS_KEPT:  # keys of finished requests are not reused: drop the least recent
        for key in list(_budgets)[:BUDGETS_KEPT // 2]:
            del _budgets[key]
    return id(frame)


def retry(attempt: Callable[[], object], timeout: float, what: str, size: int, target: object = None) -> bool:
    """Call ``attempt`` until it returns a true value, waiting for room between attempts; for a
    send whose first attempt found the queue full. In a worker, the wait also counts against the
    request's budget (see :func:`request_budget`).

    :param attempt: One send; true when the message was queued.
    :param timeout: Seconds to keep trying; in a worker, also the seconds all the sends of one
        request may wait in total.
    :param what: What is sent and where to, for the error message.
    :param size: Size of the message in bytes, for the error message.
    :param target: The mule id or farm name, for the error.
    :returns: True once ``attempt`` succeeded.
    :raises DeliveryError: when ``timeout``, or the request's budget, ran out; the message was not
        sent.
    """
    started = time.monotonic()
    budget = request_budget(timeout)
    allowed = timeout if budget is None else min(timeout, budget[2])
    deadline = started + allowed
    delay = BACKOFF_FIRST
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                if allowed < timeout:
                    raise DeliveryError(
                        f"{what}: the queue is full and this request already waited {timeout:g} s on full queues "
                        f"(send_timeout bounds the total wait of one request); the message ({size} bytes) was not "
                        "sent (offload fewer calls per request, raise send_timeout or msg_buffer, or add mules)",
                        target=target)
                raise DeliveryError(
                    f"{what}: the queue stayed full for {timeout:g} s; the message ({size} bytes) was "
                    "not sent (raise send_timeout or msg_buffer, or add mules)", target=target)
            wait_for_room(min(delay, left), min(ROOM_WAIT, left), left)
            if attempt():
                return True
            delay = min(delay * 2, BACKOFF_MAX)
    finally:
        if budget is not None:
            _budgets.pop(budget[0], None)  # kept last: the most recent (see _request_stack)
            _budgets[budget[0]] = (budget[1], budget[2] - (time.monotonic() - started))


def deliver(message: bytes, dest: int | bytes, what: str, timeout: float) -> bool:
    """Send ``message`` to ``dest`` with :func:`retry`, once a first attempt found the queue full.

    :param message: The message.
    :param dest: A mule id, or a farm name as bytes.
    :param what: What is sent and where to, for the error message.
    :param timeout: Seconds to keep trying.
    """
    send = _instance.uwsgi.mule_msg
    sent = retry(lambda: send(message, dest), timeout, what, len(message), dest)
    _metrics.queued(dest)
    return sent


ASYNC_BACKOFF_MAX = 0.002
"""Longest sleep of a coroutine between two attempts on a full queue, in seconds."""


async def adeliver(message: bytes, dest: int | bytes, what: str, timeout: float) -> bool:
    """:func:`deliver` for a coroutine: between attempts it sleeps on its event loop (from 0.1 to
    2 ms), which runs its other tasks meanwhile; after ``timeout`` seconds
    :class:`~uwsgiconf_mules.errors.DeliveryError` says the message was not sent. Each send is
    bounded alone (an event loop serves no one request).

    :param message: The message.
    :param dest: A mule id, or a farm name as bytes.
    :param what: What is sent and where to, for the error message.
    :param timeout: Seconds to keep trying.
    """
    import asyncio

    send = _instance.uwsgi.mule_msg
    deadline = time.monotonic() + timeout
    delay = BACKOFF_FIRST
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise DeliveryError(
                f"{what}: the queue stayed full for {timeout:g} s; the message ({len(message)} bytes) was "
                "not sent (raise send_timeout or msg_buffer, or add mules)", target=dest)
        await asyncio.sleep(min(delay, left))
        if send(message, dest):
            _metrics.queued(dest)
            return True
        delay = min(delay * 2, ASYNC_BACKOFF_MAX)


class Route:
    """Where messages for one target go, and how large they may be.

    :param dest: A mule id, or a farm name as bytes (as ``uwsgi.mule_msg`` takes them).
    :param label: The target as the error messages name it.
    :param limit: Largest message the target reads whole, in bytes.
    :param timeout: Seconds a sender waits for room in a full queue.
    :param refused: Why nothing may be sent to this target, or None.
    :param sender: For a farm routed to an offload backend, the function that sends an
        offloaded call's envelope there (see :mod:`uwsgiconf_mules.declarations.backends`); None for mules.
    :param check: For a farm routed to an offload backend, the check its sender makes of a call's
        decoded arguments, ``check(key, args, kwargs)`` raising ``PayloadError`` (RQ with JSON:
        only what JSON gives back); None when there is none. Outside uWSGI, calls that do not go
        to the engine (test modes, development servers) pass it too.
    :param later: For a farm routed to an offload backend, the engine's send of a delayed call,
        ``later(envelope, due ns since the epoch)`` (RQ: a scheduled job); None otherwise.
    """

    __slots__ = ("check", "dest", "label", "later", "limit", "refused", "sender", "timeout")

    def __init__(self, dest: int | bytes, label: str, limit: int, timeout: float, refused: str | None = None,
                 *, sender: Callable[[bytes, int | bytes], bool] | None = None,
                 check: Callable[[str, tuple[Any, ...], dict[str, Any]], None] | None = None,
                 later: Callable[[bytes, int], bool] | None = None) -> None:
        self.dest = dest
        self.label = label
        self.limit = limit
        self.timeout = timeout
        self.refused = refused
        self.sender = sender
        self.check = check
        self.later = later

    def refuse(self, message: bytes, dest: int | bytes) -> bool:
        """Raise :class:`~uwsgiconf_mules.errors.DeliveryError` for :attr:`refused` (the sending
        function of a target that cannot receive).

        :param message: The message not sent.
        :param dest: The target.
        """
        raise DeliveryError(f"nothing sent to {self.label}: {self.refused}", target=dest)

    def check_size(self, size: int, what: str) -> None:
        """Refuse a message larger than :attr:`limit` (senders call it for messages larger than
        ``MALLOC_MAPPED`` too: see ``steady_heap``).

        :param size: Size of the message in bytes.
        :param what: What is sent (a task key, ``message``), for the error message.
        :raises PayloadError: naming ``what``, the size, the limit and the target.
        """
        if size <= self.limit:
            if size > MALLOC_MAPPED:  # no page fault per large message (see there)
                steady_heap(size)
            return
        raise PayloadError(
            f"{what}: message of {size} bytes exceeds the {self.limit}-byte limit of {self.label}; "
            "it would arrive truncated or not at all (pass large data by reference: a file "
            "path, a cache key, a database id)", size=size, limit=self.limit)

    def send(self, message: bytes, what: str) -> bool:
        """Send one message, waiting for room when the queue is full.

        :param message: The message.
        :param what: What is sent, for error messages.
        :returns: True once queued.
        :raises PayloadError: when the message is too large.
        :raises MulesRuntimeError: outside uWSGI.
        :raises DeliveryError: when the queue stayed full until the timeout, or the target cannot
            receive (:attr:`refused`).
        """
        self.check_size(len(message), what)
        if self.refused is not None:
            return self.refuse(message, self.dest)
        uwsgi = _instance.uwsgi
        if uwsgi is None:
            if _instance.local_send is not None:  # a test mode records it
                return _instance.local_send(message, self.dest)
            raise MulesRuntimeError(
                f"{what} to {self.label}: not running under uWSGI, there is no mule to receive it")
        if uwsgi.mule_msg(message, self.dest):
            _metrics.queued(self.dest)
            return True
        return deliver(message, self.dest, f"{what} to {self.label}", self.timeout)
