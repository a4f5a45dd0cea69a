"""Per-task time limits in a dispatch mule: a soft one that raises inside the call, a hard one
after which uWSGI stops the mule.

* The hard limit is uWSGI's own per-process harakiri, set for the call
  (``uwsgi.set_user_harakiri(seconds)``; 0 clears it): when it expires, the master kills the
  mule as it kills a mule stuck past ``mule-harakiri``, and respawns it. The instance's harakiri
  (``set_mules_params(harakiri=...)``) is set again after the call.
* The soft limit is a watchdog thread (one per call, started through ``_threads``) that, when the limit
  expires, sends ``SIGALRM`` to the mule's main thread only (``signal.pthread_kill``): a call
  blocked in C (``time.sleep``, a socket read) is interrupted by the signal, and this module's
  handler raises :class:`~uwsgiconf_mules.errors.TimeLimitExceeded` there, so the task's
  ``except``/``finally`` blocks run and ``retry_for`` may name it. A call that has already
  returned is never hit: each arming has a number, and the handler raises only for the armed one.
  uWSGI does not use ``SIGALRM`` in mules (its harakiri is enforced by the master).
"""

from __future__ import annotations

import _thread
import signal
import threading
from contextlib import contextmanager

from .. import _threads
from ..errors import TimeLimitExceeded
from . import instance as _instance

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: mules import this module, keep it cheap
if TYPE_CHECKING:
    from collections.abc import Iterator
    from types import FrameType
    from typing import Any

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


def _watch(done: Any, number: int, seconds: float, main: int) -> None:
    """The watchdog of one call: SIGALRM to the main thread unless the call ended in time."""
    if done.acquire(timeout=seconds):
        return
    if _armed[0] == number:
        _fired[0] = number
        signal.pthread_kill(main, signal.SIGALRM)


@contextmanager
def limits(soft: float | None, hard: int | None) -> Iterator[None]:
    """Run the block under a soft limit (seconds, or None) and a hard limit (whole seconds, or
    None); call from the main thread of a dispatch mule.

    :param soft: Seconds after which ``TimeLimitExceeded`` is raised in the block.
    :param hard: Seconds after which uWSGI kills the mule.
    """
    uwsgi = _instance.uwsgi
    done = None
    if soft is not None and threading.current_thread() is threading.main_thread():
        if not _installed[0]:
            signal.signal(signal.SIGALRM, _alarm)
            _installed[0] = True
        _count[0] += 1
        number = _count[0]
        _armed[1], _armed[0] = soft, number
        done = _thread.allocate_lock()
        done.acquire()
        _threads.start(_watch, done, number, soft, threading.main_thread().ident)
    if hard is not None and uwsgi is not None:
        uwsgi.set_user_harakiri(hard)
    try:
        yield
    finally:
        _armed[0] = 0
        if done is not None:
            done.release()  # the watchdog ends
        if hard is not None and uwsgi is not None:
            declarations = _instance.declarations()
            uwsgi.set_user_harakiri((declarations.harakiri or 0) if declarations is not None else 0)
