"""The schedules of a dispatch mule (mule.schedules) with a fake clock: each tick made a delayed
call once, whatever the number of mules firing it; overlap, late and missed ticks."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from uwsgiconf_mules.declarations import Declarations, FarmSpec
from uwsgiconf_mules.declarations.schedules import ScheduleSpec, schedule_spec
from uwsgiconf_mules.mule import schedules as _schedules
from uwsgiconf_mules.protocol import spool as _spool
from uwsgiconf_mules.protocol.spool import delayed as _delayed

S = 1_000_000_000
T0 = 1_800_000_000 * S  # a whole second (a tick of every=1, 2, 4, 5, 10)


def make(tmp_path: Path) -> _spool.Spool:
    spool = _spool.Spool(str(tmp_path / "spool"))
    spool.create()
    return spool


def every(seconds: float = 1, **kwargs: object) -> ScheduleSpec:
    return schedule_spec("app:job", every=seconds, farm="f", **kwargs)  # type: ignore[arg-type]


def scheduler(spool: _spool.Spool, *specs: ScheduleSpec, now: int = T0) -> _schedules.Scheduler:
    declarations = Declarations((None, None), farms=(FarmSpec("f", (1, 2)),), schedules=specs)
    made = _schedules.Scheduler(spool, 1, list(specs), declarations)
    for spec in specs:  # as if first started at `now`
        with _schedules.locked(_schedules.state_path(spool, spec)) as state:
            state["tick"] = now
    return made


def calls(spool: _spool.Spool) -> list[int]:
    return [_delayed.due_of(name) for name in _delayed.pending(spool, "farm:f")]


def finish(spool: _spool.Spool) -> None:
    """The mules ran every pending call."""
    for name in _delayed.pending(spool, "farm:f"):
        os.unlink(os.path.join(spool.part("delayed/farm-f"), name))


def test_a_tick_is_made_one_delayed_call_once_by_the_first_of_the_mules_that_fire_it(tmp_path: Path) -> None:
    spool = make(tmp_path)
    spec = every(overlap=True)
    one, two = scheduler(spool, spec), _schedules.Scheduler(spool, 2, [spec])
    assert one.fire(spec, T0 + S + 1000) == T0 + 2 * S
    assert two.fire(spec, T0 + S + 2000) == T0 + 2 * S  # found done
    assert calls(spool) == [T0 + S]
    (name,) = _delayed.pending(spool, "farm:f")
    assert name == f"{T0 + S:020d}-0-{spec.file_id}.call" and _delayed.valid_name(name)
    note, payload = _spool.read(os.path.join(spool.part("delayed/farm-f"), name))
    assert note == "farm:f attempt=1" and b"app:job" in payload


def test_mules_racing_for_a_tick_make_it_once(tmp_path: Path) -> None:
    spool = make(tmp_path)
    spec = every(overlap=True)
    scheduler(spool, spec)
    mules = [_schedules.Scheduler(spool, i, [spec]) for i in range(1, 9)]
    barrier = threading.Barrier(len(mules))

    def fire(mule: _schedules.Scheduler) -> None:
        barrier.wait()
        for step in range(1, 11):
            mule.fire(spec, T0 + step * S + 500)

    threads = [threading.Thread(target=fire, args=(mule,)) for mule in mules]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert calls(spool) == [T0 + step * S for step in range(1, 11)]  # each tick once, none lost


def test_a_tick_while_the_previous_run_has_not_finished_is_skipped_and_counted(tmp_path: Path) -> None:
    spool = make(tmp_path)
    spec = every()
    mule = scheduler(spool, spec)
    mule.fire(spec, T0 + S + 1000)
    mule.fire(spec, T0 + 2 * S + 1000)  # the first has not run
    mule.fire(spec, T0 + 3 * S + 1000)
    state = _schedules.read_state(_schedules.state_path(spool, spec))
    assert calls(spool) == [T0 + S] and state["skipped"] == 2
    finish(spool)
    mule.fire(spec, T0 + 4 * S + 1000)
    assert calls(spool) == [T0 + 4 * S]
    claimed = os.path.join(spool.part("claimed"), f"{os.getpid()}-run-farm-f-{T0 + 4 * S:020d}-0-{spec.file_id}.call")
    os.rename(os.path.join(spool.part("delayed/farm-f"), _delayed.pending(spool, "farm:f")[0]), claimed)
    mule.fire(spec, T0 + 5 * S + 1000)  # running in a live mule (this process): skipped too
    assert _schedules.read_state(_schedules.state_path(spool, spec))["skipped"] == 3


def test_late_ticks_within_grace_each_run_once_in_turn(tmp_path: Path) -> None:
    spool = make(tmp_path)
    spec = every()
    mule = scheduler(spool, spec)
    after = mule.fire(spec, T0 + 3 * S + 1000)  # a reload: three ticks late
    assert calls(spool) == [T0 + S] and after < T0 + 4 * S  # the next one soon, not at the next tick
    mule.fire(spec, T0 + 3 * S + 2000)
    assert calls(spool) == [T0 + S]  # its turn comes when the previous run has finished: not skipped
    for tick in (2, 3):
        finish(spool)
        mule.fire(spec, T0 + 3 * S + 3000)
        assert calls(spool) == [T0 + tick * S]
    state = _schedules.read_state(_schedules.state_path(spool, spec))
    assert state.get("skipped", 0) == 0 and state.get("missed", 0) == 0


@pytest.mark.parametrize(("missed", "made"), [("skip", [T0 + 98 * S, T0 + 99 * S, T0 + 100 * S]),
                                              ("once", [T0 + 97 * S, T0 + 98 * S, T0 + 99 * S, T0 + 100 * S])])
def test_ticks_later_than_grace_follow_the_missed_policy(tmp_path: Path, missed: str, made: list[int]) -> None:
    spool = make(tmp_path)
    spec = every(overlap=True, grace=2.5, missed=missed)
    mule = scheduler(spool, spec)
    mule.fire(spec, T0 + 100 * S + 1000)  # down for 100 s: 97 ticks missed, 98..100 within grace
    state = _schedules.read_state(_schedules.state_path(spool, spec))
    assert state["missed"] == 97
    assert calls(spool) == made  # once: one run (at the last missed tick) for all of them
    mule.fire(spec, T0 + 100 * S + 2000)
    assert calls(spool) == made  # nothing twice


def test_a_routed_farm_s_tick_is_enqueued_under_a_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = make(tmp_path)
    spec = schedule_spec("app:job", every=1, farm="r")
    from uwsgiconf_mules.declarations.backends import parse_backend

    declarations = Declarations((None,), backends=(parse_backend("r", "rq://127.0.0.1:6399/0"),), schedules=(spec,))
    taken: set[str] = set()
    sent = []

    def enqueue(backend: object, key: str, *, ttl: int, func: str, overlap: bool, **_: object) -> str:
        if key in taken:
            return "elsewhere"
        taken.add(key)
        sent.append((key, ttl, func, overlap))
        return "skipped" if key.endswith(str(T0 + 2 * S)) else "enqueued"  # the job of T0 + S still runs

    import uwsgiconf_mules.contrib.rq.schedules as engine

    monkeypatch.setattr(engine, "enqueue_tick", enqueue)
    instances = [_schedules.Scheduler(make(tmp_path / str(i)), 1, [spec], declarations) for i in range(2)]
    for mule in instances:  # each instance first started at T0, with a spool of its own
        with _schedules.locked(_schedules.state_path(mule.spool, spec)) as state:
            state["tick"] = T0
    for mule in instances:
        mule.fire(spec, T0 + S // 2)
    for mule in instances:
        mule.fire(spec, T0 + S + 1000)
    assert sent == [(f"uwsgiconf_mules:schedule:{spec.file_id}:{T0 + S}", 3600, "app:job", False)]
    for mule in instances:
        mule.fire(spec, T0 + 2 * S + 1000)
    states = [_schedules.read_state(_schedules.state_path(mule.spool, spec)) for mule in instances]
    assert [(state.get("runs", 0), state.get("skipped", 0), state.get("elsewhere", 0)) for state in states] == \
        [(1, 1, 0), (0, 0, 2)]  # the instance that took the tick counts its skip
    assert len(sent) == 2 and not sent[1][3]
    del spool


def test_mine_is_the_targets_of_this_mule_where_the_host_flag_says_so() -> None:
    specs = (schedule_spec("app:a", every=1, farm="f"), schedule_spec("app:b", every=1, mule=2),
             schedule_spec("app:c", every=1, farm="f", host_env="HOST_FLAG"))
    declarations = Declarations((None, None), farms=(FarmSpec("f", (1,)),), schedules=specs)
    assert [spec.name for spec in _schedules.mine(1, declarations, {})] == ["app:a"]
    assert [spec.name for spec in _schedules.mine(1, declarations, {"HOST_FLAG": "1"})] == ["app:a", "app:c"]
    assert [spec.name for spec in _schedules.mine(2, declarations, {})] == ["app:b"]


def _loaded(code: str) -> list[str]:
    import subprocess
    import sys

    script = f"import sys\n{code}\nprint(sorted(m for m in sys.modules if 'sched' in m or 'cron' in m))"
    return eval(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,  # type: ignore[no-any-return]
                               check=True).stdout)


def test_workers_and_mules_of_an_instance_without_schedules_load_none_of_it_and_cron_is_lazy() -> None:
    plain = "v2;mules=1;send-timeout=5;spool=/tmp/x"
    every_record = plain + ";schedule=s|app:job|mule:1|every 5||0|skip|60||"
    cron_record = plain + ";schedule=s|app:job|mule:1|cron 0 3 * * *|UTC|0|skip|60||"
    runtime = ("import uwsgiconf_mules.runtime, uwsgiconf_mules.dispatch_mule\n"
               "from uwsgiconf_mules.declarations import parse_record\n")
    assert _loaded(runtime + f"parse_record({plain!r})") == []
    assert _loaded(runtime + f"parse_record({every_record!r})") == ["uwsgiconf_mules.declarations.schedules"]
    assert "cronsim" not in _loaded(runtime + f"parse_record({cron_record!r})")
    assert "cronsim" in _loaded(runtime + "from uwsgiconf_mules.declarations.schedules import next_ticks\n"
                                f"next_ticks(parse_record({cron_record!r}).schedules[0], 0)")


def test_the_outcome_of_a_tick_s_call_is_noted_in_its_state(tmp_path: Path) -> None:
    from uwsgiconf_mules.runtime import failures, tasks

    spool = make(tmp_path)
    spec = every()
    mule = scheduler(spool, spec)
    claimed = f"/x/123-run-farm-f-{_schedules.tick_name(spec, T0 + S)}"
    before = mule.failures()
    mule.ran(claimed, before, 1.0)  # app:job is no registered task: refused
    tasks.REGISTRY[b"app:job"] = lambda: None
    try:
        mule.ran(claimed, before, 2.0)
        failures.REPORTED[0] += 1  # a failure reported during the call
        mule.ran(claimed, before, 3.0)
    finally:
        del tasks.REGISTRY[b"app:job"]
    state = _schedules.read_state(_schedules.state_path(spool, spec))
    assert (state["runs"], state["failed"], state["outcome"], state["last_start"]) == (3, 2, "failed", 3.0)
    mule.ran("/x/123-run-farm-f-00000000000000000001-77-00000001.call", before, 4.0)  # not a schedule's call
    assert _schedules.read_state(_schedules.state_path(spool, spec))["runs"] == 3


class _Killed(BaseException):
    """What a SIGKILL does to the code that was running: nothing after it runs."""


def test_a_mule_killed_between_a_tick_s_call_and_its_state_runs_the_tick_once(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    spool = make(tmp_path)
    spec = every(overlap=True)
    mule = scheduler(spool, spec)
    write = _delayed.write

    def killed_after_write(*args: object, **kwargs: object) -> str:
        write(*args, **kwargs)  # type: ignore[arg-type]
        raise _Killed  # the call is kept, the state not written back

    monkeypatch.setattr(_delayed, "write", killed_after_write)
    with pytest.raises(_Killed):
        mule.fire(spec, T0 + S + 1000)
    monkeypatch.setattr(_delayed, "write", write)
    assert calls(spool) == [T0 + S]
    # A farm mate's timer claims the tick's call, runs it, forgets it and notes its outcome.
    name = _delayed.pending(spool, "farm:f")[0]
    claimed = os.path.join(spool.part("claimed"), f"{os.getpid()}-run-farm-f-{name}")
    os.rename(os.path.join(spool.part("delayed/farm-f"), name), claimed)
    os.unlink(claimed)
    mate = _schedules.Scheduler(spool, 2, [spec])
    mate.ran(claimed, mate.failures(), 1.0)
    _schedules.Scheduler(spool, 1, [spec]).fire(spec, T0 + S + 5000)  # the killed mule, respawned
    assert calls(spool) == []  # the tick ran once: not made again
    assert _schedules.read_state(_schedules.state_path(spool, spec))["runs"] == 1


def test_a_tick_s_call_is_noted_as_run_before_its_claimed_file_goes(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from uwsgiconf_mules.mule import timer as _timer
    from uwsgiconf_mules.protocol import envelope as _protocol
    from uwsgiconf_mules.runtime import tasks

    spool = make(tmp_path)
    spec = every(overlap=True)
    mule = scheduler(spool, spec)
    mule.fire(spec, T0 + S + 1000)
    name = _delayed.pending(spool, "farm:f")[0]
    claimed = _delayed.claim(spool, "farm:f", name)
    assert claimed is not None
    seen: list[list[str]] = []
    noted = mule.ran

    def ran(path: str, failures: int, began: float) -> None:
        seen.append(os.listdir(spool.part("claimed")))  # a killed mule leaves its claim: made again, never
        noted(path, failures, began)

    monkeypatch.setattr(mule, "ran", ran)
    monkeypatch.setattr(_timer, "SCHEDULER", [mule])
    monkeypatch.setattr(tasks, "run", lambda message, harakiri=0: None)
    monkeypatch.setattr(_protocol, "restored", lambda payload: payload)
    _timer.run_claimed(spool, claimed, 0)
    assert len(seen) == 1 and len(seen[0]) == 1 and os.listdir(spool.part("claimed")) == []


def test_a_clock_set_back_does_not_stop_a_schedule_until_it_catches_up(tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    spool = make(tmp_path)
    spec = every(overlap=True)
    mule = scheduler(spool, spec, now=T0 + 86400 * S)  # its last tick done while the clock was a day ahead
    following = mule.fire(spec, T0 + 5 * S + 1000)  # NTP set the clock back
    assert following == T0 + 6 * S  # the next tick of the clock now, not of a day later
    mule.fire(spec, T0 + 6 * S + 1000)
    assert calls(spool) == [T0 + 6 * S]
    assert "is ahead of the clock, which was set back" in caplog.text


def test_a_mule_sees_the_clock_set_back_at_start_and_while_it_runs(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    spool = make(tmp_path)
    spec = every()
    mule = scheduler(spool, spec, now=time.time_ns() + 86400 * S)  # done while the clock was a day ahead
    assert _schedules.Scheduler(spool, 2, [spec]).next[spec.name] == 0  # started after: fired at once
    assert not mule.clock_set_back()
    real = time.time_ns
    monkeypatch.setattr(time, "time_ns", lambda: real() - 3600 * S)  # set back an hour
    assert mule.clock_set_back() and not mule.clock_set_back()


def test_a_mule_killed_between_writing_a_shorter_state_and_cutting_it_leaves_a_state_that_reads(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = make(tmp_path)
    path = _schedules.state_path(spool, every())
    with _schedules.locked(path) as state:
        state.update(tick=T0, name="x" * 200, runs=7)  # a longer state before
    with monkeypatch.context() as patched:
        def killed(*args: object) -> None:
            raise _Killed

        patched.setattr(os, "ftruncate", killed)
        with pytest.raises(_Killed), _schedules.locked(path) as state:
            state.update(tick=T0 + S, name="x", runs=8)
    assert _schedules.read_state(path) == {"tick": T0 + S, "name": "x", "runs": 8}  # not lost, nor reset


def test_a_tick_while_a_retry_of_the_previous_one_is_pending_or_running_is_skipped(tmp_path: Path) -> None:
    from uwsgiconf_mules.runtime import deferred, policy, tasks

    spool = make(tmp_path)
    spec = every()
    mule = scheduler(spool, spec)
    mule.fire(spec, T0 + S + 1000)
    (name,) = _delayed.pending(spool, "farm:f")
    claimed = _delayed.claim(spool, "farm:f", name)
    assert claimed is not None
    running = _delayed.start(claimed)
    mule.before(claimed)  # the timer runs attempt 1, which asks for a retry
    assert deferred.NAMING[0] is not None and deferred.NAMING[0]("farm:f", T0 + 5 * S, 1) is None  # f.later(): its own
    retry = deferred.NAMING[0]("farm:f", T0 + 5 * S + 7, 2)
    assert retry == _schedules.tick_name(spec, T0 + 5 * S + 7)
    _delayed.write(spool, "farm:f", b"payload", T0 + 5 * S + 7, 2, file_name=retry)
    os.unlink(running)
    tasks.REGISTRY[b"app:job"] = lambda: None
    try:
        mule.ran(claimed, mule.failures(), 1.0)
        assert deferred.NAMING[0] is None
        state = _schedules.read_state(_schedules.state_path(spool, spec))
        assert (state["runs"], state["outcome"], state.get("failed", 0)) == (1, "retrying", 0)
        mule.fire(spec, T0 + 2 * S + 1000)  # the retry is pending: the tick's run has not finished
        assert _schedules.read_state(_schedules.state_path(spool, spec))["skipped"] == 1
        claimed = _delayed.claim(spool, "farm:f", retry)
        assert claimed is not None
        running = _delayed.start(claimed)
        policy.ATTEMPT[0] = 2
        mule.before(claimed)  # the retry runs (attempt 2): still the tick's run
        policy.ATTEMPT[0] = 0
        mule.fire(spec, T0 + 3 * S + 1000)
        assert _schedules.read_state(_schedules.state_path(spool, spec))["skipped"] == 2
        os.unlink(running)
        mule.ran(claimed, mule.failures(), 2.0)
    finally:
        del tasks.REGISTRY[b"app:job"]
        policy.ATTEMPT[0] = 0
    state = _schedules.read_state(_schedules.state_path(spool, spec))
    assert (state["runs"], state["outcome"], state["attempt"], state["last_start"]) == (1, "succeeded", 2, 1.0)
    assert "retry" not in state
    mule.fire(spec, T0 + 4 * S + 1000)  # the retry ended: the next tick runs
    assert calls(spool) == [T0 + 4 * S]


def test_a_retry_of_a_tick_is_not_noted_as_a_tick_that_ran(tmp_path: Path) -> None:
    spool = make(tmp_path)
    spec = every(overlap=True)
    mule = scheduler(spool, spec)
    mule.fire(spec, T0 + S + 1000)
    finish(spool)
    mule.ran(f"/x/1-run-farm-f-{_schedules.tick_name(spec, T0 + S)}", mule.failures(), 1.0)  # the tick, attempt 1
    mule.current = [spec, 2, None]  # its retry, due 5 s later, named as the schedule's calls
    mule.ran(f"/x/1-run-farm-f-{_schedules.tick_name(spec, T0 + 6 * S + 7)}", mule.failures(), 2.0)
    assert _schedules.read_state(_schedules.state_path(spool, spec))["ran"] == T0 + S
    mule.fire(spec, T0 + 2 * S + 1000)
    assert calls(spool) == [T0 + 2 * S]  # the next tick is made: the retry's time is no tick that ran


def test_a_clock_set_back_past_a_tick_that_ran_does_not_stop_the_schedule(tmp_path: Path) -> None:
    spool = make(tmp_path)
    spec = every(overlap=True)
    ahead = T0 + 86400 * S
    mule = scheduler(spool, spec, now=ahead)  # its ticks made and run while the clock was a day ahead
    mule.ran(f"/x/1-run-farm-f-{_schedules.tick_name(spec, ahead)}", mule.failures(), 1.0)
    mule.fire(spec, T0 + 5 * S + 1000)  # NTP set the clock back
    mule.fire(spec, T0 + 6 * S + 1000)
    assert calls(spool) == [T0 + 6 * S]  # not held back for a day by the tick noted as run
    finish(spool)
    mule.ran(f"/x/1-run-farm-f-{_schedules.tick_name(spec, T0 + 6 * S)}", mule.failures(), 2.0)
    mule.fire(spec, T0 + 6 * S + 2000)
    assert calls(spool) == []  # and a tick that ran since is still made once


class _Clock:
    """A fake ``time`` for mule.schedules: the test says what time it is."""

    def __init__(self, now: int) -> None:
        self.now = now

    def time_ns(self) -> int:
        return self.now

    def time(self) -> float:
        return self.now / 1e9

    def monotonic_ns(self) -> int:
        return self.now - T0

    strftime, gmtime = staticmethod(__import__("time").strftime), staticmethod(__import__("time").gmtime)


@pytest.mark.parametrize(("latency", "overlapping"), [(0.02, False), (0.4, False), (0.8, False), (0.4, True)],
                         ids=["quiet", "loaded", "very-loaded", "generations-overlap"])
def test_a_sighup_every_2_s_with_two_mules_neither_drops_nor_doubles_a_tick(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, latency: float, overlapping: bool) -> None:
    """The integration test's scenario with a fake clock: an every-1-s schedule, 2 mules, a reload
    every 2 s (the mules gone for 0.7 s, or the old ones still firing 0.3 s after the new ones
    start), each due call claimed ``latency`` s after its time, run for 20 ms and noted (``ran``)."""
    clock = _Clock(T0 + S // 2)
    monkeypatch.setattr(_schedules, "time", clock)
    spool = make(tmp_path)
    spec = every()
    made: list[int] = []
    write = _delayed.write

    def noted(spool_: _spool.Spool, target: str, payload: bytes, due_ns: int, *args: object, **kwargs: object) -> str:
        made.append(due_ns)
        return write(spool_, target, payload, due_ns, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(_delayed, "write", noted)
    step, ran, running = S // 20, [], []  # running: [claimed path, its end]
    generations: list[tuple[int, int, list[_schedules.Scheduler]]] = []  # (start, stop, mules)
    start = clock.now
    for reload in range(6):
        stop = T0 + (2 * reload + 2) * S + S * 3 // 10 if reload < 5 else T0 + 14 * S
        generations.append((start, stop, []))
        start = stop - S * 3 // 10 if overlapping else stop + S * 7 // 10
    while clock.now < T0 + 14 * S:
        clock.now += step
        alive = [mules for begin, end, mules in generations if begin <= clock.now < end]
        for begin, end, mules in generations:
            if begin <= clock.now < end and not mules:
                mules.extend(_schedules.Scheduler(spool, i, [spec]) for i in (1, 2))
        for mules in alive:
            for mule in mules:
                if mule.next[spec.name] <= clock.now:
                    mule.next[spec.name] = mule.fire(spec, clock.now)
        for claimed, end in list(running):
            if end <= clock.now:
                running.remove([claimed, end])
                generations[0][2][0].ran(claimed, 0, clock.time())  # a run that began ends, reload or not
                os.unlink(_delayed.start(claimed))
                ran.append(_delayed.due_of(os.path.basename(claimed)))
        for name in _delayed.pending(spool, "farm:f"):
            if alive and _delayed.due_of(name) + int(latency * S) <= clock.now:
                claimed = _delayed.claim(spool, "farm:f", name)
                assert claimed is not None
                running.append([claimed, clock.now + S // 50])
    state = _schedules.read_state(_schedules.state_path(spool, spec))
    assert made == list(range(T0 + S, made[-1] + 1, S)) and made[-1] >= T0 + 13 * S, (made, state)  # once each
    assert ran == made[:len(ran)] and len(ran) >= len(made) - 2, (ran, made)
    assert state.get("skipped", 0) == 0 and state.get("missed", 0) == 0, state


def test_ticks_that_came_before_a_mule_s_first_look_wait_for_a_pending_run_rather_than_skipped(tmp_path: Path) -> None:
    spool = make(tmp_path)
    spec = every()
    scheduler(spool, spec).fire(spec, T0 + S + 1000)  # the old generation makes a tick, then reloads
    assert calls(spool) == [T0 + S]  # its call not run yet: the new mules' timers have not claimed it
    mule = _schedules.Scheduler(spool, 1, [spec])  # the new generation, up 1.5 s later
    mule.fire(spec, T0 + 2 * S + S // 2)
    state = _schedules.read_state(_schedules.state_path(spool, spec))
    assert calls(spool) == [T0 + S] and state.get("skipped", 0) == 0  # came while no mule ran: waits its turn
    finish(spool)
    mule.fire(spec, T0 + 2 * S + S // 2 + 1000)
    assert calls(spool) == [T0 + 2 * S]
    mule.fire(spec, T0 + 3 * S + 1000)  # came while the run of the tick before had not finished: skipped
    assert _schedules.read_state(_schedules.state_path(spool, spec))["skipped"] == 1
