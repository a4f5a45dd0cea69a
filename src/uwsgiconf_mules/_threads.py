"""Threads of the package's own (the spool watcher, the counters' flusher, the summaries of
refusals): started with the process's signals blocked, so that uWSGI's stop and reload signals
are always taken by the thread uWSGI expects (as uWSGI starts its own threads). A signal that
landed in one of these threads ran uWSGI's handler there, mid-Python, where its exit path
(atexit, the interpreter's teardown) could wait for the thread it interrupted."""

from __future__ import annotations

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: workers and mules import this module, keep it cheap
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

BLOCKED = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGALRM")
"""Signals never taken by these threads: uWSGI's stop, reload and stats signals, and the alarm."""


def c_signal() -> Any:
    """The C module under :mod:`signal` (``_signal``): its functions take and give plain numbers,
    where :mod:`signal`'s wrappers turn each into an enum (that code runs, and writes its pages,
    in every mule that sets a handler or a mask)."""
    import signal  # noqa: F401 - loads _signal (imported in the master already: a lookup)
    import sys

    return sys.modules["_signal"]


def start(func: Callable[..., Any], *args: Any) -> int:
    """Start ``func(*args)`` in a new thread that never takes the signals of :data:`BLOCKED`.

    The caller's mask is blocked while the thread starts (a new thread inherits it), then put
    back: no window where the thread could take one.

    :param func: What the thread runs.
    :param args: Its arguments.
    :returns: The thread's identifier.
    :raises RuntimeError: when no thread can be started.
    """
    import _thread

    raw = c_signal()
    blocked = {getattr(raw, name) for name in BLOCKED}
    old = raw.pthread_sigmask(raw.SIG_BLOCK, blocked)
    try:
        return _thread.start_new_thread(func, args)
    finally:
        raw.pthread_sigmask(raw.SIG_SETMASK, old)
