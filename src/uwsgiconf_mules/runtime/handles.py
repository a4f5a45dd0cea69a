"""The handle of a call that keeps its result: :class:`Result`, what the offload of a task with
``result_ttl`` returns and what ``Result.get(id)`` gives in any process of the instance (the
records it reads are written by :mod:`.results`)."""

from __future__ import annotations

import time
from marshal import loads as _unmarshal
from pickle import loads as _unpickle

from ..errors import ResultNotFound, ResultTimeout, TaskFailed, UsageError
from . import instance as _instance
from .result_store import hot_store, store
from .results import FINAL, QUEUED_FIELDS, SUCCEEDED, VERSION, WAIT_FIRST, WAIT_MAX, _decode, id_times

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: workers and mules import this module, keep it cheap
if TYPE_CHECKING:
    from typing import Any, Generic, TypeVar

    _R = TypeVar("_R")

    class _Generic(Generic[_R]):
        """``Result[R]`` for type checkers."""
else:
    _R = None

    class _Generic:
        """``Result[R]`` at run time: the class itself (no ``typing`` to import in workers)."""

        __slots__ = ()

        def __class_getitem__(cls, item: object) -> type:
            return cls


class Result(_Generic[_R]):
    """The handle of a call whose task declares ``result_ttl``: what the offload returns, and
    what :meth:`get` gives for an id, in any process of the instance.

    Its fields are those of the last look at the store (the offload's, :meth:`get`'s or
    :meth:`refresh`'s); :meth:`result` looks until the outcome is there. An unexpired id with no
    record is ``queued``: the call has not started (nor run long enough to be marked ``running``),
    or its result was evicted from a full store, which the store cannot tell.

    :param result_id: The id.
    :param fields: The record's fields, as read (None: not looked at yet).
    :param expires: When the result expires (``time.time()``), as the id says it (the offload
        knows it from making the id); None: read from the id when needed.
    """

    __slots__ = ("_expires", "_fields", "id")

    def __init__(self, result_id: str, fields: tuple[Any, ...] | None = None, expires: float | None = None) -> None:
        self.id = result_id
        self._fields = fields if fields is not None else QUEUED_FIELDS
        self._expires = expires

    def __repr__(self) -> str:
        return f"Result({self.id!r}, status={self.status!r})"

    @classmethod
    def get(cls, result_id: str) -> Result[Any]:
        """The result with this id, read from the store.

        :param result_id: An id, as :attr:`id` gave it.
        :raises ResultNotFound: for an id that names no result (never stored, expired, evicted).
        """
        return cls(result_id, _read(result_id))

    def refresh(self) -> Result[_R]:
        """Look at the store again.

        :returns: This handle.
        :raises ResultNotFound: when the result is gone (expired, evicted).
        """
        self._fields = _read(self.id)
        return self

    @property
    def status(self) -> str:
        """``queued``, ``running``, ``retrying``, ``succeeded``, ``failed`` or ``interrupted``."""
        return str(self._fields[1])

    @property
    def is_finished(self) -> bool:
        """Whether the call has its outcome (``succeeded``, ``failed`` or ``interrupted``)."""
        return self._fields[1] in FINAL

    @property
    def attempts(self) -> int:
        """Attempts started so far (0 while queued)."""
        return int(self._fields[2])

    @property
    def enqueued_at(self) -> float | None:
        """When the call was made (``time.time()``, to the millisecond)."""
        times = id_times(self.id) if "/" not in self.id else None
        if times is not None:
            return times[0]
        return float(self._fields[7]) or None if len(self._fields) > 7 else None

    @property
    def started_at(self) -> float | None:
        """When its last attempt started, or None."""
        return float(self._fields[3]) or None

    @property
    def finished_at(self) -> float | None:
        """When it got its outcome, or None."""
        return float(self._fields[4]) or None

    @property
    def error(self) -> str | None:
        """For a failed or interrupted call (or one retrying), ``Type: message``; None otherwise."""
        error = self._fields[5]
        if not error:
            return None
        return f"{error[0].rpartition('.')[2]}: {error[1]}" if error[0] else str(error[1])

    @property
    def exception_type(self) -> str | None:
        """The exception's class path (``ValueError``, ``shop.errors.OutOfStock``), or None."""
        error = self._fields[5]
        return str(error[0]) or None if error else None

    @property
    def traceback(self) -> str | None:
        """The traceback's text (at most its last 4000 characters), or None."""
        error = self._fields[5]
        return str(error[2]) or None if error else None

    @property
    def return_value(self) -> _R:
        """What the call returned.

        :raises TaskFailed: when it failed or was interrupted.
        :raises ResultTimeout: when it has no outcome yet (at once: no wait).
        """
        status = self._fields[1]
        if status == SUCCEEDED:
            value = self._fields[6]
            return _unpickle(value) if isinstance(value, bytes) else value  # type: ignore[no-any-return]
        if status in FINAL:
            raise TaskFailed(f"result {self.id}: the call is {status}: {self.error}", result_id=self.id,
                             status=status, exception_type=self.exception_type, traceback=self.traceback)
        raise ResultTimeout(f"result {self.id}: the call is {status}, it has no return value yet", result_id=self.id)

    def result(self, timeout: float | None = None) -> _R:
        """Wait for the call's outcome and return what it returned; the wait sleeps between looks
        (50 µs, doubled up to 50 ms), it never spins.

        :param timeout: Seconds to wait at most; None: as long as the result lives (its
            ``result_ttl`` from the call), after which it is expired.
        :raises ResultTimeout: when ``timeout`` passed first.
        :raises TaskFailed: when the call failed or was interrupted (its exception's text).
        :raises ResultNotFound: when the result is unknown, expired or evicted.
        """
        fields = self._fields
        if fields[1] not in FINAL:
            self._fields = fields = self._look()
        if fields[1] == SUCCEEDED:  # at the first look: no clock read, no wait
            value = fields[6]
            return _unpickle(value) if type(value) is bytes else value  # type: ignore[no-any-return]
        if fields[1] in FINAL:
            return self.return_value
        return self._wait(timeout)

    def _look(self) -> tuple[Any, ...]:
        """The record's fields now: :func:`_read`, with the lean path first for a handle that knows
        when it expires (the offload's): one ``cache_get``, one ``marshal.loads``, one clock read."""
        expires = self._expires
        if expires is not None:
            _, _, get, name, _ = _HOT[0] if _HOT else hot_store(_HOT)
            found = get(self.id, name)
            if found is None:
                return _looked_up(self.id)  # queued, lost, expired: one look more, which says which
            try:
                fields = _unmarshal(found)
            except ValueError:
                pass  # not a record: _read says so
            else:
                if type(fields) is tuple and len(fields) == 7 and fields[0] == VERSION and time.time() <= expires:
                    return fields
        return _read(self.id)

    def _wait(self, timeout: float | None) -> _R:
        """:meth:`result` for a call with no outcome yet: look again and again, sleeping between looks."""
        now = time.monotonic()
        if timeout is None:
            times = id_times(self.id)
            lives = (times[0] + times[1] - time.time()) if times is not None else 86400.0
            deadline = now + max(0.0, lives) + 1.0
        else:
            if not timeout >= 0:  # NaN too
                raise UsageError(f"result(timeout=...) takes seconds, 0 or more, not {timeout!r}")
            deadline = now + timeout
        pause = WAIT_FIRST
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                unknown = " (no record: not started yet, or evicted from a full store)" \
                    if self._fields is QUEUED_FIELDS else ""
                raise ResultTimeout(f"result {self.id}: no outcome within {timeout} s (the call is "
                                    f"{self.status}{unknown})", result_id=self.id)
            time.sleep(min(pause, left))
            self._fields = self._look()
            if self._fields[1] in FINAL:
                return self.return_value
            pause = min(pause * 2, WAIT_MAX)


