"""Results on a real uWSGI: calls with results made by two workers of four threads each, every one
read back correct by id from another worker; a result too large for the store is a ``failed``
outcome saying so; unknown ids and a full store (the least recently used evicted); a graceful
reload (SIGHUP) in the middle of a stream loses no result with ``store=``, and loses the ones
stored before it without (as the docs say)."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest

from support.harness import Server, declaration, start_server
from uwsgiconf_mules.cli.top import read_stats

pytestmark = pytest.mark.integration

APP = '''
import time
from uwsgiconf_mules.runtime import Result
from uwsgiconf_mules.errors import ResultError


@Farm("calc").offload(result_ttl=600)
def square(i):
    return {"i": i, "square": i * i, "mule": Mule.get_current_id(), "pid": os.getpid()}


@Farm("calc").offload(result_ttl=600)
def slow_square(i):
    time.sleep(0.005)
    return i * i


@Farm("calc").offload(result_ttl=600)
def big(size):
    return "x" * size


@Farm("calc").offload(result_ttl=600)
def fails(i):
    raise ValueError(f"no {i}")


def _args(query):
    return dict(part.split("=", 1) for part in query.split("&") if part)


@route("/make")
def make(query):
    n = int(_args(query)["n"])
    return {"pid": os.getpid(), "ids": [[i, square(i).id] for i in range(n)]}


@route("/make_slow")
def make_slow(query):
    args = _args(query)
    start, n = int(args["start"]), int(args["n"])
    return {"pid": os.getpid(), "ids": [[i, slow_square(i).id] for i in range(start, start + n)]}


@route("/read")
def read(query):
    args = _args(query)
    if int(args.get("not", 0)) == os.getpid():
        return {"retry": True, "pid": os.getpid()}
    found = {}
    for rid in args["ids"].split(","):
        try:
            found[rid] = ["ok", Result.get(rid).result(timeout=float(args.get("timeout", 20)))]
        except ResultError as exc:
            found[rid] = [type(exc).__name__, str(exc)]
    return {"pid": os.getpid(), "found": found}


@route("/status")
def status(query):
    handle = Result.get(_args(query)["id"])
    return {"status": handle.status, "error": handle.error, "attempts": handle.attempts}


@route("/big")
def make_big(query):
    handle = big(int(_args(query)["size"]))
    try:
        handle.result(timeout=10)
    except ResultError as exc:
        return {"status": handle.status, "error": handle.error, "raised": type(exc).__name__}
    return {"status": handle.status, "length": len(handle.return_value)}


@route("/fails")
def make_fails(query):
    handle = fails(7)
    try:
        handle.result(timeout=10)
    except ResultError as exc:
        return {"status": handle.status, "error": handle.error, "raised": type(exc).__name__,
                "traceback": handle.traceback, "attempts": handle.attempts}
    return {"status": handle.status}


@route("/timeout")
def timeout(query):
    handle = slow_square(1)
    began = time.monotonic()
    try:
        handle.result(timeout=0.0)
    except ResultError as exc:
        return {"raised": type(exc).__name__, "waited": time.monotonic() - began}
    return {"raised": None}
'''


def config(items: int, item_size: int = 4096, store: Path | None = None, spool: Path | None = None,
           stats: Path | None = None) -> str:
    results = {"items": items, "item_size": item_size, **({"store": str(store)} if store else {})}
    spool_arg = f", spool_dir={str(spool)!r}" if spool else ""
    stats_arg = f", stats={str(stats)!r}" if stats else ""
    return declaration(f"farms=section.workers.mule_farm('calc', 2), results={results!r}, reload_mercy=20"
                       f"{spool_arg}{stats_arg}")


def read_elsewhere(server: Server, maker: int, ids: list[str], timeout: float = 20) -> dict[str, list[object]]:
    """Read ``ids`` in a worker other than ``maker`` (asked again until another worker answers)."""
    for _ in range(200):
        status, body = server.get(f"/read?not={maker}&timeout={timeout}&ids={','.join(ids)}")
        assert status == 200, body
        if not body.get("retry"):
            assert body["pid"] != maker
            return body["found"]  # type: ignore[no-any-return]
    raise AssertionError("no other worker answered")


@pytest.fixture
def server(tmp_path: Path) -> Server:
    srv = start_server(tmp_path, config(items=3000), APP, extra_args=("--threads", "4"))
    yield srv
    srv.stop()


def test_results_of_calls_from_two_workers_of_four_threads_read_back_by_id_from_another_worker(
        server: Server) -> None:
    made: list[dict[str, object]] = []
    lock = threading.Lock()

    def make() -> None:
        status, body = server.get("/make?n=50")
        assert status == 200, body
        with lock:
            made.append(body)

    threads = [threading.Thread(target=make) for _ in range(8)]  # 8 requests at once: both workers, all threads
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(made) == 8
    makers = {body["pid"] for body in made}
    assert len(makers) == 2, makers  # both workers made calls
    checked, mules = 0, set()
    for body in made:
        ids = body["ids"]
        for start in range(0, len(ids), 25):
            chunk = ids[start:start + 25]
            found = read_elsewhere(server, body["pid"], [rid for _, rid in chunk])
            for i, rid in chunk:
                kind, value = found[rid]
                assert kind == "ok", (rid, found[rid])
                assert value["i"] == i and value["square"] == i * i
                mules.add(value["mule"])
                checked += 1
    assert checked == 400
    assert mules == {1, 2}  # both mules of the farm ran calls


def test_a_result_larger_than_the_item_size_is_failed_saying_so_never_truncated(server: Server) -> None:
    _, body = server.get("/big?size=1000")
    assert body == {"status": "succeeded", "length": 1000}
    _, body = server.get("/big?size=5000")
    assert body["status"] == "failed" and body["raised"] == "TaskFailed"
    assert "more than the results store's item_size (4096 bytes): it is not stored" in body["error"]


def test_a_failed_call_has_its_exception_text_and_unknown_ids_are_refused(server: Server) -> None:
    _, body = server.get("/fails")
    assert body["status"] == "failed" and body["error"] == "ValueError: no 7" and body["attempts"] == 1
    assert body["raised"] == "TaskFailed" and 'raise ValueError(f"no {i}")' in body["traceback"]
    found = read_elsewhere(server, 0, ["0" * 12 + "00000258" + "ab" * 6, "nonsense"])
    assert found["0" * 12 + "00000258" + "ab" * 6][0] == "ResultNotFound"
    assert "expired" in found["0" * 12 + "00000258" + "ab" * 6][1]
    assert found["nonsense"] == ["ResultNotFound", "'nonsense' is not a result id (32 hex digits, as Result.id "
                                                   "gives)"]
    unknown = f"{int(time.time() * 1000):012x}00000258{'cd' * 6}"  # unexpired, never made: no record, so queued
    assert read_elsewhere(server, 0, [unknown], timeout=0)[unknown] == [
        "ResultTimeout", f"result {unknown}: no outcome within 0.0 s (the call is queued (no record: not started yet, "
                         "or evicted from a full store))"]
    assert server.get(f"/status?id={unknown}")[1] == {"status": "queued", "error": None, "attempts": 0}
    _, body = server.get("/timeout")
    assert body["raised"] == "ResultTimeout" and body["waited"] < 0.5


def test_a_full_store_evicts_the_least_recently_used(tmp_path: Path) -> None:
    stats = tmp_path / "stats.sock"
    server = start_server(tmp_path, config(items=50, stats=stats), APP)
    try:
        _, body = server.get("/make?n=120")
        ids = [rid for _, rid in body["ids"]]
        # Every call ran: one new item each (its outcome, nothing before it), 70 of them into a full
        # store, each counted (the stats server's caches[].full, what `top` shows), none logged
        server.wait_for(lambda: results_store(stats)["full"] >= 70, 20, "120 results stored")
        store = results_store(stats)
        assert store["full"] == 70 and store["items"] == 50 and store["hashsize"] == 65536, store
        assert "LRU item will be purged" not in server.log()  # ignore_full=1: no line per eviction
        found = {}
        for start in range(0, len(ids), 40):  # 40 ids a request: within uWSGI's 4 KiB request buffer
            found.update(read_elsewhere(server, 0, ids[start:start + 40], timeout=0))
        kept = [rid for rid in ids if found[rid][0] == "ok"]
        evicted = [found[rid] for rid in ids if found[rid][0] != "ok"]
        assert 40 <= len(kept) <= 50, (len(kept), evicted[:2])  # the store holds 50
        # no record: queued, as a call not started (which it cannot be told from), and the timeout says both
        assert all(kind == "ResultTimeout" and "queued (no record: not started yet, or evicted from a full store)"
                   in text for kind, text in evicted)
        assert all(found[rid][1]["i"] == ids.index(rid) for rid in kept)  # those kept are right
        assert ids[-1] in kept and ids[0] not in kept  # the least recently used went: the newest are kept
        assert "is FULL" not in server.log()  # uWSGI never refused a result
    finally:
        server.stop()


def results_store(stats: Path) -> dict[str, int]:
    """The results store's entry of the stats server's ``caches``."""
    caches = read_stats(str(stats))["caches"]
    return next(cache for cache in caches if cache["name"] == "uwsgiconf_mules_results")


def reload(server: Server) -> None:
    """A graceful reload (SIGHUP), waited for until every worker is accepting again (a stop sent
    while one still starts may outlast the harness's bound)."""
    log = server.log()
    workers = set(re.findall(r"spawned uWSGI worker (\d+) ", log))
    accepting = log.count("harness: worker accepting")
    os.kill(server.proc.pid, signal.SIGHUP)
    server.wait_for(lambda: server.log().count("harness: worker accepting") >= accepting + len(workers), 30,
                    f"the {len(workers)} workers accepting after the reload")
    server.wait_for(lambda: server.get("/ping")[0] == 200, 30, "workers after the reload")


def make_stream_with_a_reload(server: Server) -> list[tuple[int, str]]:
    """Offload 600 calls of 5 ms in 6 requests, with a graceful reload (SIGHUP) after the second."""
    ids: list[tuple[int, str]] = []
    for batch in range(6):
        status, body = server.get(f"/make_slow?start={batch * 100}&n=100")
        assert status == 200, body
        ids.extend((i, rid) for i, rid in body["ids"])
        if batch == 1:
            reload(server)
    return ids


def test_a_reload_in_the_middle_loses_no_result_with_a_store_file(tmp_path: Path) -> None:
    store = tmp_path / "results.cache"
    server = start_server(tmp_path / "app", config(items=2000, store=store, spool=tmp_path / "spool"), APP)
    try:
        ids = make_stream_with_a_reload(server)
        found: dict[str, list[object]] = {}
        for start in range(0, len(ids), 50):
            found.update(read_elsewhere(server, 0, [rid for _, rid in ids[start:start + 50]], timeout=30))
        wrong = {rid: found[rid] for i, rid in ids if found[rid] != ["ok", i * i]}
        assert not wrong, (len(wrong), list(wrong.items())[:3])
        assert store.stat().st_size > 0
    finally:
        server.stop()


def test_without_a_store_file_a_reload_loses_the_results_stored_before_it(tmp_path: Path) -> None:
    server = start_server(tmp_path / "app", config(items=2000, spool=tmp_path / "spool"), APP)
    try:
        _, body = server.get("/make_slow?start=0&n=20")
        ids = [rid for _, rid in body["ids"]]
        assert all(kind == "ok" for kind, _ in read_elsewhere(server, 0, ids).values())
        time.sleep(1.1)  # uWSGI's start time, which a store without a file dates from, is in whole seconds
        reload(server)
        lost = read_elsewhere(server, 0, ids, timeout=1)
        assert all(kind == "ResultNotFound" and "the reload lost it" in text for kind, text in lost.values()), \
            json.dumps(lost)[:500]
    finally:
        server.stop()


RQ_CONFIG = """
from uwsgiconf_mules import Section
section = Section()
section.workers.set_mules_params(mules=1)
section.workers.set_offload_backends(reports='rq://127.0.0.1:{port}/0?queue=reports')
uwsgi_configuration = section.as_configuration()
"""

RQ_APP = '''
from uwsgiconf_mules.runtime import Result
from uwsgiconf_mules.errors import ResultError


@Farm("reports").offload(result_ttl=600)
def report(i):
    if i < 0:
        raise ValueError(f"negative {i}")
    return {"i": i, "double": 2 * i}


@route("/make")
def make(query):
    return {"pid": os.getpid(), "ids": [report(int(i)).id for i in query.split(",")]}


@route("/read")
def read(query):
    found = {}
    for rid in query.split(","):
        handle = Result.get(rid)
        try:
            found[rid] = [handle.status, handle.result(timeout=0), handle.attempts]
        except ResultError as exc:
            found[rid] = [handle.status, type(exc).__name__, handle.error]
    return {"pid": os.getpid(), "found": found}
'''


def test_on_a_farm_routed_to_rq_the_handle_reads_rqs_own_job_status_and_result(
        tmp_path: Path, empty_redis: object) -> None:
    import subprocess

    from support.harness import BIN

    server = start_server(tmp_path / "app", RQ_CONFIG.format(port=empty_redis.port), RQ_APP)  # type: ignore[attr-defined]
    try:
        _, body = server.get("/make?1,2,-3")
        ids = body["ids"]
        assert all(rid.startswith("reports/") for rid in ids)
        _, before = server.get(f"/read?{','.join(ids)}")
        assert [before["found"][rid][:2] for rid in ids] == [["queued", "ResultTimeout"]] * 3
        worker = subprocess.run([str(BIN / "uwsgiconf-mules"), "worker", "--burst", "--worker-class",
                                 "rq.worker.SimpleWorker", "uwsgicfg.py"], cwd=server.directory,
                                env=dict(os.environ, TEST_RESULTS=str(server.results)), capture_output=True,
                                text=True, timeout=120, stdin=subprocess.DEVNULL, check=False)
        assert worker.returncode == 0, worker.stderr[-3000:]
        _, after = server.get(f"/read?{','.join(ids)}")
        assert after["found"][ids[0]] == ["succeeded", {"i": 1, "double": 2}, 1]
        assert after["found"][ids[1]] == ["succeeded", {"i": 2, "double": 4}, 1]
        assert after["found"][ids[2]] == ["failed", "TaskFailed", "ValueError: negative -3"]
        assert server.get("/read?reports/" + "0" * 32) == (500, {
            "error": "ResultNotFound", "message": f"no result reports/{'0' * 32} in RQ queue 'reports' at "
            f"127.0.0.1:{empty_redis.port}/0: an unknown job, or one whose result expired (its result_ttl)"})  # type: ignore[attr-defined]
    finally:
        server.stop()


def test_django_get_result_in_another_worker_reads_what_the_mule_wrote(tmp_path: Path) -> None:
    from support.django_site import start

    servers: list[Server] = []
    try:
        server, _ = start(tmp_path, "prefork", servers)
        _, made = server.get("/count?email=ann@example.com")
        _, failing = server.get("/count?email=")
        seen = {}
        for rid, pid in ((made["id"], made["pid"]), (failing["id"], failing["pid"])):
            def other_worker_final(rid: str = rid, pid: int = pid) -> object:
                status, body = server.get(f"/result?id={rid}")
                assert status == 200, body
                return body["pid"] != pid and body["status"] in ("SUCCESSFUL", "FAILED") and body
            seen[rid] = server.wait_for(other_worker_final, 20, "a final result read by another worker")
        assert seen[made["id"]]["status"] == "SUCCESSFUL"
        assert seen[made["id"]]["value"]["email"] == "ann@example.com"
        assert seen[made["id"]]["value"]["mule"] in (1, 2)
        assert seen[failing["id"]] == {"status": "FAILED", "pid": seen[failing["id"]]["pid"], "value": None,
                                       "errors": ["builtins.ValueError"]}
    finally:
        for server in servers:
            server.stop()


LIFECYCLE_APP = '''
import signal
import time

from uwsgiconf_mules.runtime import Result, current_attempt

MARKER = os.path.join(RESULTS, "marker")


@mule_offload(result_ttl=600, retries=2, retry_for=OSError, retry_backoff=0.3, retry_jitter=False)
def flaky(tag):
    record("flaky", tag=tag, attempt=current_attempt())
    if current_attempt() < 3:
        raise OSError(f"down at attempt {current_attempt()}")
    return f"{tag} at attempt {current_attempt()}"


@mule_offload(result_ttl=600, retries=1, retry_for=OSError, retry_backoff=0.2, retry_jitter=False)
def hopeless(tag):
    raise OSError(f"never {tag}")


@mule_offload(result_ttl=600)
def dies(tag):
    record("dies", tag=tag)
    time.sleep(0.3)
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(10)


@route("/make")
def make(query):
    name, _, tag = query.partition("=")
    return globals()[name](tag).id


@route("/status")
def status(query):
    handle = Result.get(query)
    return [handle.status, handle.attempts, handle.error, handle.return_value if handle.status == "succeeded"
            else None]
'''


def test_a_retried_and_an_interrupted_call_show_their_transitions(tmp_path: Path) -> None:
    config = declaration(f"mules=1, spool_dir={str(tmp_path / 'spool')!r}, reload_mercy=20, results=True")
    server = start_server(tmp_path / "app", config, LIFECYCLE_APP)
    try:
        seen: list[tuple[str, int]] = []

        def watch(rid: str, final: str) -> list[object]:
            def look() -> list[object] | None:
                found = server.get(f"/status?{rid}")[1]
                if not seen or seen[-1] != (found[0], found[1]):
                    seen.append((found[0], found[1]))
                return found if found[0] == final else None
            return server.wait_for(look, 30, f"{rid} {final}")  # type: ignore[no-any-return]

        retried = server.get("/make?flaky=a")[1]
        done = watch(retried, "succeeded")
        assert done == ["succeeded", 3, None, "a at attempt 3"]
        assert ("retrying", 1) in seen and ("retrying", 2) in seen  # each retry, with the attempt that failed
        assert seen.index(("retrying", 1)) < seen.index(("retrying", 2)) < seen.index(("succeeded", 3))
        assert [line["attempt"] for line in server.lines("flaky")] == [1, 2, 3]

        seen.clear()
        exhausted = server.get("/make?hopeless=b")[1]
        assert watch(exhausted, "failed") == ["failed", 2, "OSError: never b", None]
        assert ("retrying", 1) in seen

        seen.clear()
        killed = server.get("/make?dies=c")[1]
        final = watch(killed, "interrupted")
        assert final[0] == "interrupted" and final[1] == 1
        assert str(final[2]).startswith("interrupted: app:dies (in mule 1, pid ")
        assert ("running", 1) in seen  # it was seen running before its mule died
    finally:
        server.stop()
