"""The results of Django tasks run by :class:`~uwsgiconf_mules.contrib.django.MulesBackend`: what a
call keeps in the results store (:class:`Kept`) and the ``TaskResult`` read back from it
(:func:`get_result`)."""

from __future__ import annotations

import importlib
import pickle
from typing import Any

from ...errors import MulesError
from ...runtime import handles as _handles, results as _results
from . import _api, _base, _new_result, _set, _task_of


class Kept:
    """The records a Django call keeps in the results store (none for an id of no results store).

    :param result_id: The call's id.
    :param meta: ``(path, alias, queue_name, args, kwargs)``: what ``get_result`` builds its ``TaskResult`` of.
    :param started: When the call started (``time.time()``).
    """

    def __init__(self, result_id: str, meta: tuple[Any, ...], started: float) -> None:
        self.result_id, self.meta, self.started = result_id, meta, started
        self.keep = _results.kept(result_id)

    def write(self, status: str, value: Any = None, error: BaseException | None = None) -> str | None:
        """Write the call's record in ``status``; the status written, None when nothing is kept.

        :param status: The status.
        :param value: The return value, for ``succeeded``.
        :param error: What the call raised, for ``failed``.
        """
        if not self.keep:
            return None
        return _results.record(self.result_id, status, pickle.dumps((*self.meta, value)), started=self.started,
                               error=error)

    def succeeded(self, result: Any, value: Any) -> None:
        """Write the outcome of a call that returned ``value``; one too large to keep is ``FAILED``,
        saying so, in ``result`` too (the signal's).

        :param result: The call's ``TaskResult``.
        :param value: What it returned.
        """
        if self.write(_results.SUCCEEDED, value) == _results.FAILED:
            _set(result, status=_base.TaskResultStatus.FAILED, _return_value=None)
            result.errors.append(_base.TaskError(exception_class_path="uwsgiconf_mules.errors.PayloadError",
                                                 traceback=_handles.Result.get(self.result_id).error or ""))


_STATUSES = {"queued": "READY", "retrying": "READY", "running": "RUNNING", "succeeded": "SUCCESSFUL",
             "failed": "FAILED", "interrupted": "FAILED"}


def django_result(handle: Any) -> Any:
    """A ``TaskResult`` from a record the backend wrote (see :func:`_run`)."""
    from datetime import datetime, timezone

    fields = handle._fields
    path, alias, queue_name, args, kwargs, value = pickle.loads(fields[6]) if fields[6] else (
        None, None, None, [], {}, None)
    status = getattr(_base.TaskResultStatus, _STATUSES[handle.status])

    def when(seconds: float | None) -> Any:
        return None if not seconds else datetime.fromtimestamp(seconds, timezone.utc)

    errors = []
    if handle.error is not None:
        kind = handle.exception_type or "Exception"
        errors.append(_base.TaskError(exception_class_path=kind if "." in kind else f"builtins.{kind}",
                                      traceback=handle.traceback or handle.error))
    task = _task_of(path, alias, queue_name) if path else None
    result = _new_result(task, handle.id, alias, args, kwargs, status=status, enqueued_at=when(handle.enqueued_at),
                         started_at=when(handle.started_at), last_attempted_at=when(handle.started_at),
                         finished_at=when(handle.finished_at), errors=errors)
    if handle.status == "succeeded":
        _set(result, _return_value=value)
    return result


def get_result(result_id: str) -> Any:
    """``MulesBackend.get_result``: the ``TaskResult`` of a call, from the results store.

    :param result_id: ``TaskResult.id``.
    :raises TaskResultDoesNotExist: for an id that names no result.
    """
    exceptions = importlib.import_module(f"{_api.__name__}.exceptions")
    missing = getattr(exceptions, "TaskResultDoesNotExist", None) or exceptions.ResultDoesNotExist
    if not isinstance(result_id, str) or not _results.kept(result_id):
        raise missing(f"no result {str(result_id)[:80]!r}: " + (
            "not an id of this backend" if isinstance(result_id, str) and _results.id_times(result_id) is None
            else "this uWSGI instance declares no results store (set_mules_params(results=...))"))
    try:
        handle = _handles.Result.get(result_id)
    except MulesError as exc:
        raise missing(str(exc)) from None
    if handle._fields is _results.QUEUED_FIELDS:  # no record: the backend writes one before it sends a call
        raise missing(f"no result {result_id}: no record in the results store (never enqueued here, or evicted "
                      "from a full store: the least recently used go first)")
    return django_result(handle)
