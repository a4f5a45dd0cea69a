"""Results outside uWSGI: the local store, the handle, the test modes (eager: a completed handle,
capture: a queued one that ``outbox.run()`` completes), and bad input."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from uwsgiconf_mules import errors
from uwsgiconf_mules.runtime import (
    Result,
    handles as handles_module,
    instance as _instance,
    mule_offload,
    result_store as _result_store,
    results as _results,
)
from uwsgiconf_mules.testing import capture, eager

CONFIG = """
from uwsgiconf_mules import Section
section = Section()
section.workers.set_mules_params(farms=section.workers.mule_farm('calc', 2), results={'items': 3, 'item_size': 512})
uwsgi_configuration = section.as_configuration()
"""


@pytest.fixture(autouse=True)
def fresh() -> Iterator[None]:
    _instance.reset(None)
    _result_store._store = None
    _results.BEAT[0] = 0.0  # no timer thread looks (a timer of another test beat last)
    yield
    _instance.reset()
    _result_store._store = None


@mule_offload(result_ttl=60)
def add(a: int, b: int) -> int:
    return a + b


@mule_offload(result_ttl=60)
def boom(text: str) -> None:
    raise ValueError(text)


@mule_offload(result_ttl=60)
def unpicklable() -> object:
    return lambda: None


@mule_offload(result_ttl=60)
def sized(size: int) -> str:
    return "x" * size


@mule_offload()
def plain(a: int) -> None:
    pass


def spare() -> None:
    """Offloaded with bad options only (refused before it is registered)."""


def test_inline_a_call_returns_its_completed_handle_readable_by_id() -> None:
    handle = add(2, 3)
    assert isinstance(handle, Result)
    assert handle.status == "succeeded" and handle.is_finished and handle.attempts == 1
    assert handle.result(timeout=0) == 5 and handle.return_value == 5
    assert handle.enqueued_at is not None and abs(handle.enqueued_at - time.time()) < 5
    assert handle.started_at is not None and handle.finished_at is not None
    assert handle.started_at <= handle.finished_at
    again = Result.get(handle.id)
    assert again.result() == 5 and again.error is None
    assert plain(1) is True  # a task without results: True, as before


def test_a_failed_call_keeps_its_exception_text_and_result_raises_it() -> None:
    handle = boom("bad input")
    assert handle.status == "failed"
    assert handle.error == "ValueError: bad input" and handle.exception_type == "ValueError"
    assert handle.traceback is not None and "raise ValueError(text)" in handle.traceback
    with pytest.raises(errors.TaskFailed, match="the call is failed: ValueError: bad input") as info:
        handle.result(timeout=1)
    assert info.value.status == "failed" and info.value.result_id == handle.id


def test_an_unpicklable_return_value_is_a_failed_outcome_saying_why() -> None:
    handle = unpicklable()
    assert handle.status == "failed"
    assert handle.error is not None and "the return value (function) cannot be pickled" in handle.error


def test_malformed_and_expired_ids_are_refused_at_once_and_an_unknown_one_is_queued() -> None:
    with pytest.raises(errors.ResultNotFound, match="is not a result id"):
        Result.get("nope")
    with pytest.raises(errors.ResultNotFound, match=r"expired \d+ s ago \(its result_ttl of 600 s"):
        Result.get("0" * 12 + f"{600:08x}" + "ab" * 6)
    with pytest.raises(errors.ResultNotFound) as info:
        Result.get("nope")
    assert isinstance(info.value, LookupError)
    unknown = _results.new_id(60)  # no record is written before a call starts: an unexpired id is queued
    handle = Result.get(unknown)
    assert (handle.status, handle.attempts, handle.is_finished, handle.started_at) == ("queued", 0, False, None)
    with pytest.raises(errors.ResultTimeout, match=r"the call is queued \(no record: not started yet, or evicted"):
        handle.result(timeout=0)


def test_an_id_made_before_the_store_was_made_anew_is_lost(monkeypatch: pytest.MonkeyPatch) -> None:
    before = _results.new_id(60)
    current = _result_store.store()
    monkeypatch.setattr(current, "since", time.time() + 1)  # a store without a file, made at a reload since
    with pytest.raises(errors.ResultNotFound, match=r"made before the last reload or restart of the instance .* the "
                                                    r"store keeps no file \(store=\): the reload lost it"):
        Result.get(before)
    current.put(before, _results._encode("succeeded", 1, (1.0, 2.0), None, 7), 60)  # a call kept across it ran
    assert Result.get(before).result(timeout=0) == 7


def test_a_store_without_a_file_under_uwsgi_holds_the_calls_since_uwsgi_started() -> None:
    class Uwsgi:
        started_on = 1234
        cache_get = cache_update = cache_del = staticmethod(lambda *args: None)

    from uwsgiconf_mules.declarations.results import ResultsStore

    class Declared:
        results = ResultsStore("r", 10, 512)

    made = _result_store._CacheStore(Uwsgi(), "r", 512, 1234.0)
    assert made.since == 1234.0 and made.get_raw is Uwsgi.cache_get and made.put_raw is Uwsgi.cache_update
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_instance, "uwsgi", Uwsgi())
        patch.setattr(_instance, "declarations", lambda: Declared)
        assert _result_store.store().since == 1234.0
        _result_store._store = None
        Declared.results = ResultsStore("r", 10, 512, "/tmp/results.cache")
        assert _result_store.store().since == 0.0  # a file keeps them across reloads
    _result_store._store = None


def test_result_waits_without_spinning_and_always_ends_within_its_timeout() -> None:
    result_id = _results.new_id(60)
    handle = Result.get(result_id)
    began = time.monotonic()
    with pytest.raises(errors.ResultTimeout, match=r"no outcome within 0\.2 s"):
        handle.result(timeout=0.2)
    assert 0.2 <= time.monotonic() - began < 0.5
    with pytest.raises(errors.UsageError):
        handle.result(timeout=float("nan"))


def test_a_result_past_its_ttl_is_expired_even_before_the_store_drops_it(monkeypatch: pytest.MonkeyPatch) -> None:
    handle = add(1, 1)
    later = time.time() + 61
    monkeypatch.setattr(_results.time, "time", lambda: later)
    with pytest.raises(errors.ResultNotFound, match="expired"):
        handle.refresh()


def test_an_outcome_is_written_once() -> None:
    handle = add(1, 2)
    _results.running(handle.id, 2)  # a late re-run cannot hide the outcome
    _results.failed(handle.id, RuntimeError("late"), 0.0)
    assert Result.get(handle.id).status == "succeeded" and Result.get(handle.id).result() == 3


def test_the_lifecycle_hooks_write_retrying_and_interrupted() -> None:
    result_id = _results.new_id(60)
    started = _results.running(result_id, 1)
    _results.retrying(result_id, OSError("down"), started, 1, 2.5)
    handle = Result.get(result_id)
    assert handle.status == "retrying" and handle.error == "OSError: down (retry in 2.500 s)" and handle.attempts == 1
    _results.running(result_id, 2)
    assert handle.refresh().status == "running" and handle.attempts == 2
    _results.interrupted(result_id, "the mule died during the call (pid 42)", 2)
    assert handle.refresh().status == "interrupted" and handle.error == "the mule died during the call (pid 42)"
    with pytest.raises(errors.TaskFailed, match="the call is interrupted"):
        handle.result()


@pytest.fixture
def config(tmp_path: Path) -> str:
    path = tmp_path / "uwsgicfg.py"
    path.write_text(CONFIG)
    return str(path)


def test_eager_returns_a_completed_handle_and_keeps_the_exception_in_it(config: str) -> None:
    with eager(config) as outbox:
        handle = add(4, 5)
        assert handle.status == "succeeded" and handle.result() == 9
        failed = boom("no")
        assert failed.status == "failed" and failed.error == "ValueError: no"
    assert [call.args for call in outbox] == [(4, 5), ("no",)]


def test_capture_returns_a_queued_handle_that_outbox_run_completes(config: str) -> None:
    with capture(config) as outbox:
        handle = add(1, 2)
        assert handle.status == "queued" and not handle.is_finished
        assert outbox.calls[0].args == (1, 2) and outbox.calls[0].result_id == handle.id
        with pytest.raises(errors.ResultTimeout):
            handle.result(timeout=0)
        assert outbox.run() == 1
        assert handle.result(timeout=0) == 3


def test_the_declared_item_size_and_items_apply_outside_uwsgi_too(config: str) -> None:
    with eager(config):
        big = sized(600)
        assert big.status == "failed"
        assert "more than the results store's item_size (512 bytes): it is not stored" in (big.error or "")
        handles = [add(i, 0) for i in range(4)]  # the store holds 3: the oldest goes
        evicted = Result.get(handles[0].id)
        assert evicted.status == "queued"  # no record: the store cannot tell it from a call not started
        with pytest.raises(errors.ResultTimeout, match="evicted from a full store"):
            evicted.result(timeout=0)
        assert Result.get(handles[3].id).result() == 3


def test_result_ttl_is_checked_and_needs_a_declared_store(config: str, tmp_path: Path) -> None:
    with pytest.raises(errors.UsageError, match="result_ttl must be a number of seconds from 1"):
        mule_offload(result_ttl=0)(spare)
    with pytest.raises(errors.UsageError, match="result_ttl must be"):
        mule_offload(result_ttl=True)(spare)
    bare = tmp_path / "bare.py"
    bare.write_text(CONFIG.replace(", results={'items': 3, 'item_size': 512}", ""))
    with eager(str(bare)), pytest.raises(errors.MulesConfigurationError, match="declares no results store"):
        mule_offload("calc", result_ttl=5)(spare)
    assert "spare" not in str(sorted(_results.TASKS))


def test_a_task_without_result_ttl_is_registered_as_it_is_for_the_mule_s_fast_path() -> None:
    from uwsgiconf_mules.runtime import tasks as _tasks

    key = plain.key.encode()
    assert _tasks.REGISTRY[key] is plain.__wrapped__  # no wrapper: the mule calls the function itself
    assert {entry[0] for head, entry in _tasks.HEADS.items() if entry[3] == key} == {plain.__wrapped__}
    assert plain.key not in _results.TASKS
    wrapped = _tasks.REGISTRY[add.key.encode()]
    assert wrapped is not add.__wrapped__ and wrapped.__wrapped__ is add.__wrapped__  # type: ignore[attr-defined]
    assert _results.TASKS[add.key] == 60


def test_the_hooks_compose_with_a_lifecycle_that_retries_around_the_wrapped_task() -> None:
    """The composition the lifecycle makes (docs: Results > With retries and time limits): its guard
    around ``wrap(..., retried=...)``, ``retrying`` where a retry is kept, and the attempt in
    ``ATTEMPT``; the wrapper writes ``failed`` for what is not retried."""
    seen: list[tuple[str, int]] = []
    calls = iter([OSError("down"), OSError("still down"), 42])

    def flaky() -> int:
        outcome = next(calls)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    limit = [3]
    inner = _results.wrap("tests.unit.runtime.test_results:flaky", flaky, 60,
                          retried=lambda exc, attempt: isinstance(exc, OSError) and attempt < limit[0])

    def guard(result_id: str, attempts: int) -> None:  # a lifecycle's guard, retrying at once
        limit[0] = attempts
        for attempt in range(1, attempts + 1):
            _results.ATTEMPT[0] = attempt if attempt > 1 else 0
            try:
                inner(result_id)
            except OSError as exc:
                handle = Result.get(result_id)
                seen.append((handle.status, handle.attempts))
                if attempt == attempts:
                    return  # the wrapper wrote the outcome: not retried
                _results.retrying(result_id, exc, None, attempt, 0.0)
                seen.append((Result.get(result_id).status, attempt))
            else:
                return
            finally:
                _results.ATTEMPT[0] = 0

    retried = _results.new_id(60)
    guard(retried, 3)
    assert seen == [("running", 1), ("retrying", 1), ("running", 2), ("retrying", 2)]
    handle = Result.get(retried)
    assert (handle.status, handle.attempts, handle.result()) == ("succeeded", 3, 42)
    calls = iter([OSError("a"), OSError("b")])
    exhausted = _results.new_id(60)
    guard(exhausted, 2)
    final = Result.get(exhausted)
    assert (final.status, final.attempts, final.error) == ("failed", 2, "OSError: b")
    assert final.started_at is not None
    calls = iter([ValueError("not retried")])
    other = _results.new_id(60)
    with pytest.raises(ValueError):
        guard(other, 3)
    assert (Result.get(other).status, Result.get(other).error) == ("failed", "ValueError: not retried")


def test_nowait_and_aoffload_return_handles_and_result_is_generic_at_run_time(config: str) -> None:
    import asyncio

    assert Result[int] is Result  # no typing module needed in workers
    with eager(config):
        assert add.nowait(1, 1).result() == 2
        assert asyncio.run(add.aoffload(2, 2)).result() == 4  # type: ignore[attr-defined]


@pytest.fixture
def beating() -> Iterator[list[float]]:
    """A timer thread that looked just now (``results.beat``): the wrapper leaves ``running`` to it."""
    _results.BEAT[0] = time.time() + 3600
    yield _results.BEAT
    _results.BEAT[0] = 0.0
    _results.CURRENT[0] = _results.WRITING[0] = None


def writes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The statuses written to the store from now on, in order."""
    written: list[str] = []
    current = _result_store.store()
    put = current.put

    def counted(result_id: str, record: bytes, ttl: int) -> bool:
        written.append(_results._decode(record)[1])
        return put(result_id, record, ttl)

    monkeypatch.setattr(current, "put", counted)
    return written


