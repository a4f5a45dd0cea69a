"""What a result costs, on a real uWSGI: a call with a result (offload, the mule's two writes,
the caller's read) against a plain offload, end to end, per call; and the proof at scale: 10,000
calls with results made by two workers of four threads, each read back by id from the other
worker and checked.

    python benchmarks/results_cost.py [CALLS] [ROUNDS]

Cost: one worker thread offloads CALLS small calls to one dispatch mule, then waits for the last
to have run (plain: a call that touches a file the worker waits for; results: ``result()`` of
every handle, in order). Rounds alternate plain and results; the medians are printed, with
``results/plain = X.XX``.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support.harness import Server, declaration, start_server

APP = '''
import time
from uwsgiconf_mules.runtime import Result


@mule_offload(1)
def plain(i):
    pass


@mule_offload(1)
def done(path):
    open(path, "w").close()


@mule_offload(1, result_ttl=600)
def square(i):
    return i * i


@Farm("calc").offload(result_ttl=600)
def farm_square(i):
    return {"i": i, "square": i * i, "mule": Mule.get_current_id()}


def _args(query):
    return dict(part.split("=", 1) for part in query.split("&") if part)


@route("/plain")
def run_plain(query):
    args = _args(query)
    n, flag = int(args["n"]), args["flag"]
    began = time.perf_counter()
    for i in range(n):
        plain(i)
    done(flag)
    while not os.path.exists(flag):
        time.sleep(0.0005)
    return time.perf_counter() - began


@route("/results")
def run_results(query):
    n = int(_args(query)["n"])
    began = time.perf_counter()
    handles = [square(i) for i in range(n)]
    sent = time.perf_counter()
    for i, handle in enumerate(handles):
        assert handle.result(timeout=60) == i * i
    PHASES.append((sent - began) / n * 1e6)
    return time.perf_counter() - began


PHASES = []


@mule_offload(1, result_ttl=600)
def mule_micro():
    from uwsgiconf_mules.runtime import results as R, tasks as T
    n = 20000
    ids = [R.new_id(600) for _ in range(n)]
    wrapper = T.REGISTRY[b"app:square"]
    t = time.perf_counter()
    for i, rid in enumerate(ids):
        wrapper(rid, i)
    out = {"mule wrapper": (time.perf_counter() - t) / n * 1e6}
    t = time.perf_counter()
    for i, rid in enumerate(ids):
        R.store().get(rid)
    out["mule get"] = (time.perf_counter() - t) / n * 1e6
    return out


@route("/noqueued")
def noqueued(query):
    from uwsgiconf_mules.runtime import result_offload as RO, results as R
    n = int(_args(query)["n"])
    saved = R.queued
    R.queued = lambda *a: None
    square._probe = 1
    try:
        began = time.perf_counter()
        hs = [square(i) for i in range(n)]
        sent = time.perf_counter()
        for h in hs:
            h.result(timeout=60)
        return [(sent - began) / n * 1e6, (time.perf_counter() - began) / n * 1e6]
    finally:
        R.queued = saved


@route("/mule_micro")
def run_mule_micro(query):
    return mule_micro().result(timeout=100)


@route("/micro")
def micro(query):
    import uwsgi
    from uwsgiconf_mules.runtime import results as R
    n = 20000
    out = {}
    ids = [R.new_id(600) for _ in range(n)]
    t = time.perf_counter()
    for rid in ids:
        R.new_id(600)
    out["new_id"] = (time.perf_counter() - t) / n * 1e6
    t = time.perf_counter()
    for rid in ids:
        uwsgi.cache_update(rid, R.QUEUED_RECORD, 600, "uwsgiconf_mules_results")
    out["cache_update"] = (time.perf_counter() - t) / n * 1e6
    t = time.perf_counter()
    for rid in ids:
        uwsgi.cache_get(rid, "uwsgiconf_mules_results")
    out["cache_get"] = (time.perf_counter() - t) / n * 1e6
    t = time.perf_counter()
    for rid in ids:
        R.queued(rid, 600)
    out["queued"] = (time.perf_counter() - t) / n * 1e6
    t = time.perf_counter()
    for i in range(n):
        plain(i)
    out["plain send"] = (time.perf_counter() - t) / n * 1e6
    t = time.perf_counter()
    hs = [square(i) for i in range(n)]
    out["results send"] = (time.perf_counter() - t) / n * 1e6
    for h in hs:
        h.result(timeout=60)
    t = time.perf_counter()
    for h in hs:
        Result(h.id).result(timeout=60)
    out["read done"] = (time.perf_counter() - t) / n * 1e6
    return out


@route("/phases")
def phases(query):
    return PHASES


@route("/make")
def make(query):
    n = int(_args(query)["n"])
    return {"pid": os.getpid(), "ids": [farm_square(i).id for i in range(n)]}


@route("/read")
def read(query):
    args = _args(query)
    if int(args["not"]) == os.getpid():
        return {"retry": True}
    return {"pid": os.getpid(), "values": [Result.get(rid).result(timeout=60) for rid in args["ids"].split(",")]}
'''

CONFIG = declaration("mules=3, farms=section.workers.mule_farm('calc', [2, 3]), "
                     "results={'items': 30000, 'item_size': 512}")


def cost(server: Server, calls: int, rounds: int, flags: Path) -> tuple[list[float], list[float]]:
    plain, results = [], []
    for run in range(rounds):
        plain.append(server.get(f"/plain?n={calls}&flag={flags}/{run}", timeout=120)[1] / calls * 1e6)
        results.append(server.get(f"/results?n={calls}", timeout=120)[1] / calls * 1e6)
    return plain, results


def proof(server: Server, calls: int = 10_000) -> tuple[int, int, float]:
    """(calls checked, wrong ones, seconds): 8 requests at once make the calls, each read back by
    the other worker."""
    made: list[dict[str, object]] = []
    lock = threading.Lock()
    began = time.monotonic()

    def make() -> None:
        body = server.get(f"/make?n={calls // 8}", timeout=120)[1]
        with lock:
            made.append(body)

    threads = [threading.Thread(target=make) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    checked = wrong = 0
    for body in made:
        ids = body["ids"]
        for start in range(0, len(ids), 100):
            chunk = ids[start:start + 100]
            for _ in range(100):
                answer = server.get(f"/read?not={body['pid']}&ids={','.join(chunk)}", timeout=120)[1]
                if not answer.get("retry"):
                    break
            assert answer["pid"] != body["pid"]
            for i, value in enumerate(answer["values"], start):
                checked += 1
                wrong += value["i"] != i or value["square"] != i * i
    return checked, wrong, time.monotonic() - began


def main() -> None:
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(Path(tmp) / "app", CONFIG, APP, extra_args=("--threads", "4", "--buffer-size", "65535"))
        try:
            flags = Path(tmp) / "flags"
            flags.mkdir()
            cost(server, 1000, 1, flags)  # warm up
            plain, results = cost(server, calls, rounds, flags)
            checked, wrong, seconds = proof(server)
            sends = server.get("/phases")[1]
            print(server.get("/micro", timeout=300)[1])
            print(server.get("/mule_micro", timeout=300)[1])
            print("noqueued", server.get("/noqueued?n=20000", timeout=300)[1])
        finally:
            server.stop()
    print(f"plain offload, end to end: {', '.join(f'{v:.2f}' for v in plain)} µs/call "
          f"(median {statistics.median(plain):.2f})")
    print(f"with a result (offload + 2 writes + read): {', '.join(f'{v:.2f}' for v in results)} µs/call "
          f"(median {statistics.median(results):.2f})")
    print(f"of which the offloads (id, queued record, send): {', '.join(f'{v:.2f}' for v in sends[1:])} µs/call "
          "(in whichever worker ran the round)")
    print(f"results/plain = {statistics.median(results) / statistics.median(plain):.2f}")
    print(f"proof: {checked} calls with results from 2 workers x 4 threads, read back from the other worker: "
          f"{wrong} wrong, {seconds:.1f} s")


if __name__ == "__main__":
    main()
