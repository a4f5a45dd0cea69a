"""Offloaded functions by key, and running the call an envelope carries.

``mule_offload`` registers every function under its key, ``module:qualname``
(:func:`register`); a mule finds it there, or imports the key's module first when it has not
(under ``--lazy-apps`` mules import no app code), and runs the call (:func:`run_envelope`).
:data:`HEADS` is the table the mule loop's fast path reads: the head of every positional
envelope of every registered task, with its function and body decoder.
"""

from __future__ import annotations

import importlib

from . import _instance, _protocol

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: workers and mules import this module, keep it cheap
if TYPE_CHECKING:
    import logging
    from collections.abc import Callable
    from typing import Any

REGISTRY: dict[bytes, Callable[..., Any]] = {}
"""Task key (bytes) -> the offloaded function."""
HEADS: dict[bytes, tuple[Callable[..., Any], Callable[[Any], Any]]] = {}
"""Envelope head (before the first NUL) of a positional call -> (function, decoder of the body)."""

_logger: logging.Logger | None = None


def log() -> logging.Logger:
    """The ``uwsgiconf_mules`` logger; logging is imported on first use (error paths only)."""
    global _logger
    if _logger is None:
        import logging

        _logger = logging.getLogger("uwsgiconf_mules")
    return _logger


def register(key: str, func: Callable[..., Any]) -> None:
    """Make ``func`` the task ``key``, for :func:`find` and the fast path.

    :param key: ``module:qualname``.
    :param func: The function to run.
    """
    REGISTRY[key.encode()] = func
    for head, loads in _protocol.heads(key).items():
        HEADS[head] = (func, loads)


def find(key: bytes) -> Callable[..., Any] | None:
    """The function of task ``key``, importing its module when needed; None if there is none.

    :param key: ``module:qualname`` as bytes.
    """
    func = REGISTRY.get(key)
    if func is None:
        func = _import(key)
        if func is not None:
            register(key.decode(), func)  # later calls take the mule loop's fast path
    return func


def _import(key: bytes) -> Callable[..., Any] | None:
    module_name, _, qualname = key.decode().partition(":")
    try:
        found: Any = importlib.import_module(module_name)
    except Exception:
        log().exception("uwsgiconf-mules: cannot import module %r for task %s", module_name, key.decode())
        return None
    func = REGISTRY.get(key)  # registered when its module was imported
    if func is None:
        # Decorated after import (e.g. ``mule_offload(target)(func)`` in a view): find it by name.
        for part in qualname.split("."):
            found = getattr(found, part, None)
        func = getattr(found, "__wrapped__", found) if callable(found) else None
    return func


def current_mule() -> int:
    """Id of the mule this runs in; 0 in a worker or outside uWSGI."""
    uwsgi = _instance.uwsgi
    return int(uwsgi.mule_id()) if uwsgi is not None else 0


def failed(key: bytes | str) -> None:
    """Log the exception being handled as the failure of task ``key``.

    :param key: The task key.
    """
    log().exception("uwsgiconf-mules: task %s failed", key.decode() if isinstance(key, bytes) else key)


def run_envelope(message: bytes, harakiri: int = 0) -> bool:
    """Run the call carried by an envelope; False if the message is not an envelope.

    A probe is dropped; an envelope that cannot be decoded or names no known task is logged and
    dropped; a call that raises is logged. None of them stops the caller.

    :param message: A message as a mule received it.
    :param harakiri: Seconds the call may run before uWSGI kills the mule; 0 for no limit.
    """
    if message.startswith(_protocol.PROBE):
        return True  # another dispatch mule of a farm looking for its queues
    try:
        decoded = _protocol.decode(message)
    except Exception:
        log().exception("uwsgiconf-mules: cannot decode a message of %d bytes", len(message))
        return True
    if decoded is None:
        return False
    key, args, kwargs = decoded
    func = find(key)
    if func is None:
        log().error("uwsgiconf-mules: unknown task %s: no offloaded function has this key in mule %d",
                    key.decode(), current_mule())
        return True
    uwsgi = _instance.uwsgi
    try:
        if harakiri:
            uwsgi.set_user_harakiri(harakiri)
        func(*args, **kwargs)
    except Exception:
        failed(key)
    finally:
        if harakiri:
            uwsgi.set_user_harakiri(0)
    return True


def pass_on(message: bytes) -> None:
    """Hand a message that is not ours to the mule message hook another library installed
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
