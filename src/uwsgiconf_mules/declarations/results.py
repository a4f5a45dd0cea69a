"""The results store: a uWSGI cache (``cache2``) that keeps the outcome of offloaded calls whose
task declares ``result_ttl`` (see :mod:`uwsgiconf_mules.runtime.results`).

Declared with ``set_mules_params(results=...)``: ``True`` for the defaults, or a mapping of
``items``, ``item_size``, ``store`` and ``name``. It renders as one ``cache2`` option:

* ``items``: how many results the store holds (uWSGI keeps item 0 for itself: one more is declared);
* ``item_size``: the largest encoded result, in bytes (uWSGI's ``blocksize``: one block per item,
  preallocated, so the store takes about ``items x item_size`` bytes of shared memory); a result
  larger than that is stored as a ``failed`` outcome saying so, never truncated (uWSGI refuses
  such a value whole);
* ``store``: an absolute file path: the cache is a shared mapping of that file, so results
  survive a reload (SIGHUP) and a restart; without it they live in the master's memory and a
  reload or a stop loses them;
* ``purge_lru=1`` always: when the store is full, the least recently used result is evicted
  (uWSGI's ``cache_set`` would otherwise refuse every new result, and a waiter would never see
  its outcome); ``keysize=64``: a result id is 32 characters;
* ``ignore_full=1`` always: uWSGI would otherwise log ``LRU item will be purged`` at every
  eviction, and with ``purge_lru`` it never drops an expired item, so a store once full evicts
  (and would log) at every new result for good; evictions are counted instead (the stats
  server's ``caches[].full``, shown by ``uwsgiconf-mules top``);
* ``hashsize``: one hash bucket per item (:func:`hash_size`), never fewer than uWSGI's default
  65,536: a lookup walks a chain of about one item, however large the store.
"""

from __future__ import annotations

from ..errors import MulesConfigurationError

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: workers and mules import this module, keep it cheap
if TYPE_CHECKING:
    from collections.abc import Callable

DEFAULT_NAME = "uwsgiconf_mules_results"
"""The cache's name when none is given."""
DEFAULT_ITEMS = 1000
"""How many results the store holds by default."""
DEFAULT_ITEM_SIZE = 16384
"""The largest encoded result by default, in bytes."""
MIN_ITEM_SIZE = 256
"""The smallest ``item_size``: a failed outcome's record (its error text bounded) fits in it."""
MAX_ITEMS = 10_000_000
"""The most results a store may hold (uWSGI preallocates every item)."""
MAX_ITEM_SIZE = 64 * 1024 * 1024
"""The largest ``item_size``."""
KEY_SIZE = 64
"""uWSGI's ``keysize`` of the store: longest key, in bytes (ids are 32 characters)."""
HASH_SIZE_MIN = 65536
"""uWSGI's default ``hashsize`` (buckets of the cache's hash table): the fewest a store gets."""
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
_KEYS = ("items", "item_size", "store", "name")


class ResultsStore:
    """A declared results store (validated by :func:`results_store`).

    :param name: The cache's name (uWSGI's ``name``).
    :param items: How many results it holds.
    :param item_size: The largest encoded result, in bytes (uWSGI's ``blocksize``).
    :param store: The file that keeps it across reloads and restarts, or None.
    """

    __slots__ = ("item_size", "items", "name", "store")

    def __init__(self, name: str, items: int, item_size: int, store: str | None = None) -> None:
        self.name, self.items, self.item_size, self.store = name, items, item_size, store

    def _values(self) -> tuple[object, ...]:
        return self.name, self.items, self.item_size, self.store

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ResultsStore):
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        store = "" if self.store is None else f", store={self.store!r}"
        return f"ResultsStore({self.name!r}, items={self.items}, item_size={self.item_size}{store})"

    def option(self) -> str:
        """The value of the ``cache2`` option (item 0 is uWSGI's own: one more item is declared)."""
        store = "" if self.store is None else f",store={self.store}"
        return (f"name={self.name},items={self.items + 1},blocksize={self.item_size},keysize={KEY_SIZE},"
                f"hashsize={hash_size(self.items)},purge_lru=1,ignore_full=1{store}")

    def record(self) -> str:
        """The record's field: ``name,items,item_size[,store]``."""
        return ",".join([self.name, str(self.items), str(self.item_size), *([self.store] if self.store else [])])


def hash_size(items: int) -> int:
    """The ``hashsize`` of a store of ``items`` results: one bucket per item (uWSGI's item 0
    included), and never fewer than uWSGI's default (:data:`HASH_SIZE_MIN`), so a lookup walks a
    chain of about one item (a store file made with another ``hashsize`` is read as it is: uWSGI
    builds the table again from the items at start).

    :param items: The store's ``items``.
    """
    return max(items + 1, HASH_SIZE_MIN)


def parse_store(text: str) -> ResultsStore:
    """Read back :meth:`ResultsStore.record`.

    :param text: ``name,items,item_size[,store]``.
    :raises ValueError: when it is not that.
    """
    name, items, item_size, *store = text.split(",")
    if len(store) > 1:
        raise ValueError(f"malformed results store {text!r}")
    return ResultsStore(name, int(items), int(item_size), store[0] if store else None)


def _whole(value: object, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise MulesConfigurationError(f"results {what} must be a whole number from {low} to {high}, not {value!r}",
                                      culprit=value)
    return value


def results_store(value: object, record_path: Callable[[str, str], str]) -> ResultsStore | None:
    """Check the ``results`` argument of ``set_mules_params`` and return the store it declares.

    :param value: None (no store), True (the defaults), or a mapping of ``items``, ``item_size``,
        ``store`` and ``name``.
    :param record_path: The check of a path the config carries (``validate.record_path``).
    :raises MulesConfigurationError: naming the key and the value at fault.
    """
    if value is None or value is False:
        return None
    if value is True:
        value = {}
    if not isinstance(value, dict):
        raise MulesConfigurationError(
            f"results must be True or a mapping of {', '.join(_KEYS)}, not {value!r}", culprit=value)
    unknown = sorted(str(key) for key in value if key not in _KEYS)
    if unknown:
        raise MulesConfigurationError(f"results: unknown key {unknown[0]!r}; keys: {', '.join(_KEYS)}",
                                      culprit=unknown[0])
    name = value.get("name", DEFAULT_NAME)
    if not isinstance(name, str) or not name or len(name) > 64 or not _NAME_CHARS.issuperset(name):
        raise MulesConfigurationError(
            f"results name must be 1 to 64 letters, digits, '_' or '-', not {name!r}", culprit=name)
    items = _whole(value.get("items", DEFAULT_ITEMS), "items", 1, MAX_ITEMS)
    item_size = _whole(value.get("item_size", DEFAULT_ITEM_SIZE), "item_size", MIN_ITEM_SIZE, MAX_ITEM_SIZE)
    store = value.get("store")
    if store is not None:
        import os

        if not isinstance(store, str) or not os.path.isabs(store) or store.endswith("/"):
            raise MulesConfigurationError(f"results store must be an absolute file path, not {store!r}",
                                          culprit=store)
        if "," in store or any(c.isspace() for c in store):
            raise MulesConfigurationError(
                f"results store {store!r} contains ',' or a space, which end uWSGI's cache2 values", culprit=store)
        store = record_path(os.path.normpath(store), "results store")
    return ResultsStore(name, items, item_size, store)
