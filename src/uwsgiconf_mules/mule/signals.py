"""The dispatch mule's thread for uWSGI signals: their handlers run as the signals arrive, even
while the loop is busy (uWSGI's own reader handles them only when every queue is empty)."""

from __future__ import annotations

from .. import _threads
from ..runtime import tasks as _tasks

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: mules import this module, keep it cheap
if TYPE_CHECKING:
    from typing import Any

THREAD = [True]
"""Whether uWSGI signals are this thread's: False once uWSGI said it cannot wait for them in a
thread (``--asyncio``), when the loop must wait in uWSGI, whose wait handles them (see
``mule.queues.Queues.wait``)."""
NO_REQUEST = "only from the main callable"
"""What uWSGI's ``signal_wait`` says where it has no request to wait in: a thread of a mule under
``--asyncio`` (it says so at once, every time, with a ``[BUG]`` line in the log)."""


def handle(uwsgi: Any, stop_signals: tuple[int, ...]) -> None:
    """Run the handlers of uWSGI signals sent to this mule, as they arrive; returns where uWSGI
    cannot wait for them in a thread (said once in the log).

    :param uwsgi: The ``uwsgi`` module.
    :param stop_signals: The signals the main thread takes (blocked here).
    """
    raw = _threads.c_signal()  # no enum of each signal (see there)
    raw.pthread_sigmask(raw.SIG_BLOCK, stop_signals)
    while True:
        try:
            uwsgi.signal_wait()  # waits without the GIL, then runs the registered handler
        except SystemError as exc:  # interrupted by a signal of the system; or no request to wait in
            if NO_REQUEST in str(exc):  # --asyncio: uWSGI's reader handles them when the queues are empty
                THREAD[0] = False
                _tasks.log().warning("uwsgiconf-mules: mule %d: uWSGI signals are handled when its queues are empty "
                                     "(under a loop engine, uWSGI cannot wait for them in a thread of a mule)",
                                     _tasks.current_mule())
                return
            continue
        except Exception:
            _tasks.log().exception("uwsgiconf-mules: mule %d: a uWSGI signal handler failed", _tasks.current_mule())


def start(uwsgi: Any, stop_signals: tuple[int, ...]) -> None:
    """Start the thread of :func:`handle`.

    :param uwsgi: The ``uwsgi`` module.
    :param stop_signals: The signals the main thread takes.
    """
    _threads.start(handle, uwsgi, stop_signals)
