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

One record per call, under its id, written at the transitions a reader must see (the hooks the
lifecycle of a call calls, from the points where it happens), and none where the id says enough:

================  =========================================  ==================================
status            written by                                 where
================  =========================================  ==================================
``queued``        nobody: no record, a valid unexpired id    (the sender writes nothing)
``running``       :func:`running`                            the mule's timer thread (:func:`beat`)
``retrying``      :func:`retrying`                           the lifecycle, when a retry is kept
``succeeded``     :func:`succeeded`                          the mule, when the call returned
``failed``        :func:`failed`                             the mule, when the last attempt raised
``interrupted``   :func:`interrupted`                        the lifecycle, for a call whose mule died
================  =========================================  ==================================

``running`` is written for a call still running :data:`RUNNING_AFTER` after it started, at the
next look of the mule's timer thread (every 0.1 s). So a short call costs one write, its outcome;
a reader of an id with no record, unexpired, sees ``queued`` (the handle cannot tell a call not
started from a result evicted from a full store, and says so when it times out). A mule whose
timer thread does not run (no spool) writes ``running`` itself as each attempt starts. The three
last are final: written once per outcome; a record that is final is never written again
(:func:`_final_write` checks it), so a late ``running`` of a call run twice cannot hide its outcome.

A record is ``marshal`` of (version, status, attempts, started, finished, error, value): the value
is the return value as arguments are encoded (itself when it is of a type marshal keeps exactly,
bytes excepted; pickled otherwise, so bytes in a record are always a pickle); ``error`` is
(exception class path, message, traceback text). A return value that cannot be pickled, or whose record would be
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

import time
from marshal import dumps as _marshal, loads as _unmarshal
from pickle import dumps as _pickle

from . import instance as _instance, result_ids as _ids
from .result_store import hot_store, store

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: workers and mules import this module, keep it cheap
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

MAX_TTL, check_ttl, id_times, new_id = _ids.MAX_TTL, _ids.check_ttl, _ids.id_times, _ids.new_id  # where callers look

QUEUED, RUNNING, RETRYING = "queued", "running", "retrying"
SUCCEEDED, FAILED, INTERRUPTED = "succeeded", "failed", "interrupted"
STATUSES = (QUEUED, RUNNING, RETRYING, SUCCEEDED, FAILED, INTERRUPTED)
"""Every status of a result, in the order of a call's life."""
FINAL = frozenset((SUCCEEDED, FAILED, INTERRUPTED))
"""The statuses of an outcome: written once, never changed."""
VERSION = 1
"""The version of a record (its first field)."""
TRACEBACK_MAX = 4000
"""Longest traceback text kept with a failed call, in characters (its end)."""
MESSAGE_MAX = 1000
"""Longest exception message kept, in characters."""
WAIT_FIRST = 0.00005
"""Seconds ``result()`` sleeps after its first look (doubled at each next, up to :data:`WAIT_MAX`)."""
WAIT_MAX = 0.05
"""Longest sleep of ``result()`` between two looks, in seconds."""
RUNNING_AFTER = 0.005
"""Seconds a call runs before its ``running`` record is written (at the next look of the mule's
timer thread, every 0.1 s): shorter calls write their outcome only."""
BEAT_STALE = 1.0
"""Seconds after the timer thread's last look (:func:`beat`) past which a mule writes ``running``
itself as each attempt starts (no timer, or one stuck)."""
PAYLOAD_ERROR = "uwsgiconf_mules.errors.PayloadError"
DIRECT = frozenset({int, float, complex, str, bool, type(None)})
"""Types of return values a record keeps as they are (marshal gives them back exactly, as for
arguments); bytes and the rest are pickled."""
QUEUED_FIELDS = (VERSION, QUEUED, 0, 0.0, 0.0, None, None)
"""The fields a reader sees for an unexpired id with no record (a call not started yet)."""

ATTEMPT = [0]
"""The attempt of the call this process runs now (0: a first attempt); the lifecycle's own cell
(``runtime.policy.ATTEMPT``) when it sets one."""

TASKS: dict[str, int] = {}
"""Task key -> its ``result_ttl``, for the tasks that declare one."""

CURRENT: list[tuple[str, int, float] | None] = [None]
"""(result id, attempt, started) of the call with a result this mule runs, until :func:`beat`
writes its ``running`` record or it ends."""
LAST: list[tuple[str, int, float] | None] = [None]
"""The same, of the call that raised last (when it started, for the lifecycle's hooks)."""
WRITING: list[tuple[str, int, float] | None] = [None]
"""The call whose ``running`` record the timer thread is writing now (:func:`beat`), or None."""
BEAT = [0.0]
"""When the timer thread last looked (:func:`beat`, ``time.time()``); 0: never."""


