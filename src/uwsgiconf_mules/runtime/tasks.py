"""Offloaded functions by key, and what a mule does with each message it receives.

``mule_offload`` registers every function under its key, ``module:qualname``
(:func:`register`). A mule runs a message as a call only when it carries this instance's token
(see :mod:`uwsgiconf_mules.protocol.envelope`) and its key names a registered function, importing the
key's module first when the mule has not (under ``--lazy-apps`` mules import no app code); it
never looks up any other attribute by name (:func:`receive`). :data:`HEADS` is the table the
mule loop's fast path reads: the head of every positional envelope of every registered task,
with its function and body decoder (the loop keeps its own entries, built from it, in :data:`TABLE`).
"""

from __future__ import annotations

import importlib
from _contextvars import ContextVar  # contextvars, without the module that only re-exports it
from time import perf_counter

from ..protocol import envelope as _protocol, spool as _spool
from . import instance as _instance

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: workers and mules import this module, keep it cheap
if TYPE_CHECKING:
    import logging
    from collections.abc import Callable
    from typing import Any

REGISTRY: dict[bytes, Callable[..., Any]] = {}
"""Task key (bytes) -> the offloaded function."""
HEADS: dict[bytes, tuple[Callable[..., Any], Callable[[Any], Any], int, bytes, int]] = {}
"""Envelope head (its first ``_protocol.HEAD_SIZE`` bytes) of a positional call -> (function,
decoder of the body, offset of the body, task key, size of a call without arguments)."""
TABLE: dict[bytes, tuple[Any, ...]] = {}
"""The dispatch mule loop's entries, built from :data:`HEADS` (see ``_dispatch.mule_loop``);
emptied whenever a task is registered, so that it never runs a function :data:`HEADS` no longer names."""
JOB_CHECKS: dict[str, Callable[[tuple[Any, ...]], None]] = {}
"""Task key -> what refuses a call of that task in a job of a distributed task engine (an RQ job, which
whoever can write to its Redis may have made) before it runs: registered by the task's module with the
task (the Django backend's runner checks that the job names a Django task routed there), and called by
``uwsgiconf_mules.remote.run`` with the call's positional arguments; it raises ``UnknownTaskError``."""
_SHARED: set[bytes] = set()  # heads of two registered tasks (their tags collide): those run by key only

NO_TASK = "-"
"""The ``task`` of a log record emitted outside any task."""

RUNNING: ContextVar[str] = ContextVar("uwsgiconf_mules_task", default=NO_TASK)
"""The key of the task the code that runs it is running in this context: set by :func:`run` for
the call it runs, and by the Django backend (whose ``async def`` tasks asgiref runs in a thread of
its own, with a copy of this context); :data:`NO_TASK` otherwise. Read by
:func:`uwsgiconf_mules.runtime.logs.current_task`."""

LOOP_CALL: list[Any] = [None, 0]
"""[the entry of the call the dispatch mule loop's fast path is running, or None; the loop's thread]:
one cell the loop writes as it takes a call (the entry's last item but one is the task key), for
:func:`uwsgiconf_mules.runtime.logs.current_task` to read in that thread."""

_logger: logging.Logger | None = None

COUNTING: Any = None
"""This dispatch mule's per-task counters (a ``_metrics.MuleCounters``) when the counters are on."""


def log() -> logging.Logger:
    """The ``uwsgiconf_mules`` logger; logging is imported on first use (error paths only)."""
    global _logger
    if _logger is None:
        import logging

        _logger = logging.getLogger("uwsgiconf_mules")
    return _logger


CO_COROUTINE = 0x80  # inspect.CO_COROUTINE, without importing inspect


def is_async(func: Callable[..., Any]) -> bool:
    """Whether ``func`` is an ``async def`` function.

    :param func: A function.
    """
    code = getattr(func, "__code__", None)
    return bool(code is not None and code.co_flags & CO_COROUTINE)


def _awaited(func: Callable[..., Any]) -> Callable[..., Any]:
    """A function that runs the coroutine function ``func`` to completion: a fresh event loop
    per call (``asyncio.run``), closed when the call returns."""
    import asyncio

    def run(*args: Any, **kwargs: Any) -> Any:
        return asyncio.run(func(*args, **kwargs))

    return run


