"""This uWSGI instance, as the runtime sees it: the ``uwsgi`` module and the declarations.

The declarations record (the ``UWSGICONF_MULES`` environment variable, see
:mod:`uwsgiconf_mules.declarations`) is read once per process, so the farms and mules the
runtime knows are exactly the ones the builders declared. Outside uWSGI (scripts, tests,
development servers) ``uwsgi`` is None and the declarations are the record when someone set it,
else those of the configuration module named by ``UWSGICONF_MULES_CONFIG`` (loaded with
uwsgiconf, on demand: see :mod:`uwsgiconf_mules._project`), else none.

Test modes (:mod:`uwsgiconf_mules.testing`) replace how offloaded calls are handled outside uWSGI
through :func:`reset` and :data:`local_send`: offloaded functions choose their sending function
when they resolve their route, so production calls never test for a mode.
"""

from __future__ import annotations

import os
import weakref

from ..declarations import CONFIG_ENV, RECORD_ENV, RUNTIME_MODULE, Declarations, parse_record
from ..errors import DeclarationsMissingError, NotInMuleError
from ..protocol.envelope import TOKEN_PID
from ..protocol.limits import clear_cache

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: workers and mules import this module, keep it cheap
if TYPE_CHECKING:
    from collections.abc import Callable
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

token_from_master: bool = uwsgi is not None and TOKEN_PID == os.getpid() and uwsgi.masterpid() == TOKEN_PID
"""Whether the token was drawn in the uWSGI master, so that every process forked from it shares it:
decided once, when this module is imported (in the master: ``shared-import``). Not by comparing
pids later: ``--daemonize2`` forks the master after it loaded the app, so the master's pid then
differs from the one that drew the token, though every process has the right token."""

_MISSING: Any = object()
_cache: Any = _MISSING
_caches: weakref.WeakSet[Any] = weakref.WeakSet()  # offloaded functions holding a resolved route

loaded_from: str | None = None
"""Outside uWSGI, where the declarations were loaded from (``UWSGICONF_MULES_CONFIG=...``, or a test
mode's config), for error messages; None for the record."""

local_send: Callable[[bytes, int | bytes], bool] | None = None
"""Outside uWSGI, what offloaded functions do with a call instead of running it inline (a test
mode's recorder); read when a route is resolved, so set it, then :func:`reset`."""


def declarations() -> Declarations | None:
    """The declarations of this uWSGI instance, read once; None when none are known.

    Under uWSGI, the record of the compiled config. Outside uWSGI, the record when set, else the
    declarations of the configuration module named by ``UWSGICONF_MULES_CONFIG``.

    :raises MulesConfigurationError: outside uWSGI, when the configuration module named cannot
        be loaded or names no single section with mules (every call raises again).
    """
    global _cache, loaded_from
    if _cache is _MISSING:
        loaded_from = None
        record = os.environ.get(RECORD_ENV)
        conf = os.environ.get(CONFIG_ENV) if uwsgi is None and record is None else None
        if conf:
            from .._project import load_declarations

            _cache = load_declarations(conf)
            loaded_from = f"{CONFIG_ENV}={conf}"
        else:
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
    if not token_from_master and uwsgi.masterpid():
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


def reset(known: Declarations | None = _MISSING, source: str | None = None) -> None:
    """Forget the declarations, the socket limits and every cached route (for tests, which
    change the environment between cases, and test modes).

    :param known: Declarations to use from now on instead of reading them again (None: none).
    :param source: Where ``known`` comes from, for error messages.
    """
    global _cache, loaded_from
    _cache = known
    loaded_from = source
    clear_cache()
    for cache in list(_caches):
        cache._forget()


def require_mule(what: str) -> Any:
    """The ``uwsgi`` module, in a mule.

    :param what: The operation, for the error.
    :raises NotInMuleError: anywhere else.
    """
    if uwsgi is None or not uwsgi.mule_id():
        raise NotInMuleError(f"{what} can only be called in a uWSGI mule")
    return uwsgi


def as_text(message: bytes) -> str:
    """A message as text (UTF-8, undecodable bytes kept as surrogates).

    :param message: The bytes read.
    """
    return str(message.decode("utf-8", "surrogateescape"))
