"""Result ids an attacker writes (a status page that takes an id from the request): an id no
sender could have made is no result, at once; it never reads as ``queued`` for years."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from uwsgiconf_mules import errors
from uwsgiconf_mules.runtime import Result, instance as _instance, result_store as _result_store, results as _results


@pytest.fixture(autouse=True)
def fresh() -> Iterator[None]:
    _instance.reset(None)
    _result_store._store = None
    yield
    _instance.reset()
    _result_store._store = None


def _made_at(ms: int, ttl: int = 600) -> str:
    return f"{ms:012x}{ttl:08x}" + "ab" * 6


def test_an_id_made_in_the_future_is_no_result() -> None:
    forged = _made_at(int((time.time() + 10 * 365 * 86400) * 1000), _results.MAX_TTL)  # ten years ahead, max ttl
    with pytest.raises(errors.ResultNotFound):
        Result.get(forged)  # else: queued, and .result() with no timeout waits for 146 years


@pytest.mark.parametrize("head", ["0x", "+0", " 0", "0_"])
def test_an_id_that_is_not_32_lowercase_hex_digits_is_no_result(head: str) -> None:
    real = _results.new_id(60)
    forged = head + real[len(head):]
    assert _results.id_times(forged) is None
    with pytest.raises(errors.ResultNotFound, match="is not a result id"):
        Result.get(forged)


def test_a_real_unknown_id_is_still_queued() -> None:
    assert Result.get(_results.new_id(60)).status == "queued"
