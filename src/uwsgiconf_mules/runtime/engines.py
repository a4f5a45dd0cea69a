"""How a sender waits for room in a full queue under the loop engine its worker runs (see
:func:`uwsgiconf_mules.runtime.sending.loop_engine`): each waiter is ``(poll factory, sleep, wait)``,
where ``wait(fds, seconds, left)`` returns once one of ``fds`` is writable or ``seconds`` passed
(``left``: what the send may still wait in all).

* threads, processes: :func:`poll_wait`, a plain ``poll``.
* ``--gevent`` (monkey-patched or not): gevent's hub watches the sockets; the other greenlets run.
* ``--asyncio N --greenlet``: the request's greenlet asks the event loop to wake it
  (``loop.add_writer`` on a duplicate of each socket, ``loop.call_later`` for the timeout) and
  switches to the loop with ``uwsgi.suspend()``, which sets uWSGI's current request again when it
  comes back. Each wait watches duplicates: uWSGI and asyncio keep one waiter per fd number, and
  two senders may wait on the same queue. A greenlet that is not a request's (the loop itself, a
  thread) polls.
* ``--async N --ugreen``, Python 3.10 only: ``uwsgi.wait_fd_write`` on a duplicate of each socket,
  then uWSGI's suspend, called through ``ctypes`` so that the GIL is released while the other
  requests of the core run (``uwsgi.suspend()`` called from Python keeps the GIL, and the next
  request waits for it forever). uWSGI's timeouts are whole seconds: with less than a second
  left, the wait polls. From Python 3.11 on, uWSGI 2.0.x's ugreen does not keep Python's frame
  stack across a switch, and two requests suspended at once crash or hang the worker (its own
  slow uploads do too): there the wait holds the worker (:data:`UGREEN_UNSAFE`).

Measured on uWSGI 2.0.31 (one worker, one mule, 1,500 calls of 2 ms, ``/ping`` every 50 ms): the
yielding waits answered pings at p50 under 1.2 ms; the blocking one, one ping after 2.4 s.
"""

from __future__ import annotations

import os
import sys
import time

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: workers import this module, keep it cheap
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    Waiter = tuple[Callable[[], Any], Callable[[float], object], Callable[[list[int], float, float], object]]

UGREEN_UNSAFE = (3, 11)
"""From this Python on, a ugreen worker's sender does not yield (see the module's docstring)."""


def poll_wait(fds: list[int], seconds: float, left: float = 0.0) -> object:
    """Wait until one of ``fds`` polls writable, at most ``seconds``.

    :param fds: The sockets' file descriptors.
    :param seconds: Longest wait.
    :param left: Unused here (see the module's docstring).
    """
    import select

    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLOUT)
    return poller.poll(seconds * 1000)


def polling() -> Waiter:
    """The waiter of threads and processes: nothing to yield to."""
    import select

    return select.poll, time.sleep, poll_wait


def gevent_waiter() -> Waiter:
    """The waiter of a gevent worker: through gevent's hub."""
    import select

    import gevent
    import gevent.select
    from gevent.monkey import get_original

    def wait_gevent(fds: list[int], seconds: float, left: float = 0.0) -> object:
        poller = gevent.select.poll()  # watchers of gevent's hub (its select is limited to fds below 1024)
        for fd in fds:
            poller.register(fd, select.POLLOUT)
        return poller.poll(seconds * 1000)

    return get_original("select", "poll"), gevent.sleep, wait_gevent


def asyncio_waiter(uwsgi: Any) -> Waiter | str:
    """The waiter of an ``--asyncio`` worker with greenlet as its suspend engine, or why there is
    none (without greenlet ``uwsgi.suspend()`` returns at once: nothing to yield to).

    :param uwsgi: The ``uwsgi`` module.
    """
    if "greenlet" not in uwsgi.opt:
        return "under asyncio a sender yields with --greenlet only"
    import asyncio
    import select

    import greenlet  # type: ignore[import-untyped]

    def suspend(fds: list[int], seconds: float) -> bool:
        me = greenlet.getcurrent()
        if getattr(me, "uwsgi_wsgi_req", None) is None:  # not a request's greenlet: nothing to switch back to
            return bool(poll_wait(fds, seconds))
        loop = asyncio.get_event_loop()
        woke: list[int | None] = []

        def wake(fd: int | None) -> None:
            if not woke:
                woke.append(fd)
                me.switch()

        mine = [os.dup(fd) for fd in fds]
        try:
            for fd in mine:
                loop.add_writer(fd, wake, fd)
            timer = loop.call_later(seconds, wake, None)
            try:
                uwsgi.suspend()  # to the loop's greenlet; back here when woken, with uWSGI's current request set
            finally:
                timer.cancel()
                for fd in mine:
                    loop.remove_writer(fd)
        finally:
            for fd in mine:
                os.close(fd)
        return bool(woke) and woke[0] is not None

    def wait_asyncio(fds: list[int], seconds: float, left: float = 0.0) -> object:
        return suspend(fds, seconds)

    def sleep_asyncio(seconds: float) -> None:
        suspend([], seconds)

    return select.poll, sleep_asyncio, wait_asyncio


def ugreen_waiter(uwsgi: Any) -> Waiter | str:
    """The waiter of an ``--async --ugreen`` worker on Python 3.10, or why there is none (Python
    3.11 and later; a uWSGI whose Python plugin is not in its binary).

    :param uwsgi: The ``uwsgi`` module.
    """
    if sys.version_info >= UGREEN_UNSAFE:
        return ("under ugreen a sender yields on Python 3.10 only: from 3.11 on, uWSGI's ugreen loses Python's "
                "frames across a switch")
    import ctypes
    import select
    import threading

    try:
        suspend = ctypes.CDLL(None).py_uwsgi_suspend  # what uwsgi.suspend() runs; ctypes releases the GIL
    except AttributeError:  # the Python plugin is a shared object of its own (a distribution's uWSGI)
        return "this uWSGI's Python plugin is not in its binary, where a sender finds uWSGI's suspend"
    suspend.restype = ctypes.c_void_p  # a borrowed True: not decremented (it is never freed)
    suspend.argtypes = (ctypes.c_void_p, ctypes.c_void_p)
    main = threading.main_thread()

    def wait_ugreen(fds: list[int], seconds: float, left: float = 0.0) -> object:
        if left < 1 or threading.current_thread() is not main:  # uWSGI's timeouts are whole seconds; not a core
            return poll_wait(fds, seconds)
        mine = [os.dup(fd) for fd in fds]
        try:
            for fd in mine:
                uwsgi.wait_fd_write(fd, 1)
            suspend(None, None)  # the other requests of the core run; back here once writable, or after 1 s
            return uwsgi.ready_fd() in mine
        finally:
            for fd in mine:
                os.close(fd)

    return select.poll, time.sleep, wait_ugreen
