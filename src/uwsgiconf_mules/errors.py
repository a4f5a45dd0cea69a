"""Exceptions raised by uwsgiconf-mules.

Every exception (and the one warning) the project raises derives from one root::

    MulesError
    ├── MulesConfigurationError   (also uwsgiconf.exceptions.ConfigurationError)
    │                             a declaration that cannot work; `uwsgiconf compile` prints it
    │                             as one line and exits 1
    ├── MulesRuntimeError         raised inside (or outside) uWSGI when using the runtime
    │   ├── UnknownTargetError    (also ValueError) a mule id or farm name that is not declared
    │   ├── NotInMuleError        (also ValueError) reading messages outside a mule
    │   ├── PayloadError          (also ValueError) a message too large, or arguments that
    │   │                         cannot be pickled (or, for a farm routed to RQ, encoded as JSON)
    │   ├── DeliveryError         the queue stayed full until the send timeout (of the send, or
    │   │                         of the request) ran out, or was full for a ``nowait`` call, or
    │   │                         the offload backend did not accept the call
    │   ├── UnknownTaskError      (also LookupError) a job naming a task key that no
    │   │                         mule_offload registered
    │   ├── ResultError           a result read by id (``Result.get``, ``Result.result()``)
    │   │   ├── ResultNotFound    (also LookupError) an id that names no result: not an id,
    │   │   │                     expired, or lost in a reload of a store without a file
    │   │   ├── ResultTimeout     (also TimeoutError) ``result(timeout=...)`` ran out first
    │   │   └── TaskFailed        the call failed or was interrupted: its exception's text
    │   ├── DeclarationsMissingError
    │   │                         running under uWSGI without the declarations record
    │   └── UsageError            (also TypeError) the API used in a way that cannot be right,
    │       │                     such as ``if farm.is_mine:`` without the call
    │       └── TaskOptionError   (also ValueError) a task option or a delay that cannot be
    │                             honoured: a wrong type, a value out of range, a naive
    │                             datetime, an option the target cannot honour
    ├── Retry                     raised by a task to ask for another attempt (see ``retries=``)
    ├── TimeLimitExceeded         raised inside a call that ran past its ``soft_time_limit``
    └── ReturnValueWarning        (also UserWarning) a warning: an offloaded task returned a
                                  value, which nobody receives (warned once per task)

Each error carries the object at fault as an attribute where there is one.
"""

from __future__ import annotations

from uwsgiconf.exceptions import ConfigurationError

__all__ = [
    "DeclarationsMissingError",
    "DeliveryError",
    "MulesConfigurationError",
    "MulesError",
    "MulesRuntimeError",
    "NotInMuleError",
    "PayloadError",
    "ResultError",
    "ResultNotFound",
    "ResultTimeout",
    "Retry",
    "ReturnValueWarning",
    "TaskFailed",
    "TaskOptionError",
    "TimeLimitExceeded",
    "UnknownTargetError",
    "UnknownTaskError",
    "UsageError",
]


class MulesError(Exception):
    """Root of every exception raised by uwsgiconf-mules."""


class MulesConfigurationError(MulesError, ConfigurationError):  # type: ignore[misc]
    """A mules/farms declaration that uWSGI would reject or that could not work.

    :param message: What is wrong, naming the culprit.
    :param culprit: The offending value (a farm name, a mule id, an option name), when there is one.
    """

    def __init__(self, message: str, *, culprit: object = None) -> None:
        super().__init__(message)
        self.culprit = culprit


class MulesRuntimeError(MulesError):
    """Base of errors raised when sending to or receiving from mules."""


class UnknownTargetError(MulesRuntimeError, ValueError):
    """A mule id or farm name that is not in the declarations.

    :param message: What is wrong and what is declared.
    :param target: The mule id or farm name at fault.
    """

    def __init__(self, message: str, *, target: object = None) -> None:
        super().__init__(message)
        self.target = target


class NotInMuleError(MulesRuntimeError, ValueError):
    """A mule-only operation (reading messages) was called outside a mule."""


class PayloadError(MulesRuntimeError, ValueError):
    """A message that cannot be delivered whole: too large, or arguments that cannot be pickled.

    :param message: What is wrong, naming the function or target, the size and the limit.
    :param size: Size of the encoded message in bytes, when known.
    :param limit: Largest message the target accepts, when known.
    :param failed: Of a batch (``f.map``, ``f.starmap``), the indices of the calls at fault; empty
        otherwise.
    :param queued: Of a batch, how many of its calls were queued before (the first ones, in order;
        those from the first at fault on were not sent); None otherwise.
    """

    def __init__(self, message: str, *, size: int | None = None, limit: int | None = None,
                 failed: tuple[int, ...] = (), queued: int | None = None) -> None:
        super().__init__(message)
        self.size = size
        self.limit = limit
        self.failed = failed
        self.queued = queued