def register(key: str, func: Callable[..., Any]) -> None:
    """Make ``func`` the task ``key``, for :func:`find` and the fast path; an ``async def``
    function is run with ``asyncio.run``.

    :param key: ``module:qualname``, both dotted identifiers.
    :param func: The function to run.
    :raises MulesRuntimeError: when ``key`` is not ``module:qualname`` (a name set by hand, with a line
        break or an escape sequence, would reach every log line and ``top`` that names the task).
    """
    module, colon, qualname = key.partition(":")
    if not (colon and all(part.isidentifier() for part in (*module.split("."), *qualname.split(".")))):
        from ..errors import MulesRuntimeError

        raise MulesRuntimeError(f"cannot offload {key!r}: a task is named module:qualname, both dotted identifiers "
                                "(the function's __module__ and __qualname__)")
    if is_async(func):
        func = _awaited(func)
    raw = key.encode()
    REGISTRY[raw] = func
    size = _protocol.call_size(key)
    for head, (loads, start) in _protocol.heads(key).items():
        found = HEADS.get(head)
        if head in _SHARED or (found is not None and found[3] != raw):
            _SHARED.add(head)  # two keys, one tag: their calls take the path that reads the key
            HEADS.pop(head, None)
            continue
        HEADS[head] = (func, loads, start, raw, size)
    TABLE.clear()


def find(key: bytes) -> Callable[..., Any] | str:
    """The function registered as task ``key``, importing the key's module when the task is not
    registered yet; otherwise why there is none.

    :param key: ``module:qualname`` as bytes, from an authenticated envelope.
    """
    func = REGISTRY.get(key)
    if func is not None:
        return func
    try:
        text = key.decode()
    except UnicodeDecodeError:
        return f"task key {key[:80]!r} is not UTF-8"
    module_name, colon, _ = text.partition(":")
    if not colon or not module_name:
        return f"task key {text[:200]!r} is not module:qualname"
    try:
        importlib.import_module(module_name)
    except Exception as exc:
        hint = import_hint(exc)
        from .._text import escape

        log().error("uwsgiconf-mules: %s cannot import module %r for task %s%s", _who(), module_name, escape(text),
                    hint, exc_info=True)
        return f"cannot import module {module_name!r} for task {text} ({type(exc).__name__}: {exc}){hint}"
    func = REGISTRY.get(key)  # registered when its module was imported
    if func is None:
        return (f"unknown task {text}: module {module_name!r} registers no function under this key with "
                "mule_offload (decorate it at module level, and reload the mules after a deploy)")
    return func


DJANGO_NOT_SET_UP = ("; Django is not set up in this mule: set DJANGO_SETTINGS_MODULE in the uWSGI config "
                     "(env), not only in the app's WSGI module, which mules do not run under --lazy-apps; "
                     "dispatch mules then call django.setup() (or declare set_mules_params(mule_init=...))")
DJANGO_NOT_SET_UP_OUTSIDE = ("; Django is not set up in this process: set DJANGO_SETTINGS_MODULE in the uWSGI "
                             "config (env), which uwsgiconf-mules worker passes to the RQ worker, or in this "
                             "process's environment; RQ workers of routed farms then call django.setup() before "
                             "they import a task module")


def import_hint(exc: BaseException) -> str:
    """What to do about an import failure that says Django is not set up; empty otherwise.

    :param exc: The exception the import raised.
    """
    kind = type(exc)
    if kind.__module__.startswith("django.") and kind.__name__ in ("AppRegistryNotReady", "ImproperlyConfigured"):
        return DJANGO_NOT_SET_UP if _instance.uwsgi is not None else DJANGO_NOT_SET_UP_OUTSIDE
    return ""


def _who() -> str:
    """``mule N`` in a mule, ``process PID`` elsewhere (an RQ worker, a script)."""
    uwsgi = _instance.uwsgi
    if uwsgi is not None and int(uwsgi.mule_id()):
        return f"mule {int(uwsgi.mule_id())}"
    import os

    return f"process {os.getpid()}"


def current_mule() -> int:
    """Id of the mule this runs in; 0 in a worker or outside uWSGI."""
    uwsgi = _instance.uwsgi
    return int(uwsgi.mule_id()) if uwsgi is not None else 0


RETURNED: set[bytes] = set()
"""Keys of the tasks :func:`returned` spoke of (once per task and process)."""