def test_a_short_call_writes_its_outcome_only(beating: list[float], monkeypatch: pytest.MonkeyPatch) -> None:
    written = writes(monkeypatch)
    inner = _results.wrap("tests.unit.runtime.test_results:quick", lambda: "done", 60)
    result_id = _results.new_id(60)
    assert Result.get(result_id).status == "queued"
    inner(result_id)
    _results.beat()  # the timer's next look: the call has ended, nothing to write
    assert written == ["succeeded"]
    assert Result.get(result_id).result(timeout=0) == "done"


def test_the_timer_writes_running_once_for_a_call_that_outlasts_a_few_ms(
        beating: list[float], monkeypatch: pytest.MonkeyPatch) -> None:
    written = writes(monkeypatch)
    result_id = _results.new_id(60)
    seen = []

    def slow() -> int:
        time.sleep(_results.RUNNING_AFTER + 0.01)
        _results.beat()
        _results.beat()  # once per call
        seen.append((Result.get(result_id).status, Result.get(result_id).attempts))
        return 5

    _results.wrap("tests.unit.runtime.test_results:slow", slow, 60)(result_id)
    assert seen == [("running", 1)] and written == ["running", "succeeded"]
    handle = Result.get(result_id)
    assert handle.result(timeout=0) == 5 and handle.started_at is not None
    _results.CURRENT[0] = (result_id, 1, 0.0)  # a late look for a call that has its outcome
    _results.beat()
    assert Result.get(result_id).status == "succeeded"


