"""Results: the outcome of an offloaded call whose task declares ``result_ttl``, kept in the
instance's results store and read by id from any worker, mule or thread.

.. code-block:: python

    @mule_offload('fast', result_ttl=600)
    def resize(image_id: int) -> str: ...

    handle = resize(42)           # a Result[str], once the call is queued
    handle.id                     # hand it to a client; any process of the instance reads it back:
    Result.get(handle.id).result(timeout=5)

The store is the uWSGI cache the config declares (``set_mules_params(results=...)``, see
:mod:`uwsgiconf_mules.declarations.results`): shared memory that every process of the instance
reads and writes (``uwsgi.cache_get``/``cache_update``/``cache_del`` with the store's name).
Outside uWSGI (inline calls, the test modes, scripts) it is a dictionary of this process.

One record per call, under its id, rewritten at each transition by one function here (the hooks the
lifecycle of a call calls, from the points where it happens):

================  =========================================  ==================================
status            written by                                 where
================  =========================================  ==================================
``queued``        :func:`queued`                             the sender, before the call is sent
``running``       :func:`running`                            the mule, as an attempt starts
``retrying``      :func:`retrying`                           the lifecycle, when a retry is kept
``succeeded``     :func:`succeeded`                          the mule, when the call returned
``failed``        :func:`failed`                             the mule, when the last attempt raised
``interrupted``   :func:`interrupted`                        the lifecycle, for a call whose mule died
================  =========================================  ==================================

The three last are final: written once per outcome; a record that is final is never written again
(:func:`_final_write` checks it), so a late ``running`` of a call run twice cannot hide its outcome.

A record is ``marshal`` of (version, status, attempts, started, finished, error, value): the value
is the return value pickled (as arguments are, on farms of mules); ``error`` is (exception class
path, message, traceback text). A return value that cannot be pickled, or whose record would be
larger than the store's ``item_size``, makes the outcome ``failed``, saying why: a value is stored
whole or not at all (uWSGI refuses a value larger than its block whole, it never truncates).

An id is 32 hex digits: when the call was made (milliseconds), its ``result_ttl`` (seconds) and 48
random bits; so a reader tells an expired result (its time is past) from an unknown one without
the store, and waits no longer than the result lives. uWSGI's cache drops expired items only when
its sweeper runs (every few seconds): a record past its time is expired here all the same.

Calls to a farm routed to RQ keep their result in RQ (the job's own status and return value); their
id is ``<farm>/<job id>``, and reading it asks RQ (see :mod:`uwsgiconf_mules.contrib.rq.sender`).
"""

from __future__ import annotations

import os
import time
from marshal import dumps as _marshal, loads as _unmarshal
from pickle import dumps as _pickle

from ..errors import TaskOptionError
from . import instance as _instance
from .result_store import store

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: workers and mules import this module, keep it cheap
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

QUEUED, RUNNING, RETRYING = "queued", "running", "retrying"
SUCCEEDED, FAILED, INTERRUPTED = "succeeded", "failed", "interrupted"
STATUSES = (QUEUED, RUNNING, RETRYING, SUCCEEDED, FAILED, INTERRUPTED)
"""Every status of a result, in the order of a call's life."""
FINAL = frozenset((SUCCEEDED, FAILED, INTERRUPTED))
"""The statuses of an outcome: written once, never changed."""
VERSION = 1
"""The version of a record (its first field)."""
MAX_TTL = 0xFFFFFFFF
"""The longest ``result_ttl``, in seconds (what an id carries)."""
TRACEBACK_MAX = 4000
"""Longest traceback text kept with a failed call, in characters (its end)."""
MESSAGE_MAX = 1000
"""Longest exception message kept, in characters."""
WAIT_FIRST = 0.0005
"""Seconds ``result()`` sleeps after its first look (doubled at each next, up to :data:`WAIT_MAX`)."""
WAIT_MAX = 0.05
"""Longest sleep of ``result()`` between two looks, in seconds."""
_ID_SIZE = 32

ATTEMPT = [0]
"""The attempt of the call this process runs now (0: a first attempt); the lifecycle's own cell
(``runtime.policy.ATTEMPT``) when it sets one."""

TASKS: dict[str, int] = {}
"""Task key -> its ``result_ttl``, for the tasks that declare one."""


