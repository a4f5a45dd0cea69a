"""What happens when an offloaded call raises: one log line that says which call failed, where
and how, and the ``on_failure`` hook the builders declared.

The log line carries the task key, the mule id, how long the call ran and a bounded ``repr`` of
its arguments (at most :data:`ARGS_REPR_MAX` characters, so a failing call with a large payload
never floods the log), followed by the traceback. The hook, ``package.module:function`` from
``set_mules_params(on_failure=...)``, is imported at the first failure and called as
``function(key, args, kwargs, exception, mule_id)``; whatever it raises is logged, never fatal
to the mule. Nothing here runs unless a call failed.
"""

from __future__ import annotations

from .._text import escape
from . import instance as _instance, tasks as _tasks

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: workers and mules import this module, keep it cheap
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

ARGS_REPR_MAX = 300
"""Longest ``repr`` of a failed call's arguments in its log line, in characters."""

_MISSING: Any = object()
_hook: Any = _MISSING  # the declared hook once imported; None: none declared, or it cannot be imported
REPORTED = [0]
"""Failures :func:`report` said in this process (the schedules tell a tick's outcome from it)."""


def bounded_repr(args: tuple[Any, ...], kwargs: dict[str, Any] | None) -> str:
    """The arguments of a call as ``(1, 'x', key=...)``, shortened to :data:`ARGS_REPR_MAX`.

    :param args: Positional arguments.
    :param kwargs: Keyword arguments.
    """
    import reprlib

    shorter = reprlib.Repr()
    shorter.maxstring = shorter.maxother = 60
    shorter.maxlevel = 3
    parts = [shorter.repr(value) for value in args]  # reprlib shows a repr that raises as <X instance at ...>
    parts.extend(f"{name}={shorter.repr(value)}" for name, value in (kwargs or {}).items())
    text = f"({', '.join(parts)})"
    return text if len(text) <= ARGS_REPR_MAX else text[:ARGS_REPR_MAX - 4] + "...)"


def hook() -> Callable[..., Any] | None:
    """The declared ``on_failure`` function, imported once; None when none is declared or it
    cannot be imported (said once in the log)."""
    global _hook
    if _hook is _MISSING:
        declarations = _instance.declarations()
        path = declarations.on_failure if declarations is not None else None
        _hook = None
        if path:
            import importlib

            module, _, name = path.partition(":")
            try:
                found: Any = importlib.import_module(module)
                for part in name.split("."):
                    found = getattr(found, part)
            except Exception as exc:
                _tasks.log().error("uwsgiconf-mules: mule %d cannot load the on_failure hook %s (%s: %s); "
                                   "failures are only logged", _tasks.current_mule(), path, type(exc).__name__,
                                   message(exc))
            else:
                _hook = found
    return _hook  # type: ignore[no-any-return]


def reset() -> None:
    """Forget the hook (for tests that change the declarations)."""
    global _hook
    _hook = _MISSING


def message(exc: BaseException) -> str:
    """What ``exc`` says, on one line (see :mod:`uwsgiconf_mules._text`): an exception's message may be made
    of request data, which must not forge log records or reach a terminal as escape sequences.

    :param exc: The exception.
    """
    try:
        text = str(exc)
    except Exception as str_exc:  # a __str__ that raises: never fatal to the mule
        text = f"<str() raised {type(str_exc).__name__}>"
    return escape(text)


def report(key: str, args: tuple[Any, ...], kwargs: dict[str, Any] | None, exc: BaseException,
           seconds: float | None) -> None:
    """Log the failure of a call (with its traceback) and pass it to the ``on_failure`` hook.

    :param key: The task key.
    :param args: The call's positional arguments.
    :param kwargs: Its keyword arguments.
    :param exc: What it raised.
    :param seconds: How long it ran, or None when not known.
    """
    REPORTED[0] += 1
    mule_id = _tasks.current_mule()
    ran = "" if seconds is None else f" after {seconds:.3f} s"
    try:
        shown = bounded_repr(args, kwargs)
    except Exception as repr_exc:  # arguments that are not a tuple and a dict (a damaged call): never fatal
        shown = f"not shown ({type(repr_exc).__name__}: {repr_exc})"
    from . import policy as _policy  # failed calls: attempts, and the dead letter kept

    _tasks.log().error("uwsgiconf-mules: task %s failed in mule %d%s%s: %s: %s; arguments %s", escape(key), mule_id,
                       ran, _policy.attempt_text(key), escape(type(exc).__name__), message(exc), escape(shown),
                       exc_info=exc)
    function = hook()
    if function is None:
        _policy.keep_failed(key, args, kwargs, exc)
        return
    try:
        function(key, args, dict(kwargs or {}), exc, mule_id)
    except (Exception, SystemExit) as hook_exc:
        _tasks.log().error("uwsgiconf-mules: mule %d: the on_failure hook failed on task %s (%s: %s)", mule_id,
                           escape(key), escape(type(hook_exc).__name__), message(hook_exc), exc_info=hook_exc)
    _policy.keep_failed(key, args, kwargs, exc)
