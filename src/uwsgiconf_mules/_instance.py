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

from ._declarations import RECORD_ENV, Declarations, parse_record
from ._limits import clear_cache
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
    """The declarations, or None outside uWSGI.

    :raises DeclarationsMissingError: under uWSGI, when the config carries no record.
    """
    found = declarations()
    if found is None and uwsgi is not None:
        raise DeclarationsMissingError(
            f"this uWSGI instance has no uwsgiconf-mules declarations (no {RECORD_ENV} in the "
            "environment): declare mules with uwsgiconf_mules.Section and compile the config with "
            "`uwsgiconf compile` or `uwsgiconf-mules compile`")
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
