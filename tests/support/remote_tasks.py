"""Offloaded functions of the RQ tests (a module imported by name, as offloaded functions must
be): each appends its call to ``CALLS``, in whichever process runs it."""

from __future__ import annotations

from typing import Any

from uwsgiconf_mules.runtime import Farm, mule_offload

CALLS: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []


@Farm("reports").offload()
def report(number: Any, *more: Any, **options: Any) -> str:
    CALLS.append(("report", (number, *more), options))
    return f"report {number}"


@mule_offload("reports")
def send_mail(to: Any, when: Any = None) -> None:
    CALLS.append(("send_mail", (to,), {"when": when}))


@Farm("pickled").offload()
def pickled(value: Any) -> None:
    CALLS.append(("pickled", (value,), {}))


def not_offloaded(value: Any) -> None:
    CALLS.append(("not_offloaded", (value,), {}))


@Farm("reports").offload()
def lookup(key: Any, value: Any = None, self: Any = None, args: Any = None, kwargs: Any = None) -> None:
    CALLS.append(("lookup", (), {"key": key, "value": value, "self": self, "args": args, "kwargs": kwargs}))


def dropped(*args: Any) -> None:
    """An ordinary function, not offloaded: a forged callback names it."""
    CALLS.append(("dropped", args, {}))


def init_hook() -> None:
    """The declared ``mule_init`` hook of a test."""
    CALLS.append(("init_hook", (), {}))


@Farm("reports").offload(retries=2, retry_for=ValueError, retry_backoff=0.0, retry_jitter=False, time_limit=30)
def flaky(name: str, fail_until: int, error: str = "ValueError") -> None:
    """Fails until its attempt ``fail_until`` (RQ retries it: ``retries=2``, ValueError only)."""
    from uwsgiconf_mules.errors import Retry
    from uwsgiconf_mules.runtime import current_attempt

    CALLS.append(("flaky", (name, current_attempt()), {}))
    if current_attempt() < fail_until:
        raise {"ValueError": ValueError, "KeyError": KeyError, "Retry": Retry}[error](f"attempt {current_attempt()}")
