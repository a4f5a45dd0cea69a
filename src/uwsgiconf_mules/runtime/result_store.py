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
    """

    def __init__(self, uwsgi: Any, name: str, item_size: int) -> None:
        self.name, self.item_size = name, item_size
        self._get, self._put, self._del = uwsgi.cache_get, uwsgi.cache_update, uwsgi.cache_del

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
        _store = _CacheStore(uwsgi, spec.name, spec.item_size)
    else:
        _store = _LocalStore(spec.items if spec else LOCAL_ITEMS, spec.item_size if spec else 1 << 30)
    _store_for = declarations
    return _store  # type: ignore[no-any-return]
