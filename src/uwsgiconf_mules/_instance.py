"""This uWSGI instance, as the runtime sees it: the ``uwsgi`` module and the declarations.

The declarations record (the ``UWSGICONF_MULES`` environment variable, see
:mod:`uwsgiconf_mules._declarations`) is read once per process, so the farms and mules the
runtime knows are exactly the ones the builders declared. Outside uWSGI (scripts, tests,
development servers) ``uwsgi`` is None and the declarations are read from the environment when
someone set them.
"""

from __future__ import annotations

import os
import weakref

from ._declarations import RECORD_ENV, RUNTIME_MODULE, Declarations, parse_record
from ._limits import clear_cache
from ._protocol import TOKEN_PID
from .errors import DeclarationsMissingError

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: workers and mules import this module, keep it cheap
if TYPE_CHECKING:
    from typing import Any, Protocol

    class Forgetful(Protocol):
        """Something that caches what it read of the declarations (an offloaded function)."""

        def _forget(self) -> None: ...

try:  # Only importable inside a uWSGI process.
    import uwsgi as _uwsgi_module
except ImportError:  # pragma: no cover - depends on the process
    _uwsgi_module = None

uwsgi: Any = _uwsgi_module
"""The ``uwsgi`` module inside uWSGI; None elsewhere."""

_MISSING: Any = object()
_cache: Any = _MISSING
_caches: weakref.WeakSet[Any] = weakref.WeakSet()  # offloaded functions holding a resolved route


def declarations() -> Declarations | None:
    """The declarations of this uWSGI instance, read once; None when none are known."""
    global _cache
    if _cache is _MISSING:
        record = os.environ.get(RECORD_ENV)
        _cache = None if record is None else parse_record(record)
    return _cache  # type: ignore[no-any-return]


def required_declarations() -> Declarations | None:
    """The declarations, or None outside uWSGI; under uWSGI, checked to be usable for sending.

    :raises DeclarationsMissingError: under uWSGI, when the config carries no record, or when the
        runtime was not imported in the master (processes would not share the token).
    """
    found = declarations()
    if uwsgi is None:
        return found
    if found is None:
        raise DeclarationsMissingError(
            f"this uWSGI instance has no uwsgiconf-mules declarations (no {RECORD_ENV} in the "
            "environment): declare mules with uwsgiconf_mules.Section and compile the config with "
            "`uwsgiconf compile` or `uwsgiconf-mules compile`")
    master = uwsgi.masterpid()
    if master and master != TOKEN_PID:
        raise DeclarationsMissingError(
            f"{RUNTIME_MODULE} was not imported in the uWSGI master (the config's `shared-import = "
            f"{RUNTIME_MODULE}` is missing), so this process cannot sign calls that mules accept: "
            "compile the config again with uwsgiconf-mules")
    return found


def remember(cache: Forgetful) -> None:
    """Register something that caches a route, so that :func:`reset` makes it read again.

    :param cache: An object with a ``_forget()`` method; held weakly.
    """
    _caches.add(cache)


def reset() -> None:
    """Forget the declarations, the socket limits and every cached route (for tests, which
    change the environment between cases)."""
    global _cache
    _cache = _MISSING
    clear_cache()
    for cache in list(_caches):
        cache._forget()
