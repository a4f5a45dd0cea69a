"""The results store of this process (see :mod:`.results`): the instance's uWSGI cache, by its
declared name, under uWSGI; a dictionary of this process outside (inline calls, test modes)."""

from __future__ import annotations

from ..errors import MulesConfigurationError
from . import instance as _instance

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: workers and mules import this module, keep it cheap
if TYPE_CHECKING:
    from typing import Any

LOCAL_ITEMS = 10000
"""Results kept outside uWSGI without a declared store (the oldest go first)."""


class _CacheStore:
    """The results store of a uWSGI instance: its ``cache2``, by name.

    :param uwsgi: The ``uwsgi`` module.
    :param name: The cache's name.
    :param item_size: The largest record it takes.
    :param since: Since when it holds the results of the calls made (``time.time()``): for a store
        without a file, when the instance last started or reloaded (it lost every earlier one); 0
        for one with a file, which keeps them.
    """

    def __init__(self, uwsgi: Any, name: str, item_size: int, since: float = 0.0) -> None:
        self.name, self.item_size, self.since = name, item_size, since
        self._get, self._put, self._del = uwsgi.cache_get, uwsgi.cache_update, uwsgi.cache_del
        # The hot paths' calls, with the store's name last: uWSGI's own functions, no frame of ours.
        self.get_raw: Any = uwsgi.cache_get
        self.put_raw: Any = uwsgi.cache_update

    def get(self, result_id: str) -> bytes | None:
        value: bytes | None = self._get(result_id, self.name)
        return value

    def put(self, result_id: str, record: bytes, ttl: int) -> bool:
        return bool(self._put(result_id, record, ttl, self.name))

    def delete(self, result_id: str) -> None:
        self._del(result_id, self.name)


class _LocalStore:
    """The results store outside uWSGI: a dictionary of this process, at most ``items`` records
    (the oldest written go first), each at most ``item_size`` bytes.

    :param items: How many it keeps.
    :param item_size: The largest record it takes.
    """

    name = "local"
    since = 0.0

    def __init__(self, items: int, item_size: int) -> None:
        import threading

        self.items, self.item_size = items, item_size
        self._records: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def get(self, result_id: str) -> bytes | None:
        return self._records.get(result_id)

    def put(self, result_id: str, record: bytes, ttl: int) -> bool:
        if len(record) > self.item_size:
            return False
        with self._lock:
            self._records.pop(result_id, None)
            while len(self._records) >= self.items:
                del self._records[next(iter(self._records))]
            self._records[result_id] = record
        return True

    def delete(self, result_id: str) -> None:
        self._records.pop(result_id, None)

    def get_raw(self, result_id: str, name: str) -> bytes | None:
        """:meth:`get` with the store's name, as the hot paths call a uWSGI store."""
        return self._records.get(result_id)

    def put_raw(self, result_id: str, record: bytes, ttl: int, name: str) -> bool:
        """:meth:`put` with the store's name, as the hot paths call a uWSGI store."""
        return self.put(result_id, record, ttl)


_store: Any = None
_store_for: Any = None  # the declarations the store was made for


def store() -> _CacheStore | _LocalStore:
    """This process's results store: the declared cache under uWSGI, else a local one.

    :raises MulesConfigurationError: under uWSGI, when the config declares no results store.
    """
    global _store, _store_for
    declarations = _instance.declarations()
    if _store is not None and _store_for is declarations:
        return _store  # type: ignore[no-any-return]
    spec = declarations.results if declarations is not None else None
    uwsgi = _instance.uwsgi
    if uwsgi is not None:
        if spec is None:
            raise MulesConfigurationError(
                "results: this uWSGI instance declares no results store, so no call keeps a result: declare one "
                "with set_mules_params(results=...) and compile the config again", culprit="results")
        # uWSGI's start time (seconds, the master's, set again at each reload): a store without a
        # file is made anew then, so a call made before it has no result here.
        since = 0.0 if spec.store else float(getattr(uwsgi, "started_on", 0) or 0)
        _store = _CacheStore(uwsgi, spec.name, spec.item_size, since)
    else:
        _store = _LocalStore(spec.items if spec else LOCAL_ITEMS, spec.item_size if spec else 1 << 30)
    _store_for = declarations
    return _store  # type: ignore[no-any-return]


def hot_store(cell: list[tuple[Any, Any, Any, str, int]]) -> tuple[Any, Any, Any, str, int]:
    """(store, its ``put_raw``, its ``get_raw``, name, ``item_size``) of :func:`store`, for a hot path: kept in
    ``cell`` under uWSGI, where it never changes (the declarations are read once), so the next
    calls read it there; outside uWSGI (tests change the declarations) ``cell`` stays empty.

    :param cell: The hot path's cell (a list, empty until then).
    """
    current = store()
    found = (current, current.put_raw, current.get_raw, current.name, current.item_size)
    if _instance.uwsgi is not None:
        cell.append(found)
    return found