class DeliveryError(MulesRuntimeError):
    """The target's queue stayed full until the send timeout (of this send, or of all the sends of
    the request) ran out, or was full for a ``nowait`` call, or the offload backend a farm is
    routed to did not accept the call (down, silent, refusing); the message was not sent.

    :param message: What was not delivered, where to, and for how long it was retried.
    :param target: The mule id or farm name.
    :param queued: Of a batch (``f.map``, ``f.starmap``), how many of its calls were queued (the
        first ones, in order) before the wait ran out; None otherwise.
    """

    def __init__(self, message: str, *, target: object = None, queued: int | None = None) -> None:
        super().__init__(message)
        self.target = target
        self.queued = queued


class UnknownTaskError(MulesRuntimeError, LookupError):
    """A job (of a farm routed to an offload backend) names a task key that no ``mule_offload``
    registered: nothing is run.

    :param message: What was refused and why.
    :param key: The task key at fault.
    """

    def __init__(self, message: str, *, key: object = None) -> None:
        super().__init__(message)
        self.key = key


class ResultError(MulesRuntimeError):
    """Base of the errors of reading a call's result.

    :param message: What is wrong, naming the result id.
    :param result_id: The id of the result at fault.
    """

    def __init__(self, message: str, *, result_id: str | None = None) -> None:
        super().__init__(message)
        self.result_id = result_id


class ResultNotFound(ResultError, LookupError):
    """No result has this id: it is not an id, it expired (its ``result_ttl`` passed), or the store
    lost it (a reload or restart of a store without ``store=`` since the call was made). An unexpired
    id with no record is ``queued`` instead (nothing is written before a call starts), which is also
    what a result evicted from a full store reads as."""


class ResultTimeout(ResultError, TimeoutError):
    """``Result.result(timeout=...)``: the call had no final outcome within the timeout."""


class TaskFailed(ResultError):
    """``Result.result()`` of a call that failed or was interrupted.

    :param message: The task, its status and the exception's text.
    :param result_id: The result id.
    :param status: ``failed`` or ``interrupted``.
    :param exception_type: The exception's class path (``builtins.ValueError``), when known.
    :param traceback: The traceback's text (its end), when known.
    """

    def __init__(self, message: str, *, result_id: str | None = None, status: str = "failed",
                 exception_type: str | None = None, traceback: str | None = None) -> None:
        super().__init__(message, result_id=result_id)
        self.status = status
        self.exception_type = exception_type
        self.traceback = traceback


class DeclarationsMissingError(MulesRuntimeError):
    """Running under uWSGI, but the config carries no uwsgiconf-mules declarations record."""


class UsageError(MulesRuntimeError, TypeError):
    """The runtime API used in a way that cannot be right, such as ``if farm.is_mine:``, which
    uwsgiconf 2.4 allowed (a property there) and which would always be true with the method."""


class TaskOptionError(UsageError, ValueError):
    """A task option (``retries=``, ``soft_time_limit=``, ...) or a delay (``f.later(...)``,
    ``f.at(...)``) that cannot be honoured: of the wrong type, out of range, a naive datetime, or
    on a target that cannot honour it. Raised at decoration, or at the call for delays.

    :param message: What is wrong, naming the task and the option.
    :param task: The task key (``module:qualname``).
    :param option: The option at fault.
    """

    def __init__(self, message: str, *, task: str | None = None, option: str | None = None) -> None:
        super().__init__(message)
        self.task = task
        self.option = option


MAX_RETRY_DELAY = 366 * 86400.0
"""Longest ``Retry(delay=...)``, in seconds (``runtime.deferred.MAX_DELAY``: a year and a day)."""


class Retry(MulesError):
    """Raised by an offloaded task to ask for another attempt, like Celery's ``self.retry()``: the
    call runs again after ``delay`` seconds (default: the task's backoff), as long as the task
    declares attempts left (``retries=``); on its last attempt it is a failed call.

    :param delay: Seconds before the next attempt (0 to a year and a day), or None for the task's backoff.
    :param reason: Why, for the log line.
    :raises TaskOptionError: for a delay that is not such a number (raised where the task raises
        ``Retry``: the call fails, naming it).
    """

    def __init__(self, delay: float | None = None, reason: str = "") -> None:
        if delay is not None and (isinstance(delay, bool) or not isinstance(delay, (int, float))
                                  or not 0 <= delay <= MAX_RETRY_DELAY):  # NaN too
            raise TaskOptionError(f"Retry(delay=...) must be None or a number of seconds from 0 to "
                                  f"{MAX_RETRY_DELAY:g}, not {delay!r}", option="delay")
        super().__init__(reason or "retry asked by the task")
        self.delay = delay
        self.reason = reason


class TimeLimitExceeded(MulesError):
    """Raised inside a call that ran past its ``soft_time_limit`` (like Celery's
    ``SoftTimeLimitExceeded``): the task may catch it to clean up; uncaught, the call failed (and
    is retried when ``retry_for`` names it).

    :param seconds: The soft limit that was exceeded.
    """

    def __init__(self, seconds: float) -> None:
        super().__init__(f"the call ran past its soft time limit of {seconds:g} s")
        self.seconds = seconds


class ReturnValueWarning(MulesError, UserWarning):
    """An offloaded task returned something other than None: offloaded calls have no results
    (the caller is told True once the call is queued), so the value is discarded. Warned once per
    task outside uWSGI (inline calls, :mod:`uwsgiconf_mules.testing`); a mule logs it instead."""
