"""Log records of tasks, with the mule and the task they come from.

A dispatch mule whose logging nobody configured (no handler on the root logger once the app, the
``mule_init`` hook and ``django.setup()`` have run) gets one handler: records of level INFO and
up go to the mule's stderr, which is uWSGI's log, formatted by :class:`MuleFormatter`::

    2026-11-27 17:30:00,123 mule 1 [shop.tasks:send_welcome_email] INFO shop.tasks: sent to 42

A mule where the app configured logging keeps that configuration; to add the mule and the task to
its lines, give its handlers :class:`MuleFilter` and use ``%(mule)s`` and ``%(task)s`` in their
format (for Django, in ``LOGGING``)::

    "filters": {"mule": {"()": "uwsgiconf_mules.logs.MuleFilter"}},
    "formatters": {"mule": {"format": "mule %(mule)s [%(task)s] %(levelname)s %(name)s: %(message)s"}},

The running task is state the code that runs it owns (see :mod:`uwsgiconf_mules.runtime.tasks`):
:data:`RUNNING`, which :func:`~uwsgiconf_mules.runtime.tasks.run` and the Django backend set for
the call they run, and the cell the dispatch mule loop's fast path writes the entry of the call it
runs into (read in the loop's thread only). A record reads them only when it is emitted. Records
emitted outside a task (at start, by a uWSGI signal handler, in a worker) have ``task`` ``-``;
outside a mule ``mule`` is 0.
"""

from __future__ import annotations

import _thread
import logging
import sys

from .._text import escape
from . import tasks as _tasks
from .tasks import NO_TASK, RUNNING

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: mules import this module, keep it cheap
if TYPE_CHECKING:
    import traceback
    from collections.abc import Callable, Iterator
    from types import CodeType, FrameType
    from typing import Any

__all__ = ["FORMAT", "NO_TASK", "RUNNING", "MuleFilter", "MuleFormatter", "add_runner", "current_task"]

FORMAT = "%(asctime)s mule %(mule)s [%(task)s] %(levelname)s %(name)s: %(message)s"
"""The format of :class:`MuleFormatter`."""

# Code object of a function that runs a call -> what tells the running task from its frame (see
# add_runner: none of this package's runners is one, their task is state they set).
_RUNNERS: dict[CodeType, Callable[[FrameType], str | None]] = {}


def add_runner(code: CodeType, key: Callable[[FrameType], str | None]) -> None:
    """Make :func:`current_task` recognise frames of ``code`` as running a task (for a runner of
    another library's; this package's own runners set :data:`RUNNING` instead).

    :param code: The code object of the function that runs tasks.
    :param key: Reads the task key from such a frame; None when the frame tells nothing (look
        further out), or :data:`NO_TASK` (it runs no known task).
    """
    _RUNNERS[code] = key


def current_task() -> str:
    """The key of the task this thread is running (``module:qualname``), or ``-``."""
    if _RUNNERS:
        frame: FrameType | None = sys._getframe(1)
        while frame is not None:
            read = _RUNNERS.get(frame.f_code)
            if read is not None:
                key = read(frame)
                if key is not None:
                    return key
            frame = frame.f_back
    running = RUNNING.get()
    if running != NO_TASK:
        return escape(running)  # a key read from a call being decoded, on one line
    entry, thread = _tasks.LOOP_CALL
    if entry is not None and thread == _thread.get_ident():
        return escape(entry[4])
    return NO_TASK


class MuleFilter(logging.Filter):
    """Adds ``mule`` (the mule id; 0 outside mules) and ``task`` (see :func:`current_task`) to
    every record it sees; lets every record through."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Add the attributes.

        :param record: The record.
        """
        if not hasattr(record, "task"):
            record.mule = _tasks.current_mule()
            record.task = current_task()
        return True


class MuleFormatter(logging.Formatter):
    """A formatter for :data:`FORMAT` by default; it adds ``mule`` and ``task`` to records itself.

    :param fmt: The format; default :data:`FORMAT`.
    :param datefmt: The date format.
    """

    _filter = MuleFilter()

    def __init__(self, fmt: str | None = None, datefmt: str | None = None) -> None:
        super().__init__(fmt or FORMAT, datefmt)

    def format(self, record: logging.LogRecord) -> str:
        """Format ``record``, with its mule and task.

        :param record: The record.
        """
        self._filter.filter(record)
        if record.exc_info:
            record.exc_text = None  # a traceback another handler's formatter wrote (and logging kept): written anew
        text = super().format(record)
        if record.name == "uwsgiconf_mules":  # its lines start with the project's name: said once
            text = text.replace("uwsgiconf_mules: uwsgiconf-mules: ", "uwsgiconf-mules: ", 1)
        return text

    def formatException(self, ei: Any) -> str:
        """The traceback of ``ei``, with every exception's message on one line (escaped, see
        :mod:`uwsgiconf_mules._text`): a message made of request data cannot forge log records.

        :param ei: ``sys.exc_info()`` of the record.
        """
        import traceback

        return "".join(_traceback_lines(traceback.TracebackException(*ei))).rstrip("\n")


def _traceback_lines(exc: traceback.TracebackException) -> Iterator[str]:
    """Python's traceback text of ``exc`` (its cause or context first), each message line escaped."""
    if exc.__cause__ is not None:
        yield from _traceback_lines(exc.__cause__)
        yield "\nThe above exception was the direct cause of the following exception:\n\n"
    elif exc.__context__ is not None and not exc.__suppress_context__:
        yield from _traceback_lines(exc.__context__)
        yield "\nDuring handling of the above exception, another exception occurred:\n\n"
    if exc.stack:
        yield "Traceback (most recent call last):\n"
        yield from exc.stack.format()
    for line in exc.format_exception_only():
        yield escape(line.rstrip("\n")) + "\n"
