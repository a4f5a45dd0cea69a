"""The results store's declaration: validated, rendered as one cache2 option, carried by the record."""

from __future__ import annotations

import pytest

from uwsgiconf_mules.declarations import ResultsStore, declare, parse_record
from uwsgiconf_mules.errors import MulesConfigurationError


def test_defaults_and_a_store_file_render_one_cache2_option_and_survive_the_record() -> None:
    declared = declare(mules=1, results=True)
    assert declared.results == ResultsStore("uwsgiconf_mules_results", 1000, 16384)
    assert ("cache2", "name=uwsgiconf_mules_results,items=1001,blocksize=16384,keysize=64,hashsize=65536,purge_lru=1,"
            "ignore_full=1") in declared.options()
    kept = declare(mules=1, results={"items": 10, "item_size": 256, "store": "/var/lib/x/../r.cache", "name": "r-1"})
    assert ("cache2", "name=r-1,items=11,blocksize=256,keysize=64,hashsize=65536,purge_lru=1,ignore_full=1,"
            "store=/var/lib/r.cache") in kept.options()
    assert parse_record(kept.record()) == kept
    assert declare(mules=1).results is None and declare(mules=1, results=False).results is None


@pytest.mark.parametrize(("items", "buckets"), [(1, 65536), (65535, 65536), (65536, 65537), (10_000_000, 10_000_001)])
def test_a_store_has_a_hash_bucket_per_item_and_never_fewer_than_uwsgis_default(items: int, buckets: int) -> None:
    option = dict(declare(mules=1, results={"items": items}).options())["cache2"]
    assert f",items={items + 1}," in option and f",hashsize={buckets}," in option
    assert ",purge_lru=1,ignore_full=1" in option  # evicts the oldest, and logs no line per eviction


@pytest.mark.parametrize(("results", "message"), [
    ("yes", "results must be True or a mapping of items, item_size, store, name, not 'yes'"),
    ({"size": 1}, "results: unknown key 'size'; keys: items, item_size, store, name"),
    ({"items": 0}, "results items must be a whole number from 1 to 10000000, not 0"),
    ({"items": True}, "results items must be a whole number"),
    ({"item_size": 100}, "results item_size must be a whole number from 256 to 67108864, not 100"),
    ({"store": "results.cache"}, "results store must be an absolute file path, not 'results.cache'"),
    ({"store": "/a,b"}, "contains ',' or a space, which end uWSGI's cache2 values"),
    ({"store": "/a;b"}, "results store '/a;b' contains"),
    ({"name": "a b"}, "results name must be 1 to 64 letters, digits, '_' or '-', not 'a b'"),
])
def test_bad_results_are_refused_naming_the_key(results: object, message: str) -> None:
    with pytest.raises(MulesConfigurationError) as info:
        declare(mules=1, results=results)
    assert message in str(info.value)
