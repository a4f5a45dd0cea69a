"""Per-task time limits in a dispatch mule: a soft one that raises inside the call, a hard one
after which uWSGI stops the mule.

* The hard limit is uWSGI's own per-process harakiri, set for the call
  (``uwsgi.set_user_harakiri(seconds)``; 0 clears it): when it expires, the master kills the
  mule as it kills a mule stuck past ``mule-harakiri``, and respawns it. The instance's harakiri
  (``set_mules_params(harakiri=...)``) is set again after the call.
* The soft limit is kept by one watchdog thread per process (started through ``_threads`` with the
  first call that declares one, then shared by all: a heap of deadlines under a condition) that,
  when the limit expires, sends ``SIGALRM`` to the mule's main thread only (``signal.pthread_kill``): a call
  blocked in C (``time.sleep``, a socket read) is interrupted by the signal, and this module's
  handler raises :class:`~uwsgiconf_mules.errors.TimeLimitExceeded` there, so the task's
  ``except``/``finally`` blocks run and ``retry_for`` may name it. A call that has already
  returned is never hit: each arming has a number, and the handler raises only for the armed one.
  uWSGI does not use ``SIGALRM`` in mules (its harakiri is enforced by the master).
"""

from __future__ import annotations

import heapq
import os
import signal
import threading
import time
from contextlib import contextmanager

from .. import _threads
from ..errors import TimeLimitExceeded
from . import instance as _instance

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: mules import this module, keep it cheap
if TYPE_CHECKING:
    from collections.abc import Iterator
    from types import FrameType

_armed = [0, 0.0]  # [number of the armed soft limit (0: none), its seconds]
_fired = [0]  # the number whose limit expired
_count = [0]
_installed = [False]


def _alarm(signum: int, frame: FrameType | None) -> None:
    """SIGALRM in the main thread: raise inside the call whose soft limit expired."""
    if _armed[0] and _fired[0] == _armed[0]:
        seconds = _armed[1]
        _armed[0] = 0  # raised once
        raise TimeLimitExceeded(seconds)


_cond = threading.Condition()
_deadlines: list[tuple[float, int, int]] = []  # heap of (monotonic deadline, number, main thread's ident)
_watching = [0]  # pid of the process whose watchdog runs (0: none; a forked child starts its own)


def _watchdog() -> None:
    """The watchdog thread: SIGALRM to the main thread when the armed soft limit expires; deadlines
    of calls that ended in time are dropped as they come up."""
    with _cond:
        while True:
            while _deadlines and _deadlines[0][1] != _armed[0]:
                heapq.heappop(_deadlines)  # the call ended (or another one is armed): nothing to do
            if not _deadlines:
                _cond.wait()
                continue
            deadline, number, main = _deadlines[0]
            wait = deadline - time.monotonic()
            if wait > 0:
                _cond.wait(wait)
                continue
            heapq.heappop(_deadlines)
            _fired[0] = number
            signal.pthread_kill(main, signal.SIGALRM)


def _arm(number: int, seconds: float) -> None:
    """Arm soft limit ``number`` for ``seconds`` with the process's watchdog (started on first use)."""
    with _cond:
        heapq.heappush(_deadlines, (time.monotonic() + seconds, number, threading.main_thread().ident or 0))
        _armed[1], _armed[0] = seconds, number
        if _watching[0] != os.getpid():
            try:
                _threads.start(_watchdog)
            except BaseException:
                _armed[0] = 0
                raise
            _watching[0] = os.getpid()
        _cond.notify()


def _disarm() -> None:
    """No soft limit armed (the watchdog drops its deadline)."""
    _armed[0] = 0
    if _deadlines:
        with _cond:
            _cond.notify()


@contextmanager
def limits(soft: float | None, hard: int | None) -> Iterator[None]:
    """Run the block under a soft limit (seconds, or None) and a hard limit (whole seconds, or
    None); call from the main thread of a dispatch mule.

    :param soft: Seconds after which ``TimeLimitExceeded`` is raised in the block.
    :param hard: Seconds after which uWSGI kills the mule.
    """
    uwsgi = _instance.uwsgi
    try:  # armed inside: whatever interrupts the arming (the soft limit's signal too), both are cleared
        if hard is not None and uwsgi is not None:
            uwsgi.set_user_harakiri(hard)
        if soft is not None and threading.current_thread() is threading.main_thread():
            if not _installed[0]:
                signal.signal(signal.SIGALRM, _alarm)
                _installed[0] = True
            _count[0] += 1
            _arm(_count[0], soft)
        yield
    finally:
        _disarm()
        if hard is not None and uwsgi is not None:
            declarations = _instance.declarations()
            uwsgi.set_user_harakiri((declarations.harakiri or 0) if declarations is not None else 0)