def test_the_outcome_waits_for_a_running_write_under_way(beating: list[float], monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    result_id = _results.new_id(60)
    inside = threading.Event()
    write = _results._write

    def slow_write(rid: str, record: bytes) -> bool:
        if _results._decode(record)[1] == "running":  # checked for an outcome already: none yet
            inside.set()
            time.sleep(0.05)  # the call ends meanwhile
        return write(rid, record)

    monkeypatch.setattr(_results, "_write", slow_write)

    timer = threading.Thread(target=_results.beat)

    def func() -> str:
        time.sleep(_results.RUNNING_AFTER + 0.005)
        timer.start()
        assert inside.wait(5)
        return "last"

    _results.wrap("tests.unit.runtime.test_results:func", func, 60)(result_id)
    timer.join(5)
    assert Result.get(result_id).status == "succeeded"  # written after the timer's `running`, not before it


@mule_offload(result_ttl=60)
def echo(value: object) -> object:
    return value


def test_return_values_are_kept_as_arguments_are_sent(config: str) -> None:
    with eager(config):
        for value in (3, 2.5, "text", None, True, b"raw", [1, "a"], {"k": (1, 2)}):
            handle = echo(value)
            assert handle.result(timeout=0) == value and type(handle.return_value) is type(value)
        kept = _result_store.store().get(echo("text").id)
        assert kept is not None and _results._decode(kept)[6] == "text"  # as it is: no pickle
        kept = _result_store.store().get(echo(b"raw").id)
        assert kept is not None and _results._decode(kept)[6] != b"raw"  # bytes in a record are a pickle


def test_ids_made_by_threads_at_once_are_all_different() -> None:
    import threading

    from uwsgiconf_mules.runtime import result_ids

    made: list[list[str]] = [[] for _ in range(4)]
    make = result_ids.id_maker(60)

    def run(into: list[str]) -> None:
        into.extend(make() for _ in range(3 * result_ids.POOL))

    threads = [threading.Thread(target=run, args=(into,)) for into in made]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [rid for into in made for rid in into]
    assert len(set(every)) == len(every) == 12 * result_ids.POOL
    assert all(_results.id_times(rid) is not None and _results.id_times(rid)[1] == 60 for rid in every[:100])


def test_the_offloads_handle_reads_a_finished_record_in_one_look_and_never_past_its_expiry(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from uwsgiconf_mules.runtime import result_ids

    result_id, expires = result_ids.timed_id_maker(60)()
    made, ttl = _results.id_times(result_id) or (0.0, 0)
    assert expires == made + ttl and ttl == 60  # what the id says, to the bit
    _results.succeeded(result_id, [1, 2], time.time())
    current = _result_store.store()
    looks: list[str] = []
    monkeypatch.setattr(current, "get_raw", lambda rid, name: looks.append(rid) or current.get(rid))
    assert Result(result_id, None, expires).result(timeout=0) == [1, 2] and looks == [result_id]  # one look
    monkeypatch.setattr(_results.time, "time", lambda: expires + 0.001)  # the record is still in the store
    with pytest.raises(errors.ResultNotFound, match="expired"):
        Result(result_id, None, expires).result(timeout=0)
    other, other_expires = result_ids.timed_id_maker(60)()  # no record: queued, as from the id
    monkeypatch.setattr(_results.time, "time", lambda: other_expires - 30)
    with pytest.raises(errors.ResultTimeout, match="queued"):
        Result(other, None, other_expires).result(timeout=0)


def test_result_looks_at_once_then_after_50_us_doubling_up_to_50_ms(monkeypatch: pytest.MonkeyPatch) -> None:
    result_id = _results.new_id(60)
    handle = Result.get(result_id)
    pauses: list[float] = []

    def sleep(seconds: float) -> None:
        pauses.append(seconds)
        if len(pauses) == 14:
            _results.succeeded(result_id, 7, time.time())

    monkeypatch.setattr(handles_module.time, "sleep", sleep)
    assert handle.result(timeout=60) == 7
    assert pauses == [min(0.00005 * 2 ** n, 0.05) for n in range(14)]
    assert Result.get(result_id).result() == 7 and len(pauses) == 14  # a finished record: no sleep at all