_HOT: list[tuple[Any, Any, Any, str, int]] = []
"""The store of the lean read (:meth:`Result._look`), under uWSGI (see :func:`.result_store.hot_store`)."""


def _read(result_id: str) -> tuple[Any, ...]:
    """The fields of the result ``result_id`` (:data:`~.results.QUEUED_FIELDS` for an unexpired id
    with no record).

    :raises ResultNotFound: naming why there is none.
    """
    if type(result_id) is str and len(result_id) == 32:  # the common case, first: a record of a current result
        current = store()
        found = current.get_raw(result_id, current.name)
        if found is not None:
            try:
                fields = _unmarshal(found)
                head = int(result_id[:20], 16)  # milliseconds, then ttl: one parse
                expires = (head >> 32) / 1000 + (head & 0xFFFFFFFF)
            except ValueError:
                pass
            else:
                if type(fields) is tuple and len(fields) == 7 and fields[0] == VERSION and time.time() <= expires:
                    return fields
    return _looked_up(result_id)


def _looked_up(result_id: str) -> tuple[Any, ...]:
    """:func:`_read`, its checks one by one, each with its error."""
    if not isinstance(result_id, str):
        raise ResultNotFound(f"a result id is a string, not {result_id!r}", result_id=repr(result_id))
    if "/" in result_id:
        return _remote_read(result_id)
    times = id_times(result_id)
    if times is None:
        raise ResultNotFound(f"{result_id[:80]!r} is not a result id (32 hex digits, as Result.id gives)",
                             result_id=result_id[:80])
    now = time.time()
    if times[0] > now + 60:  # made more than a minute ahead of this clock: no sender made it
        raise ResultNotFound(f"{result_id[:80]!r} is not a result id (made in the future)", result_id=result_id)
    current = store()
    found = current.get(result_id)
    expires = times[0] + times[1]
    if now > expires:
        raise ResultNotFound(f"result {result_id} expired {now - expires:.0f} s ago (its result_ttl of "
                             f"{times[1]} s from the call)", result_id=result_id)
    if found is None:
        if times[0] < current.since:
            since = time.strftime("%H:%M:%S", time.localtime(current.since))
            raise ResultNotFound(f"no result {result_id} in the results store: its call was made before the last "
                                 f"reload or restart of the instance ({since}), and the store keeps no file "
                                 "(store=): the reload lost it (a call kept in the spool across it writes its "
                                 "outcome when it runs)", result_id=result_id)
        return QUEUED_FIELDS  # not started yet: nothing is written before a call starts
    try:
        return _decode(found)
    except Exception as exc:
        raise ResultNotFound(f"result {result_id}: the store holds no record of this version ({exc})",
                             result_id=result_id) from None


def routed_id(farm: str, job_id: str) -> str:
    """The result id of a call to a farm routed to an offload backend: ``<farm>/<job id>``.

    :param farm: The farm.
    :param job_id: The engine's job id.
    """
    return f"{farm}/{job_id}"


def _remote_read(result_id: str) -> tuple[Any, ...]:
    """The fields of the result of a call to a routed farm, read from its engine (RQ's job)."""
    from importlib import import_module

    from ..declarations.backends import ENGINES

    farm, _, job_id = result_id.partition("/")
    declarations = _instance.declarations()
    backend = declarations.get_backend(farm) if declarations is not None else None
    if backend is None:
        raise ResultNotFound(f"{result_id[:120]!r} names farm {farm[:60]!r}, which is not routed to an offload "
                             "backend here: no result to read", result_id=result_id[:120])
    engine = import_module(ENGINES[backend.scheme])
    fields: tuple[Any, ...] | None = engine.job_fields(backend, job_id, declarations.send_timeout if declarations
                                                       else 5.0)
    if fields is None:
        raise ResultNotFound(f"no result {result_id} in {backend.where()}: an unknown job, or one whose result "
                             "expired (its result_ttl)", result_id=result_id)
    return fields