# -- records and the hooks of each transition -----------------------------------------------------

def _encode(status: str, attempts: int, times: tuple[float, float], error: tuple[str, str, str] | None = None,
            value: Any = None) -> bytes:
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


def _is_final(result_id: str) -> bool:
    """Whether the record of ``result_id`` holds an outcome."""
    found = store().get(result_id)
    try:
        return found is not None and _decode(found)[1] in FINAL
    except Exception:
        return False


def _final_write(result_id: str, record: bytes) -> bool:
    """Write an outcome, unless the record holds one already (written once per outcome)."""
    return False if _is_final(result_id) else _write(result_id, record)


def running(result_id: str, attempt: int = 1, started: float | None = None) -> float:
    """An attempt of the call runs (the mule's timer thread for a call that outlasts
    :data:`RUNNING_AFTER`, see :func:`beat`; the mule as the attempt starts when no timer runs).

    :param result_id: The call's result id.
    :param attempt: The attempt: 1 for the first.
    :param started: When it started (None: now).
    :returns: When it started (``time.time()``), for the next hook.
    """
    started = time.time() if started is None else started
    if not _is_final(result_id):  # run again after its outcome (a re-run): the outcome stays
        _write(result_id, _encode(RUNNING, attempt, (started, 0.0)))
    return started


def beat() -> None:
    """Write ``running`` for the call with a result this mule runs, once it has run
    :data:`RUNNING_AFTER` (the timer thread of a dispatch mule, every 0.1 s, see
    :func:`uwsgiconf_mules.mule.running.beat`): once per call, never after its outcome (the call's
    end clears :data:`CURRENT`, then waits while :data:`WRITING` names it: see :func:`settle`)."""
    now = time.time()
    BEAT[0] = now
    call = CURRENT[0]
    if call is None or now - call[2] < RUNNING_AFTER:
        return
    WRITING[0] = call
    try:
        if CURRENT[0] is call:  # looked at again after WRITING is set: the call has not ended
            CURRENT[0] = None
            running(*call)
    except Exception as exc:  # never the heartbeat's failure: the next call tries again
        from . import tasks as _tasks

        _tasks.log().error("uwsgiconf-mules: results: the running record of %s failed: %s", call[0], exc)
    finally:
        WRITING[0] = None


def settle(call: tuple[str, int, float]) -> None:
    """Wait until the timer thread's ``running`` write of ``call`` (:func:`beat`) is done, so that
    the outcome written next is the last record (bounded: one write of the store)."""
    deadline = time.monotonic() + 5.0
    while WRITING[0] is call and time.monotonic() < deadline:
        time.sleep(0.0002)


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


def _outcome(result_id: str, status: str, value: object, started: float, attempt: int, *, what: str) -> str:
    """Write the outcome ``status`` whose record keeps ``value`` (as it is in the record), or
    ``failed`` saying why when that record would be larger than the store's ``item_size``.

    :returns: The status written.
    """
    record = _encode(status, attempt, (started, time.time()), None, value)
    limit = store().item_size
    if len(record) > limit:
        reason = (f"{what} takes {len(record)} bytes, more than the results store's item_size ({limit} bytes): it is "
                  "not stored (declare a larger item_size in set_mules_params(results=...), or return less)")
        record, status = _fitted(FAILED, attempt, started, (PAYLOAD_ERROR, reason, "")), FAILED
    _final_write(result_id, record)
    return status


def stored_value(value: object) -> object:
    """``value`` as a record keeps it: itself for the types marshal keeps exactly (but bytes),
    else its pickle (bytes).

    :param value: A return value.
    :raises Exception: what ``pickle`` raises for a value it cannot pickle.
    """
    return value if type(value) in DIRECT else _pickle(value, 5)