def returned(key: bytes, result: object) -> None:
    """Say, once per task, that task ``key`` returned something other than None, which nobody
    receives: in a mule, a warning in the log; outside uWSGI (inline calls, test modes), a
    :class:`~uwsgiconf_mules.errors.ReturnValueWarning`.

    :param key: The task key.
    :param result: What the task returned.
    """
    if key in RETURNED:
        return
    RETURNED.add(key)
    message = (f"uwsgiconf-mules: task {key.decode(errors='replace')} returned a {type(result).__name__}, which "
               "is discarded: offloaded calls have no results (the caller got True once the call was queued); "
               "return None, or store what the caller needs (a database row, a cache key)")
    if _instance.uwsgi is not None:
        log().warning(message)
        return
    import warnings

    from ..errors import ReturnValueWarning

    warnings.warn(ReturnValueWarning(message), stacklevel=2)


def failed(key: bytes | str, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None,
           began: float | None = None) -> None:
    """Report the exception being handled as the failure of task ``key`` (see
    :mod:`uwsgiconf_mules.runtime.failures`): a log line and the ``on_failure`` hook.

    :param key: The task key.
    :param args: The call's positional arguments.
    :param kwargs: Its keyword arguments.
    :param began: ``time.perf_counter()`` when the call began, or None.
    """
    import sys

    from . import failures as _failures

    exc = sys.exc_info()[1]
    seconds = None if began is None else perf_counter() - began
    _failures.report(key.decode() if isinstance(key, bytes) else key, args, kwargs, exc or RuntimeError("unknown"),
                     seconds)


_dead_letters: _spool.DeadLetters | None = None  # where a dispatch mule keeps what it refuses
_burst: _spool.Burst | None = None  # refusals are said once per burst, with a count (made at the first)


def refusals() -> _spool.Burst:
    """The burst of this process's refusals (see ``_spool.Burst``): made at the first refusal."""
    global _burst
    if _burst is None:
        _burst = _spool.Burst(lambda line: log().error(line), mule=current_mule)
    return _burst


def set_dead_letters(spool: _spool.Spool | None) -> None:
    """Keep every message this process refuses in ``spool``'s ``dead/`` part (None: log only).

    :param spool: The instance's spool.
    """
    global _dead_letters
    _dead_letters = None if spool is None else _spool.DeadLetters(spool, lambda line: log().warning(line))


def refuse(message: bytes, reason: str) -> None:
    """Log, in one line per burst of refusals (with how many, see ``_spool.Burst``), that this mule
    refused a message; it is neither run nor decoded. A dispatch mule also keeps it as a dead
    letter, within the quota of ``dead/``: a call of this instance (unknown key, import failure)
    whole, to be replayed after a fix; of anything else only its size, a short hash and the
    reason, marked untrusted and never replayed.

    :param message: The message refused.
    :param reason: Why.
    """
    from .._text import escape  # the reason may quote the message: on one line

    refusals().note(f"uwsgiconf-mules: mule {current_mule()} refused a {len(message)}-byte message: {escape(reason)}",
                   reason.partition(" (")[0])
    letters = _dead_letters
    if letters is None:
        return
    try:
        if message.startswith(_protocol.PREFIX):
            letters.keep(_protocol.stored(message), reason)
        else:
            letters.keep(b"", _spool.untrusted_note(message, reason), durable=False)
        if COUNTING is not None:
            COUNTING.dead += 1
    except OSError as exc:
        refusals().note(f"uwsgiconf-mules: mule {current_mule()} could not keep the refused message as a dead "
                       f"letter ({exc})", "not kept as a dead letter")


