"""A stopping dispatch mule's keeper, on a real spool: calls kept within the limit, the rest counted; the
fast path's table."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from uwsgiconf_mules.mule import loop as _dispatch
from uwsgiconf_mules.protocol import envelope as _protocol, spool as _spool
from uwsgiconf_mules.runtime import tasks as _tasks


def signed(key: str, *args: object) -> bytes:
    return _protocol.encoder(key)(args, {})


def test_calls_are_kept_for_their_queue_and_other_messages_are_not(tmp_path: Path) -> None:
    spool = _spool.Spool(str(tmp_path / "spool"))
    spool.create()
    keep = _dispatch._Keeper(spool)
    assert keep(signed("tasks:a", 1), 1) == 1
    assert keep(signed("tasks:b", 2), b"fast") == 1
    assert keep(signed("tasks:c"), None) == 1
    assert keep(_protocol.PROBE + bytes(12), 1) == 0
    assert keep(_protocol.HEADER + bytes(16) + b"mos:system\x00", 1) == 0  # a forgery is never kept as a call
    kept = [_spool.read(path) for path in spool.files("queue")]
    assert kept == [("mule:1", _protocol.stored(signed("tasks:a", 1))),
                    ("farm:fast", _protocol.stored(signed("tasks:b", 2))),
                    (_spool.ANY, _protocol.stored(signed("tasks:c")))]
    assert kept[0][1].startswith(b"mtasks:a\x00")  # without token and tag, as every version kept calls
    assert (len(keep.kept), keep.lost) == (3, {})


def test_a_batch_is_kept_whole_in_one_file_and_runs_in_order_from_it(tmp_path: Path) -> None:
    spool = _spool.Spool(str(tmp_path / "spool"))
    spool.create()
    calls = [signed("tasks:a", i) for i in range(5)]
    batch = _protocol.batch(calls)
    assert _dispatch._Keeper(spool)(batch, 1) == 1
    (path,) = spool.files("queue")
    note, payload = _spool.read(path)
    assert note == "mule:1" and _protocol.TOKEN not in payload
    assert _protocol.split(_protocol.restored(payload)) == calls  # with this instance's token again, in order


def test_past_its_limit_or_when_the_disk_refuses_the_spool_keeps_nothing_and_says_how_much(tmp_path: Path) -> None:
    spool = _spool.Spool(str(tmp_path / "spool"), limit=100)
    spool.create()
    keep = _dispatch._Keeper(spool)
    assert keep(signed("tasks:a", "x" * 40), 1) == 1
    assert keep(signed("tasks:a", "x" * 40), 1) == 0  # over 100 bytes
    os.rmdir(spool.part("tmp"))
    Path(spool.part("tmp")).write_text("not a directory")
    keep.room = 10_000
    assert keep(signed("tasks:a", "y"), 1) == 0
    assert len(keep.kept) == 1
    assert keep.lost == {f"the spool {spool.path} holds its limit of 100 bytes": 1,
                         "the disk refused it (Not a directory)": 1}


def test_delayed_calls_count_against_the_limit_of_what_a_stopping_mule_keeps(tmp_path: Path) -> None:
    from uwsgiconf_mules.protocol.spool import delayed

    spool = _spool.Spool(str(tmp_path / "spool"), limit=200)
    spool.create()
    delayed.write(spool, "farm:fast", b"m" * 120, 10 ** 18)  # a delayed call of 120 bytes and its header
    keep = _dispatch._Keeper(spool)
    assert keep(signed("tasks:a", "x" * 40), 1) == 0  # what is left of the 200 bytes is too little
    assert keep.lost == {f"the spool {spool.path} holds its limit of 200 bytes": 1}


@pytest.fixture
def registry() -> Iterator[None]:
    saved = dict(_tasks.REGISTRY), dict(_tasks.HEADS), set(_tasks._SHARED)
    yield
    for table, old in zip((_tasks.REGISTRY, _tasks.HEADS, _tasks._SHARED), saved, strict=True):
        table.clear()
        table.update(old)  # type: ignore[attr-defined]
    _tasks.TABLE.clear()


def fast_path_call(message: bytes) -> tuple[object, ...] | None:
    """What the mule loop's fast path would run for ``message`` (in a buffer with older bytes
    after it): (function, args), or None for the slow path."""
    buffer = bytearray(message + b"\xff" * 64)
    view = memoryview(buffer)
    lookup = bytes(buffer[:_protocol.LOOKUP_SIZE])
    entry = _tasks.TABLE.get(lookup) or _dispatch._entry(lookup, view, None)
    if entry is None or len(message) < entry[3]:
        return None
    return entry[0], tuple(entry[1](entry[2])) if len(message) > entry[3] else ()


def test_the_fast_path_runs_the_task_its_head_names_with_the_arguments_sent(registry: None) -> None:
    def first(*args: object) -> None: ...
    def second(*args: object) -> None: ...

    _tasks.register("tasks:first", first)
    _tasks.register("tasks:second_with_a_longer_key", second)
    assert fast_path_call(signed("tasks:first", 1, "a")) == (first, (1, "a"))
    assert fast_path_call(signed("tasks:second_with_a_longer_key", [2])) == (second, ([2],))
    assert fast_path_call(signed("tasks:first")) == (first, ())
    assert fast_path_call(_protocol.encoder("tasks:first")((1,), {"k": 2})) is None  # keywords: the slow path
    assert fast_path_call(signed("tasks:first", 1)[:_protocol.LOOKUP_SIZE + 2]) is None  # cut short: not the fast path
    assert fast_path_call(signed("tasks:first", *range(300))) is None  # a long tuple: by key


def test_a_task_registered_again_replaces_the_fast_paths_entry(registry: None) -> None:
    def old() -> None: ...
    def new() -> None: ...

    _tasks.register("tasks:job", old)
    assert fast_path_call(signed("tasks:job", 1)) == (old, (1,))
    _tasks.register("tasks:job", new)
    assert fast_path_call(signed("tasks:job", 1)) == (new, (1,))


def test_tasks_whose_tags_collide_run_by_key(registry: None, monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[str] = []
    monkeypatch.setattr(_protocol, "tag", lambda key: b"samehash")  # a 64-bit collision, made for the test
    _tasks.register("tasks:one", lambda: ran.append("one"))
    assert fast_path_call(signed("tasks:one")) is not None
    _tasks.register("tasks:two", lambda: ran.append("two"))
    _tasks.register("tasks:one", lambda: ran.append("one"))  # registered again: still shared
    for key in ("tasks:one", "tasks:two"):
        message = signed(key)
        assert fast_path_call(message) is None
        assert _tasks.receive(message) is None  # the slow path: by the key
    assert ran == ["one", "two"]


def test_dead_letters_never_take_the_room_of_queued_calls(tmp_path: Path) -> None:
    spool = _spool.Spool(str(tmp_path / "spool"), limit=1000)
    spool.create()
    spool.write("dead", b"x" * 5000, _spool.UNTRUSTED + "not sent by this uWSGI instance")  # past the whole limit
    keep = _dispatch._Keeper(spool)
    assert keep(signed("tasks:a", "x" * 40), 1) == 1
    assert (len(keep.kept), keep.lost) == (1, {})


class _Stopped(Exception):
    pass


def test_the_record_never_pairs_a_call_s_bytes_with_the_size_of_the_one_before(
        registry: None, monkeypatch: pytest.MonkeyPatch) -> None:
    import mmap

    from uwsgiconf_mules.runtime import instance as _instance

    messages = [signed("tasks:long", "x" * 200), signed("tasks:short", 1)]
    seen: list[tuple[str, int]] = []
    buffer = mmap.mmap(-1, 4096)
    record = [0]

    def read(into: mmap.mmap) -> int:
        if not messages:
            raise _Stopped
        seen.append(("read", record[0]))  # what a kill during the read leaves
        message = messages.pop(0)
        into[:len(message)] = message
        return len(message)

    class Queues:
        def __init__(self) -> None:
            self.buffer, self.view, self.record, self.current = buffer, memoryview(buffer), record, read

    def task(*args: object) -> None:
        seen.append(("run", record[0]))

    _tasks.register("tasks:long", task)
    _tasks.register("tasks:short", task)
    _tasks.TABLE.clear()

    class Uwsgi:
        @staticmethod
        def mule_id() -> int:
            return 1

    monkeypatch.setattr(_instance, "uwsgi", Uwsgi)
    monkeypatch.setattr(_dispatch, "_prepare", lambda uwsgi, mule_id: (None, None, Queues()))
    monkeypatch.setattr(_tasks, "COUNTING", None)
    saved = list(_tasks.LOOP_CALL)
    try:
        with pytest.raises(_Stopped):
            _dispatch.mule_loop()
    finally:
        _tasks.LOOP_CALL[:] = saved
    sizes = [len(signed("tasks:long", "x" * 200)), len(signed("tasks:short", 1))]
    assert seen == [("read", 0), ("run", sizes[0]), ("read", 0), ("run", sizes[1])]


def test_the_dispatch_script_freezes_what_the_master_made_before_anything_else() -> None:
    import subprocess
    import sys

    # Python 3.12 starts with objects frozen already (375 on 3.12.1): counted from what the import left.
    code = ("import gc, runpy\nfrom uwsgiconf_mules import dispatch_mule\nbefore = gc.get_freeze_count()\n"
            "made = [[] for _ in range(1000)]\n"
            "try:\n    runpy.run_path(dispatch_mule.__file__, run_name='__main__')\n"
            "except Exception as exc:\n    print(type(exc).__name__, gc.get_freeze_count() >= before + 1000)\n")
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert found.stdout.strip() == "NotInMuleError True"


def test_a_batch_runs_its_calls_in_order_and_refuses_one_without_the_token(registry: None,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from uwsgiconf_mules.mule import batch as _batch

    ran: list[object] = []

    def job(*args: object, **kwargs: object) -> None:
        ran.append(args)
        if args == (4,):
            raise ValueError("call 4 fails")

    _tasks.register("tasks:job", job)
    refused: list[str] = []
    monkeypatch.setattr(_tasks, "refuse", lambda message, reason: refused.append(reason))
    monkeypatch.setattr(_tasks, "failed", lambda key, args, kwargs, began=None: ran.append(("failed", args)))
    forged = _protocol.HEADER + bytes(16) + signed("tasks:job", 3)[len(_protocol.PREFIX):]  # another token
    calls = [signed("tasks:job", 1), signed("tasks:job", 2), forged, signed("tasks:job", 4),
             _protocol.encoder("tasks:job")((5,), {"k": 1}), signed("tasks:job", 6)]
    view = memoryview(bytearray(_protocol.batch(calls) + b"\xff" * 16))
    size = len(_protocol.batch(calls))
    assert _batch.run(view, size, harakiri=0, counted=False, stopping=lambda: False) is None
    assert ran == [(1,), (2,), (4,), ("failed", (4,)), (5,), (6,)]  # keywords took tasks.run, in their turn
    assert refused == ["a call of a batch without this instance's token"]
    ran.clear()
    _tasks.HEADS.clear()  # what the stop handler does: the rest of the batch is returned, not run
    rest = _batch.run(view, size, harakiri=0, counted=False, stopping=lambda: True)
    assert ran == [] and rest is not None and _protocol.split(rest) == calls


def test_the_stop_handler_ends_a_wait_on_the_queues(monkeypatch: pytest.MonkeyPatch) -> None:
    import signal

    interrupted: list[bool] = []

    class Waiting:
        def interrupt(self) -> None:
            interrupted.append(True)

    monkeypatch.setattr(_dispatch, "_queues", Waiting())
    monkeypatch.setattr(_dispatch, "_stopping", False)
    monkeypatch.setattr(_tasks, "HEADS", {})
    monkeypatch.setattr(_tasks, "TABLE", {})
    _dispatch._stop(signal.SIGHUP, None)
    assert _dispatch._stopping and interrupted == [True]  # else the poll, resumed by Python, waits its second out


def test_a_batch_of_one_tasks_calls_runs_them_in_order_reports_each_failure_and_returns_the_rest_on_a_stop(
        registry: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from uwsgiconf_mules.mule import batch as _batch

    ran: list[object] = []

    def job(n: int) -> object:
        ran.append(n)
        if n == 2:
            raise ValueError("call 2 fails")
        if n == 4:
            _tasks.HEADS.clear()  # what the stop handler does, while call 4 runs
        return "said" if n == 3 else None

    _tasks.register("tasks:job", job)
    monkeypatch.setattr(_tasks, "failed", lambda key, args, kwargs, began=None: ran.append(("failed", key, args)))
    monkeypatch.setattr(_tasks, "returned", lambda key, result: ran.append(("returned", key, result)))
    streaks: list[int] = []
    streak = _batch._streak
    monkeypatch.setattr(_batch, "_streak", lambda calls, *args: streaks.append(len(calls)) or streak(calls, *args))
    calls = [signed("tasks:job", n) for n in range(1, 7)]
    packed = _protocol.batch(calls)
    view = memoryview(bytearray(packed + b"\xff" * 16))
    rest = _batch.run(view, len(packed), harakiri=0, counted=False, stopping=lambda: not _tasks.HEADS)
    assert streaks == [6]  # one task's calls, each with arguments and the token: the batch's own loop
    assert ran == [1, 2, ("failed", b"tasks:job", (2,)), 3, ("returned", b"tasks:job", "said"), 4]
    assert rest is not None and _protocol.split(rest) == calls[4:]  # kept by the loop, in order
    assert _tasks.LOOP_CALL[0] is None


def test_a_cut_call_in_a_batch_of_one_task_is_refused_not_run(registry: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from uwsgiconf_mules.mule import batch as _batch

    ran: list[object] = []
    _tasks.register("tasks:job", ran.append)
    refused: list[str] = []
    monkeypatch.setattr(_tasks, "refuse", lambda message, reason: refused.append(reason))
    monkeypatch.setattr(_tasks, "failed", lambda key, args, kwargs, began=None: ran.append(("failed", args)))
    calls = [signed("tasks:job", 1), signed("tasks:job", 2)[:_protocol.LOOKUP_SIZE + 1], signed("tasks:job", 3)]
    packed = _protocol.batch(calls)
    view = memoryview(bytearray(packed + b"\xff" * 64))
    assert _batch.run(view, len(packed), harakiri=0, counted=False, stopping=lambda: False) is None
    assert ran == [1, 3] and len(refused) == 1, (ran, refused)  # shorter than any call of the task: its own path
