"""Retries, delayed calls and failed calls on a real uWSGI (see runtime.policy, mule.timer)."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from support.harness import BIN, Server, compile_config, declaration, launch

APP = '''
import time

from uwsgiconf_mules.errors import Retry
from uwsgiconf_mules.runtime import current_attempt


@mule_offload(retries=2, retry_for=ValueError, retry_backoff=1.0, retry_jitter=False)
def flaky(tag):
    record("flaky", tag=tag, attempt=current_attempt(), at=time.time())
    if current_attempt() < 3:
        raise ValueError(f"attempt {current_attempt()} fails")


@mule_offload(retries=1, retry_backoff=0.2, retry_jitter=False)
def asks(tag):
    record("asks", tag=tag, attempt=current_attempt(), at=time.time())
    if current_attempt() == 1:
        raise Retry(delay=0.5)


@mule_offload(retries=1, retry_for=KeyError, retry_backoff=0.1)
def always_fails(tag):
    record("always", tag=tag, attempt=current_attempt())
    raise KeyError(tag)


@mule_offload(retries=1, retry_for=ValueError, retry_backoff=4.0, retry_jitter=False)
def slow_retry(tag):
    record("slow_retry", tag=tag, attempt=current_attempt(), at=time.time())
    if current_attempt() == 1:
        raise ValueError("once")


@route("/slow_retry")
def send_slow_retry(query):
    return slow_retry(query)


def hooked(key, args, kwargs, exc, mule_id):
    """The on_failure hook of a test: the attempt that failed."""
    record("hooked", key=key, attempt=current_attempt(), exc=type(exc).__name__, mule_id=mule_id)


@mule_offload()
def plain_fails(tag):
    raise RuntimeError(f"plain {tag}")


@mule_offload()
def stamp(tag, due):
    record("stamp", tag=tag, due=due, at=time.time())


@mule_offload("timed")
def farm_stamp(tag, due):
    record("stamp", tag=tag, due=due, at=time.time())


@route("/flaky")
def send_flaky(query):
    return flaky(query)


@route("/asks")
def send_asks(query):
    return asks(query)


@route("/always")
def send_always(query):
    return always_fails(query)


@route("/plain")
def send_plain(query):
    return plain_fails(query)


@route("/later")
def later(query):
    tag, seconds = query.split(",")
    due = time.time() + float(seconds)
    return stamp.later(float(seconds))(tag, due)


@route("/later_or_error")
def later_or_error(query):
    tag, seconds = query.split(",")
    try:
        return stamp.later(float(seconds))(tag, time.time() + float(seconds))
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


@route("/spread")
def spread(query):
    count, span = (float(x) for x in query.split(","))
    for i in range(int(count)):
        seconds = 3.0 + span * i / count
        farm_stamp.later(seconds)(f"s{i}", time.time() + seconds)  # the delay counts from the send
    return int(count)
'''


def start(tmp_path: Path, mules: int = 1, more: str = "") -> tuple[Server, Path]:
    spool = tmp_path / "spool"
    farm = f"section.workers.mule_farm('timed', {list(range(1, mules + 1))})"
    (tmp_path / "uwsgicfg.py").write_text(declaration(f"mules={mules}, farms=[{farm}], spool_dir={str(spool)!r}, "
                                                      f"reload_mercy=20{more}"))
    from support.harness import APP_PRELUDE

    (tmp_path / "app.py").write_text(APP_PRELUDE + APP)
    path, compiled = compile_config(tmp_path)
    assert compiled.returncode == 0, compiled.stderr
    return launch(path, tmp_path, expect_mules=mules), path


def relaunch(tmp_path: Path, path: Path, server: Server) -> Server:
    return launch(path, tmp_path, expect_mules=1)


def test_a_task_that_fails_twice_runs_three_times_with_the_declared_spacing(tmp_path: Path) -> None:
    server, _ = start(tmp_path)
    try:
        assert server.get("/flaky?a") == (200, True)
        runs = server.wait_lines("flaky", 3, timeout=30)
        time.sleep(0.5)
        runs = server.lines("flaky")
        assert [run["attempt"] for run in runs] == [1, 2, 3]
        gaps = [runs[1]["at"] - runs[0]["at"], runs[2]["at"] - runs[1]["at"]]
        assert 0.8 <= gaps[0] <= 1.2, gaps  # retry_backoff 1 s, then doubled
        assert 1.6 <= gaps[1] <= 2.4, gaps
        log = server.log()
        assert "task app:flaky failed in mule 1 (attempt 1 of 3: ValueError: attempt 1 fails); retrying in 1.000 s" \
            in log
        assert "retrying in 2.000 s" in log
        assert "task app:flaky failed" not in log.replace("task app:flaky failed in mule 1 (attempt", "")
    finally:
        server.stop()


def test_a_task_asks_for_a_retry_with_its_own_delay(tmp_path: Path) -> None:
    server, _ = start(tmp_path)
    try:
        assert server.get("/asks?b") == (200, True)
        runs = server.wait_lines("asks", 2, timeout=20)
        assert [run["attempt"] for run in runs] == [1, 2]
        assert 0.4 <= runs[1]["at"] - runs[0]["at"] <= 0.6
    finally:
        server.stop()


def _dead(tmp_path: Path) -> list[str]:
    dead = tmp_path / "spool" / "dead"
    return [path.read_bytes().split(b"\n", 2)[1].decode() for path in sorted(dead.glob("*.call"))]


def test_a_call_that_fails_on_its_last_attempt_is_kept_as_a_failed_dead_letter(tmp_path: Path) -> None:
    server, path = start(tmp_path)
    try:
        assert server.get("/always?c") == (200, True)
        assert server.get("/plain?d") == (200, True)
        server.wait_lines("always", 2, timeout=20)
        server.wait_for(lambda: len(_dead(tmp_path)) >= 2, 10, "two dead letters")
        notes = _dead(tmp_path)
        assert any(note.startswith("failed: app:always_fails (KeyError, attempt 2 of 2): 'c' | Traceback") for note in
                   notes), notes
        assert any(note.startswith("failed: app:plain_fails (RuntimeError, attempt 1 of 1): plain d | Traceback")
                   for note in notes), notes
        log = server.log()
        assert "task app:always_fails failed in mule 1 after" in log and "(attempt 2 of 2): KeyError: 'c'" in log
    finally:
        server.stop()
    listed = subprocess.run([str(BIN / "uwsgiconf-mules"), "spool", "list", str(path)],
                            capture_output=True, text=True, cwd=tmp_path, check=False)
    assert "1 x app:always_fails (failed: app:always_fails)" in listed.stdout, listed.stdout + listed.stderr
    assert "1 x app:plain_fails (failed: app:plain_fails)" in listed.stdout, listed.stdout


def _stamps(server: Server) -> collections.Counter[str]:
    return collections.Counter(run["tag"] for run in server.lines("stamp"))


def _wait_spawn(server: Server, count: int) -> None:
    server.wait_for(lambda: server.log().count("spawned uWSGI mule 1 ") >= count, 30, f"mule spawn {count}")


def _hup(server: Server, tmp_path: Path, path: Path) -> Server:
    os.kill(server.proc.pid, signal.SIGHUP)
    _wait_spawn(server, 2)
    return server


def _term_start(server: Server, tmp_path: Path, path: Path) -> Server:
    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait(20)
    return relaunch(tmp_path, path, server)


def _kill_mule(server: Server, tmp_path: Path, path: Path) -> Server:
    os.kill(server.mule_pids()[1], signal.SIGKILL)
    _wait_spawn(server, 2)
    return server


def _check_once_after(server: Server, tags: list[str]) -> None:
    for tag in tags:
        server.wait_for(lambda tag=tag: _stamps(server)[tag] >= 1, 30, f"delayed call {tag}")
    time.sleep(1.0)
    runs = [run for run in server.lines("stamp") if run["tag"] in tags]
    assert sorted(run["tag"] for run in runs) == sorted(tags), runs  # each once
    for run in runs:
        assert run["at"] >= run["due"] - 0.005, run  # never early (same clock: time.time())


TRIGGERS: dict[str, Callable[[Server, Path, Path], Server]] = {
    "SIGHUP": _hup, "SIGTERM, then start": _term_start, "SIGKILL of the mule": _kill_mule}


def test_delayed_calls_survive_a_reload_a_restart_and_a_killed_mule(tmp_path: Path) -> None:
    """One server, three triggers in a row, each with a delayed call pending (kept by the mule)
    and one sent just before (possibly still queued)."""
    server, path = start(tmp_path)
    servers = [server]
    tags: list[str] = []
    try:
        for number, (name, trigger) in enumerate(TRIGGERS.items()):
            tag = f"t{number}"
            assert server.get(f"/later?{tag},3") == (200, True)
            time.sleep(0.3)  # kept in delayed/ by the mule
            assert server.get(f"/later?{tag}q,2.5") == (200, True)
            server = trigger(server, tmp_path, path)
            if server is not servers[-1]:
                servers.append(server)
            tags += [tag, f"{tag}q"]
            _check_once_after(server, tags)
            assert "LOST" not in server.log(), name
    finally:
        for each in servers:
            each.stop()


def test_a_thousand_delayed_calls_over_ten_seconds_each_run_once_none_early(tmp_path: Path) -> None:
    """On a farm of two mules, whose timers both see every call: each runs once."""
    server, _ = start(tmp_path, mules=2)
    try:
        assert server.get("/spread?1000,10", timeout=60) == (200, 1000)
        server.wait_for(lambda: len(server.lines("stamp")) >= 1000, 40, "1000 delayed calls")
        time.sleep(1.0)
        runs = server.lines("stamp")
        assert len(runs) == 1000
        assert len({run["tag"] for run in runs}) == 1000
        late = sorted(run["at"] - run["due"] for run in runs)
        assert late[0] >= -0.005, late[:5]
        by_mule = collections.Counter(run["mule"] for run in runs)
        print(f"1000 delayed calls, by mule {dict(by_mule)}: lateness p50 {late[500] * 1000:.1f} ms, "
              f"p99 {late[990] * 1000:.1f} ms, max {late[-1] * 1000:.1f} ms")
    finally:
        server.stop()


def test_delayed_calls_past_the_spool_limit_are_refused_to_their_sender(tmp_path: Path) -> None:
    """Delayed calls count against the spool's limit as queued calls do: a sparse file of 256 MiB
    among the delayed calls (due in 2100: never run) fills the limit without using the disk."""
    from uwsgiconf_mules.protocol import spool as _spool
    from uwsgiconf_mules.protocol.spool import delayed

    server, _ = start(tmp_path)
    try:
        assert server.get("/later_or_error?before,0.5") == (200, True)
        kept = _spool.Spool(str(tmp_path / "spool"))
        os.makedirs(kept.part(delayed.folder("mule:1")), 0o700, exist_ok=True)
        filler = os.path.join(kept.part(delayed.folder("mule:1")), delayed.name(4_102_444_800 * 10 ** 9))
        with open(filler, "wb") as handle:
            handle.truncate(_spool.DEFAULT_LIMIT)
        os.chmod(filler, 0o600)
        accepted = []  # sent before the workers' watcher counted the filler (within a second): kept and run

        def refusal() -> object:
            answer = server.get(f"/later_or_error?probe{len(accepted)},0.5")[1]
            if answer is True:
                accepted.append(answer)
                return None
            return answer

        refused = server.wait_for(refusal, 10, "a refused delayed call")
        assert refused.startswith("DeliveryError: task app:stamp: a delayed call for mule:1 is refused: the spool "
                                  f"{kept.path} holds its limit of {_spool.DEFAULT_LIMIT} bytes"), refused
        os.unlink(filler)
        server.wait_for(lambda: server.get("/later_or_error?after,0.5")[1] is True, 10, "delayed calls taken again")
        runs = server.wait_lines("stamp", 2 + len(accepted))
        time.sleep(1.0)
        tags = [run["tag"] for run in server.lines("stamp")]
        assert sorted(tags) == sorted(["before", "after", *(f"probe{i}" for i in range(len(accepted)))])
        assert f"probe{len(accepted)}" not in tags  # the refused one never ran
        assert "delayed calls are refused (DeliveryError) while the spool" in server.log()
        assert "takes delayed calls again" in server.log()
        assert runs
    finally:
        server.stop()


def test_a_pending_retry_survives_a_reload_and_a_killed_mule_and_runs_once(tmp_path: Path) -> None:
    """A retry is a delayed call: kept in the spool across a SIGHUP and a SIGKILL of its mule."""
    server, path = start(tmp_path)
    try:
        for number, (tag, trigger) in enumerate((("hup", _hup), ("kill", _kill_mule))):
            assert server.get(f"/slow_retry?{tag}") == (200, True)
            server.wait_for(lambda tag=tag: [r for r in server.lines("slow_retry") if r["tag"] == tag], 10, tag)
            time.sleep(0.3)  # the retry kept in delayed/ (due in 4 s)
            if trigger is _hup:
                trigger(server, tmp_path, path)
            else:
                os.kill(server.mule_pids()[1], signal.SIGKILL)
                _wait_spawn(server, 3 + number - 1)
            server.wait_for(lambda tag=tag: len([r for r in server.lines("slow_retry") if r["tag"] == tag]) >= 2, 20,
                            f"the retry of {tag}")
        time.sleep(1.0)
        runs = server.lines("slow_retry")
        for tag in ("hup", "kill"):
            mine = [run for run in runs if run["tag"] == tag]
            assert [run["attempt"] for run in mine] == [1, 2], runs  # once, after the reload or the kill
            assert mine[1]["at"] - mine[0]["at"] >= 4.0 * 0.8, mine
    finally:
        server.stop()


def test_the_on_failure_hook_sees_the_attempt_that_failed_last(tmp_path: Path) -> None:
    server, _ = start(tmp_path, more=", on_failure='app:hooked'")
    try:
        assert server.get("/always?h") == (200, True)  # retries=1 (KeyError): fails at attempts 1 and 2
        server.wait_lines("hooked", 1, timeout=20)
        time.sleep(0.5)
        assert [run["attempt"] for run in server.lines("always")] == [1, 2]
        hooked = server.lines("hooked")
        assert [(run["key"], run["attempt"], run["exc"], run["mule_id"]) for run in hooked] == [
            ("app:always_fails", 2, "KeyError", 1)]  # once, on the last attempt (a retried failure is no failure)
    finally:
        server.stop()