def run(message: bytes, harakiri: int = 0) -> None:
    """Run the call in an authenticated envelope (one that starts with ``_protocol.PREFIX``);
    refuse it, with a log line, when it cannot run. Never raises under uWSGI (outside, a warnings
    filter may turn the :func:`returned` warning into an exception), except ``KeyboardInterrupt``:
    a call that raises anything else, ``SystemExit`` included, is a failed call (see :func:`failed`)
    and the mule goes on. uWSGI's stop signals never raise in a dispatch mule (its handlers only
    set a flag), so ``KeyboardInterrupt`` comes only from code that means to stop the process.

    :param message: The envelope.
    :param harakiri: Seconds the call may run before uWSGI kills the mule; 0 for no limit.
    """
    try:
        key, args, kwargs = _protocol.decode(message)
    except Exception as exc:
        if message[len(_protocol.PREFIX):len(_protocol.PREFIX) + 1] == _protocol.BATCH:
            run_batch(message, harakiri)
            return
        refuse(message, f"cannot decode the envelope ({type(exc).__name__}: {exc})")
        return
    func = find(key)
    if isinstance(func, str):
        refuse(message, func)
        return
    uwsgi = _instance.uwsgi
    result = None
    running = RUNNING.set(key.decode())  # a registered key: UTF-8
    counters = COUNTING
    cell = counters.cell(key) if counters is not None else None
    began = perf_counter()
    if cell is not None:
        cell[0] += 1
        counters.running[1] = counters.running[2] = began
        counters.running[0] = cell
    try:
        if harakiri:
            uwsgi.set_user_harakiri(harakiri)
        result = func(*args, **kwargs)
    except KeyboardInterrupt:  # the one exception that stops the mule, as it stops Django's immediate backend
        if cell is not None:
            cell[1] += 1
        failed(key, args, kwargs, began)  # said first: the call did not complete
        raise
    except BaseException:  # SystemExit (sys.exit(), exit()), asyncio.CancelledError: the call failed, the mule goes on
        if cell is not None:
            cell[1] += 1
        failed(key, args, kwargs, began)
    finally:
        RUNNING.reset(running)
        if harakiri:
            uwsgi.set_user_harakiri(0)
        if cell is not None:  # None first: a sampler in between misses the time, never counts it twice
            counters.running[0] = None
            cell[2] += perf_counter() - began
    if result is not None:
        returned(key, result)


def run_batch(message: bytes, harakiri: int = 0) -> None:
    """Run the calls of a batch (``_protocol.pack``) one after the other, each as :func:`run` runs
    a call; a damaged batch (only a holder of the token can send one) is refused whole.

    :param message: The batch.
    :param harakiri: Seconds each call may run before uWSGI kills the mule; 0 for no limit.
    """
    try:
        calls = _protocol.split(message)
    except Exception as exc:
        refuse(message, f"cannot decode the batch ({type(exc).__name__}: {exc})")
        return
    for call in calls:
        if call.startswith(_protocol.PREFIX):
            run(call, harakiri)
        else:
            refuse(call, "a call of a batch without this instance's token")


def receive(message: bytes, harakiri: int = 0, *, strict: bool = True) -> bytes | None:
    """Handle a message a mule received: run a call of this instance, drop a probe; return what
    is left for the reader (plain data, unwrapped), or None.

    :param message: The message.
    :param harakiri: Seconds a call may run before uWSGI kills the mule; 0 for no limit.
    :param strict: Whether a message that claims to be an envelope but does not carry this
        instance's token is refused with a log line (a dispatch mule), rather than returned as
        the plain data that ``send()`` may deliver (a programmed mule's ``get_message``).
    """
    # protocol.envelope.kind(), inlined: this runs for every message a mule reads through uWSGI
    # (mule_get_msg), where a function call more per message is what the fast path was tuned away from.
    prefix = _protocol.PREFIX
    if message.startswith(prefix):
        kind = message[len(prefix):len(prefix) + 1]
        if kind == _protocol.DATA:
            return message[len(prefix) + 1:]
        if kind != _protocol.PROBE[-1:]:  # a probe: another dispatch mule looking for its queues
            run(message, harakiri)
        return None
    if strict:
        reason = _protocol.refusal(message)
        if reason is not None:
            refuse(message, reason)
            return None
    return message


def pass_on(message: bytes) -> None:
    """Hand a message that is not a call to the mule message hook another library installed
    (uwsgidecorators, for instance); without one, log that it was dropped.

    :param message: The message.
    """
    hook = getattr(_instance.uwsgi, "mule_msg_hook", None)
    if hook is None:
        log().warning("uwsgiconf-mules: mule %d dropped a %d-byte message that is not an offloaded "
                      "call (no uwsgi.mule_msg_hook is installed)", current_mule(), len(message))
        return
    try:
        hook(message)
    except Exception:
        log().exception("uwsgiconf-mules: uwsgi.mule_msg_hook failed")