def check_ttl(key: str, value: object) -> int:
    """A task's ``result_ttl``, checked: whole seconds from 1 to :data:`MAX_TTL`.

    :param key: The task key, for the error.
    :param value: The ``result_ttl`` given.
    :raises TaskOptionError: naming the task (a ``UsageError`` and a ``ValueError``).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 1 <= value <= MAX_TTL:  # NaN too
        raise TaskOptionError(f"task {key}: result_ttl must be a number of seconds from 1 to {MAX_TTL}, not {value!r}",
                              task=key, option="result_ttl")
    return int(value)


# -- ids ------------------------------------------------------------------------------------------

_pool: list[Any] = [b"", 6 * 4096]  # random bytes read ahead, and where the next id's start
POOL = 6 * 4096
"""Random bytes read at once for ids (one ``os.urandom`` per 4096 ids, and after a fork)."""


def new_id(ttl: int) -> str:
    """A new result id: the time in milliseconds, ``ttl``, 48 random bits (32 hex digits).

    :param ttl: The result's time to live, in seconds.
    """
    pool = _pool
    at = pool[1]
    if at >= POOL:
        pool[0], at = os.urandom(POOL), 0
    pool[1] = at + 6
    return str((int(time.time() * 1000).to_bytes(6, "big") + ttl.to_bytes(4, "big") + pool[0][at:at + 6]).hex())


def _forked() -> None:
    _pool[1] = POOL  # the parent's random bytes are not this process's: read new ones


os.register_at_fork(after_in_child=_forked)


def id_times(result_id: str) -> tuple[float, int] | None:
    """(when the call was made, its ttl) that an id of a farm of mules carries; None for any other text.

    :param result_id: The id.
    """
    if len(result_id) != _ID_SIZE:
        return None
    try:
        return int(result_id[:12], 16) / 1000, int(result_id[12:20], 16)
    except ValueError:
        return None


# -- records and the hooks of each transition -----------------------------------------------------

def _encode(status: str, attempts: int, times: tuple[float, float], error: tuple[str, str, str] | None = None,
            value: bytes | None = None) -> bytes:
    return _marshal((VERSION, status, attempts, times[0], times[1], error, value))


def _decode(record: bytes) -> tuple[Any, ...]:
    fields = _unmarshal(record)
    if not isinstance(fields, tuple) or len(fields) != 7 or fields[0] != VERSION:
        raise ValueError("not a result record of this version")
    return fields


def _ttl(result_id: str) -> int:
    times = id_times(result_id)
    return times[1] if times is not None else 1


def _write(result_id: str, record: bytes) -> bool:
    current = store()
    if current.put(result_id, record, _ttl(result_id)):
        return True
    from . import tasks as _tasks

    _tasks.log().error("uwsgiconf-mules: results: the store %r refused the %d-byte record of result %s", current.name,
                       len(record), result_id)
    return False


def _final_write(result_id: str, record: bytes) -> bool:
    """Write an outcome, unless the record holds one already (written once per outcome)."""
    found = store().get(result_id)
    if found is not None:
        try:
            if _decode(found)[1] in FINAL:
                return False
        except Exception:
            pass
    return _write(result_id, record)


QUEUED_RECORD = _marshal((VERSION, QUEUED, 0, 0.0, 0.0, None, None))
"""The record of every queued call."""


def queued(result_id: str, ttl: int | None = None) -> None:
    """The call was accepted for sending (the sender, before it sends it).

    :param result_id: The call's result id.
    :param ttl: Its ``result_ttl`` (read from the id when not given).
    """
    current = store()
    if not current.put(result_id, QUEUED_RECORD, ttl or _ttl(result_id)):
        _write(result_id, QUEUED_RECORD)  # says why


def forget(result_id: str) -> None:
    """The call was not sent after all (the send raised): no record of it is kept.

    :param result_id: The call's result id.
    """
    store().delete(result_id)


def running(result_id: str, attempt: int = 1) -> float:
    """An attempt of the call starts (the mule, before it calls the function).

    :param result_id: The call's result id.
    :param attempt: The attempt: 1 for the first.
    :returns: When it started (``time.time()``), for the next hook.
    """
    started = time.time()
    found = store().get(result_id)
    if found is not None:
        try:
            if _decode(found)[1] in FINAL:  # run again after its outcome (a re-run): the outcome stays
                return started
        except Exception:
            pass
    _write(result_id, _encode(RUNNING, attempt, (started, 0.0)))
    return started


def _error(exc: BaseException | None, text: str | None = None) -> tuple[str, str, str]:
    from .._text import escape

    if exc is None:
        return "", (text or "")[:MESSAGE_MAX], ""
    import traceback

    kind = type(exc)
    path = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    trace = "".join(traceback.format_exception(kind, exc, exc.__traceback__))[-TRACEBACK_MAX:]
    return path, escape(text or str(exc))[:MESSAGE_MAX], trace


def _fitted(status: str, attempts: int, started: float, error: tuple[str, str, str]) -> bytes:
    """The record of an outcome with ``error``, its traceback shortened until it fits the store."""
    finished = time.time()
    limit = store().item_size
    record = _encode(status, attempts, (started, finished), error)
    while len(record) > limit and error[2]:
        error = (error[0], error[1], error[2][-(len(error[2]) // 2):] if len(error[2]) > 64 else "")
        record = _encode(status, attempts, (started, finished), error)
    if len(record) > limit:
        record = _encode(status, attempts, (started, finished), (error[0][:100], error[1][:100], ""))
    return record


def succeeded(result_id: str, value: object, started: float, attempt: int = 1) -> str:
    """The call returned ``value`` (the mule): its outcome is ``succeeded``, or ``failed`` when the
    value cannot be pickled or its record would not fit the store's ``item_size``.

    :param result_id: The call's result id.
    :param value: What the function returned.
    :param started: When the attempt started (from :func:`running`).
    :param attempt: The attempt that returned.
    :returns: The status written.
    """
    try:
        blob = _pickle(value, 5)
    except Exception as exc:
        reason = f"the return value ({type(value).__name__}) cannot be pickled: {type(exc).__name__}: {exc}"
        _final_write(result_id, _fitted(FAILED, attempt, started, ("uwsgiconf_mules.errors.PayloadError", reason, "")))
        return FAILED
    record = _encode(SUCCEEDED, attempt, (started, time.time()), None, blob)
    limit = store().item_size
    if len(record) > limit:
        reason = (f"the return value ({type(value).__name__}) takes {len(record)} bytes, more than the results "
                  f"store's item_size ({limit} bytes): it is not stored (declare a larger item_size in "
                  "set_mules_params(results=...), or return less)")
        _final_write(result_id, _fitted(FAILED, attempt, started, ("uwsgiconf_mules.errors.PayloadError", reason, "")))
        return FAILED
    _final_write(result_id, record)
    return SUCCEEDED


def kept(result_id: str) -> bool:
    """Whether a call with this id keeps its result here: an id of this format, and a store (under
    uWSGI, a declared one).

    :param result_id: The call's id (a Django task's ``TaskResult.id``, for instance).
    """
    return id_times(result_id) is not None and available()


def available() -> bool:
    """Whether this process has a results store: under uWSGI, a declared one; outside, always."""
    declarations = _instance.declarations()
    return _instance.uwsgi is None or (declarations is not None and declarations.results is not None)


def record(result_id: str, status: str, blob: bytes, *, attempt: int = 1, started: float = 0.0,
           error: BaseException | None = None) -> str:
    """Write a record whose value is ``blob`` as it is (for an integration that keeps more than the
    return value, such as the Django backend: the task and its arguments too): ``queued``,
    ``running``, or an outcome (written once; ``failed`` with the reason when ``blob`` does not fit).

    :param result_id: The call's result id.
    :param status: Its status.
    :param blob: The value to keep (bytes the integration reads back itself).
    :param attempt: The attempt.
    :param started: When it started (0: not yet).
    :param error: For ``failed``, what the call raised.
    :returns: The status written.
    """
    if status not in FINAL:
        _write(result_id, _encode(status, attempt, (started, 0.0), None, blob))
        return status
    if error is not None:
        path, message, trace = _error(error)
        for kept_blob, shortened in ((blob, trace), (blob, trace[-1000:]), (blob, ""), (b"", "")):
            encoded = _encode(status, attempt, (started, time.time()), (path, message, shortened), kept_blob)
            if len(encoded) <= store().item_size:
                _final_write(result_id, encoded)
                return status
        _final_write(result_id, _fitted(status, attempt, started, (path, message, "")))
        return status
    encoded = _encode(status, attempt, (started, time.time()), None, blob)
    if len(encoded) > store().item_size:
        reason = (f"the result takes {len(encoded)} bytes, more than the results store's item_size "
                  f"({store().item_size} bytes): it is not stored (declare a larger item_size in "
                  "set_mules_params(results=...), or return less)")
        _final_write(result_id, _fitted(FAILED, attempt, started, ("uwsgiconf_mules.errors.PayloadError", reason, "")))
        return FAILED
    _final_write(result_id, encoded)
    return status


def _started(result_id: str) -> float:
    """When the current record says its attempt started (0.0 when it says nothing)."""
    found = store().get(result_id)
    try:
        return float(_decode(found)[3]) if found is not None else 0.0
    except Exception:
        return 0.0


def failed(result_id: str, exc: BaseException, started: float | None = None, attempt: int = 1) -> None:
    """The call's last attempt raised ``exc`` (the mule, or the lifecycle when no retry is left).

    :param result_id: The call's result id.
    :param exc: What it raised.
    :param started: When the attempt started (None: as its ``running`` record says).
    :param attempt: The attempt that raised.
    """
    _final_write(result_id, _fitted(FAILED, attempt, _started(result_id) if started is None else started,
                                    _error(exc)))


def retrying(result_id: str, exc: BaseException, started: float | None, attempt: int, delay: float) -> None:
    """Attempt ``attempt`` raised ``exc`` and a retry is kept (the lifecycle, where it keeps it).

    :param result_id: The call's result id.
    :param exc: What the attempt raised.
    :param started: When the attempt started (None: as its ``running`` record says).
    :param attempt: The attempt that failed.
    :param delay: Seconds until the retry.
    """
    path, message, trace = _error(exc)
    found = store().get(result_id)
    if found is not None and _decode(found)[1] in FINAL:
        return
    if started is None:
        started = _started(result_id)
    _write(result_id, _fitted(RETRYING, attempt, started, (path, f"{message} (retry in {delay:.3f} s)", trace)))


def interrupted(result_id: str, reason: str, attempt: int = 1) -> None:
    """The call was interrupted and is not run again (the lifecycle: its mule died during it).

    :param result_id: The call's result id.
    :param reason: What happened, as the dead letter says it.
    :param attempt: The attempt interrupted.
    """
    _final_write(result_id, _fitted(INTERRUPTED, attempt, 0.0, ("", reason, "")))


# -- the task's side: what runs in the mule -------------------------------------------------------

def wrap(key: str, func: Callable[..., Any], ttl: int, *,
         retried: Callable[[BaseException, int], bool] | None = None) -> Callable[..., Any]:
    """The function registered for a task with results: it takes the call's result id first,
    writes ``running``, calls ``func`` and writes the outcome; an exception is raised again after
    its outcome is written (the mule reports it as every failure).

    :param key: The task key.
    :param func: The function.
    :param ttl: Its ``result_ttl``.
    :param retried: For a task with a lifecycle around it (retries): whether the exception of that
        attempt will be retried; then nothing is written here (the lifecycle writes :func:`retrying`
        where it keeps the retry), otherwise the exception is the call's ``failed`` outcome.
    """
    from . import tasks as _tasks

    run = _tasks._awaited(func) if _tasks.is_async(func) else func
    TASKS[key] = ttl
    clock, attempt, final = time.time, ATTEMPT, FINAL

    def with_result(result_id: str, /, *args: Any, **kwargs: Any) -> None:
        # running() and succeeded(), inlined: this runs for every call of the task in a mule.
        current = store()
        started = clock()
        if attempt[0]:  # a retry or a re-run: running() checks for an outcome first
            started = running(result_id, attempt[0])
        else:  # a first attempt: its record is the queued one, no outcome can be there
            current.put(result_id, _marshal((VERSION, RUNNING, 1, started, 0.0, None, None)), ttl)
        try:
            value = run(*args, **kwargs)
        except BaseException as exc:
            if retried is None or not retried(exc, attempt[0] or 1):
                failed(result_id, exc, started, attempt[0] or 1)
            raise
        try:
            record = _marshal((VERSION, SUCCEEDED, attempt[0] or 1, started, clock(), None, _pickle(value, 5)))
        except Exception:
            record = b""
        if not record or len(record) > current.item_size:  # says why it is not stored
            succeeded(result_id, value, started, attempt[0] or 1)
            return
        if attempt[0]:  # a retry or a re-run: an outcome written already stays (once per outcome)
            found = current.get(result_id)
            if found is not None and _unmarshal(found)[1] in final:
                return
        current.put(result_id, record, ttl)

    with_result.__wrapped__ = func  # type: ignore[attr-defined]
    with_result._results_raw = run  # type: ignore[attr-defined]  # what an RQ job runs (RQ keeps the value)
    return with_result