def succeeded(result_id: str, value: object, started: float, attempt: int = 1) -> str:
    """The call returned ``value`` (the mule): its outcome is ``succeeded``, or ``failed`` when the
    value cannot be pickled or its record would not fit the store's ``item_size``.

    :param result_id: The call's result id.
    :param value: What the function returned.
    :param started: When the attempt started.
    :param attempt: The attempt that returned.
    :returns: The status written.
    """
    try:
        kept = stored_value(value)
    except Exception as exc:
        reason = f"the return value ({type(value).__name__}) cannot be pickled: {type(exc).__name__}: {exc}"
        _final_write(result_id, _fitted(FAILED, attempt, started, (PAYLOAD_ERROR, reason, "")))
        return FAILED
    return _outcome(result_id, SUCCEEDED, kept, started, attempt, what=f"the return value ({type(value).__name__})")


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
    if error is None:
        return _outcome(result_id, status, blob, started, attempt, what="the result")
    path, message, trace = _error(error)
    for kept_blob, shortened in ((blob, trace), (blob, trace[-1000:]), (blob, ""), (b"", "")):
        encoded = _encode(status, attempt, (started, time.time()), (path, message, shortened), kept_blob)
        if len(encoded) <= store().item_size:
            _final_write(result_id, encoded)
            return status
    _final_write(result_id, _fitted(status, attempt, started, (path, message, "")))
    return status


def _started(result_id: str) -> float:
    """When the attempt of ``result_id`` that ran last started: as the mule noted it, else as the
    record says (0.0 when it says nothing)."""
    last = LAST[0]
    if last is not None and last[0] == result_id:
        return float(last[2])
    found = store().get(result_id)
    try:
        return float(_decode(found)[3]) if found is not None else 0.0
    except Exception:
        return 0.0


def failed(result_id: str, exc: BaseException, started: float | None = None, attempt: int = 1) -> None:
    """The call's last attempt raised ``exc`` (the mule, or the lifecycle when no retry is left).

    :param result_id: The call's result id.
    :param exc: What it raised.
    :param started: When the attempt started (None: as the mule noted it).
    :param attempt: The attempt that raised.
    """
    _final_write(result_id, _fitted(FAILED, attempt, _started(result_id) if started is None else started,
                                    _error(exc)))


def retrying(result_id: str, exc: BaseException, started: float | None, attempt: int, delay: float) -> None:
    """Attempt ``attempt`` raised ``exc`` and a retry is kept (the lifecycle, where it keeps it).

    :param result_id: The call's result id.
    :param exc: What the attempt raised.
    :param started: When the attempt started (None: as the mule noted it).
    :param attempt: The attempt that failed.
    :param delay: Seconds until the retry.
    """
    path, message, trace = _error(exc)
    if _is_final(result_id):
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
    notes the call for :func:`beat` (or writes ``running`` itself when no timer thread looks),
    calls ``func`` and writes the outcome; an exception is raised again after its outcome is
    written (the mule reports it as every failure).

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
    clock, attempt, final, current_call, last, beaten = time.time, ATTEMPT, FINAL, CURRENT, LAST, BEAT
    writing, direct = WRITING, DIRECT
    hot: list[tuple[Any, Any, Any, str, int]] = []  # under uWSGI: see hot_store, from the first call

    def with_result(result_id: str, /, *args: Any, **kwargs: Any) -> None:
        # succeeded(), inlined: this runs for every call of the task in a mule.
        current, put, _, name, limit = hot[0] if hot else hot_store(hot)
        started = clock()
        again = attempt[0]  # 0: a first attempt, whose record cannot hold an outcome yet
        number = again or 1
        call = (result_id, number, started)
        watched = started - beaten[0] < BEAT_STALE
        if watched:  # the timer thread writes `running` if the call outlasts RUNNING_AFTER
            current_call[0] = call
        elif again:
            running(result_id, again, started)
        else:
            put(result_id, _marshal((VERSION, RUNNING, 1, started, 0.0, None, None)), ttl, name)
        try:
            value = run(*args, **kwargs)
        except BaseException as exc:
            last[0] = call  # when it started, for the lifecycle's hooks that follow
            if watched:
                current_call[0] = None
                if writing[0] is call:
                    settle(call)
            if retried is None or not retried(exc, number):
                failed(result_id, exc, started, number)
            raise
        if watched:
            current_call[0] = None
            if writing[0] is call:  # its `running` record is being written: the outcome goes after it
                settle(call)
        try:
            record: bytes | None = _marshal((VERSION, SUCCEEDED, number, started, clock(), None,
                                             value if type(value) in direct else _pickle(value, 5)))
        except Exception:
            record = None  # it cannot be pickled
        if record is None or len(record) > limit:  # succeeded() says why it is not stored
            succeeded(result_id, value, started, number)
            return
        if again:  # a retry or a re-run: an outcome written already stays (once per outcome)
            found = current.get(result_id)
            if found is not None and _unmarshal(found)[1] in final:
                return
        put(result_id, record, ttl, name)

    with_result.__wrapped__ = func  # type: ignore[attr-defined]
    with_result._results_raw = run  # type: ignore[attr-defined]  # what an RQ job runs (RQ keeps the value)
    return with_result
