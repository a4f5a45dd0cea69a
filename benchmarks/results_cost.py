"""What a result costs, on a real uWSGI: a call with a result (offload, the mule's write of its
outcome, the caller's read) against a plain offload, end to end, per call; and the proof at scale:
10,000 calls with results made by two workers of four threads, each read back by id from the
other worker and checked.

    python benchmarks/results_cost.py [CALLS] [ROUNDS]

Cost: one worker thread offloads CALLS small calls to one dispatch mule, then waits for the last
to have run (plain: a call that touches a file the worker waits for; results: ``result()`` of
every handle, in order). Each round runs both modes back to back (their order alternating); the
median of the rounds' ratios is printed as ``result/plain = X.XX`` (wall time), with the ratio of
the CPU the worker and the mule used (``/proc``), and the load average. ``benchmarks/run.py``
(``make bench``) runs :func:`summary` and prints :func:`report`.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

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
    began, cpu = time.perf_counter(), time.process_time()
    for i in range(n):
        plain(i)
    done(flag)
    while not os.path.exists(flag):
        time.sleep(0.0005)
    return [time.perf_counter() - began, time.process_time() - cpu]


@route("/results")
def run_results(query):
    n = int(_args(query)["n"])
    began, cpu = time.perf_counter(), time.process_time()
    handles = [square(i) for i in range(n)]
    for i, handle in enumerate(handles):
        assert handle.result(timeout=60) == i * i
    return [time.perf_counter() - began, time.process_time() - cpu]


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



def config(items: int) -> str:
    """The config: mule 1 for the cost, a farm of mules 2 and 3 for the proof, a store of ``items``."""
    return declaration(f"mules=3, farms=section.workers.mule_farm('calc', [2, 3]), "
                       f"results={{'items': {items}, 'item_size': 256}}")


CONFIG = config(30000)


def mule_cpu(pid: int) -> float:
    """Seconds of CPU the threads of process ``pid`` ran so far (``/proc/PID/task/*/schedstat``:
    nanoseconds, not the clock ticks of ``/proc/PID/stat``)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):  # a thread that ended meanwhile
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def cost(server: Server, calls: int, rounds: int, flags: Path) -> dict[str, list[list[float]]]:
    """Per round and mode: [wall, the worker's CPU, the mule's CPU], µs per call. Each round runs
    both modes back to back (plain first in even rounds, results first in odd ones): the pairs
    compare runs seconds apart on a machine whose speed drifts."""
    mule = server.mule_pids()[1]
    found: dict[str, list[list[float]]] = {"plain": [], "results": []}
    for run in range(rounds):
        modes = [("plain", f"/plain?n={calls}&flag={flags}/{run}"), ("results", f"/results?n={calls}")]
        for mode, path in modes if run % 2 == 0 else modes[::-1]:
            before = mule_cpu(mule)
            wall, worker = server.get(path, timeout=300)[1]
            found[mode].append([wall / calls * 1e6, worker / calls * 1e6, (mule_cpu(mule) - before) / calls * 1e6])
    return found


def ratios(found: dict[str, list[list[float]]]) -> dict[str, float]:
    """Medians of the per-round ratios (results / plain) of wall time and of CPU (worker + mule)."""
    pairs = list(zip(found["plain"], found["results"], strict=True))
    return {"wall": statistics.median(r[0] / p[0] for p, r in pairs),
            "cpu": statistics.median((r[1] + r[2]) / (p[1] + p[2]) for p, r in pairs)}


def _store_run(workdir: Path, calls: int, rounds: int, items: int, cycles: int) -> dict[str, list[list[float]]]:
    """:func:`cost` on a server of its own whose store holds ``items`` results, after a warm-up of
    ``cycles`` rounds (at least one round of 1,000 calls)."""
    server = start_server(workdir, config(items), APP, extra_args=("--threads", "4", "--buffer-size", "65535"))
    try:
        flags = workdir / "flags"
        flags.mkdir()
        if cycles:
            cost(server, calls, cycles, flags)  # every slot of the store written once: the oldest are evicted next
        cost(server, min(calls, 1000), 1, flags)  # warm up
        return cost(server, calls, rounds, flags)
    finally:
        server.stop()


def summary(workdir: Path, calls: int = 20_000, rounds: int = 7) -> dict[str, Any]:
    """The cost part of ``benchmarks/run.py`` (``make bench``): rounds of ``calls`` calls of each
    mode, paired, with two stores. A store in use (its figure is ``ratio``): it holds a quarter more
    results than one round makes, and two rounds before the measured ones wrote every slot, so each
    new result takes the slot of the oldest, evicted, as on a server whose store is past its first
    pass. A new store (``fresh``): large enough for every result of the run, so each one is written
    into a slot never used, whose memory (shared, allocated by uWSGI on first touch) faults in the
    mule at its first write and in the worker at its first read. The load average before and after.

    :param workdir: An empty directory for the servers.
    :param calls: Calls per run.
    :param rounds: Rounds (one run of each mode each).
    """
    load = os.getloadavg()[0]
    workdir.mkdir(parents=True, exist_ok=True)
    found = _store_run(workdir / "in-use", calls, rounds, calls + calls // 4, 2)
    fresh = _store_run(workdir / "new", calls, rounds, calls * (rounds + 1) + min(calls, 1000) + 1000, 0)
    return {"calls": calls, "rounds": rounds, "runs": found, "ratio": ratios(found),
            "fresh": {"runs": fresh, "ratio": ratios(fresh)}, "load": [round(load, 2), round(os.getloadavg()[0], 2)]}


def report(summary: dict[str, Any]) -> list[str]:
    """Lines of :func:`summary`'s figures, ending with ``result/plain = X.XX`` (wall, paired, the
    store in use; the new store's figure beside it)."""
    lines = []
    for store, found in (("a store in use", summary), ("a new store", summary.get("fresh"))):
        if found is None:
            continue
        for mode, what in (("plain", "plain offload"), ("results", "with a result (offload + outcome write + read)")):
            runs = found["runs"][mode]
            lines.append(f"{store}: {what}, µs/call, wall (worker CPU, mule CPU): "
                         f"{', '.join(f'{w:.2f} ({c:.2f}, {m:.2f})' for w, c, m in runs)}; median wall "
                         f"{statistics.median(r[0] for r in runs):.2f}")
        lines.append(f"{store}: result/plain {found['ratio']['wall']:.2f} wall, {found['ratio']['cpu']:.2f} CPU "
                     "(worker + mule)")
    ratio, fresh = summary["ratio"], summary.get("fresh")
    lines.append(f"{summary['calls']} calls x {summary['rounds']} rounds, paired; load average "
                 f"{summary['load'][0]:.2f} before, {summary['load'][1]:.2f} after")
    beside = f"; a new store {fresh['ratio']['wall']:.2f}" if fresh else ""
    lines.append(f"result/plain = {ratio['wall']:.2f}   (CPU {ratio['cpu']:.2f}{beside})")
    return lines


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
            assert answer.get("pid") not in (None, body["pid"]), answer
            for i, value in enumerate(answer["values"], start):
                checked += 1
                wrong += value["i"] != i or value["square"] != i * i
    return checked, wrong, time.monotonic() - began


def main() -> None:
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 7
    with tempfile.TemporaryDirectory() as tmp:
        found = summary(Path(tmp) / "cost", calls, rounds)
        print("\n".join(report(found)))
        server = start_server(Path(tmp) / "proof", CONFIG, APP, extra_args=("--threads", "4", "--buffer-size",
                                                                              "65535"))
        try:
            checked, wrong, seconds = proof(server)
        finally:
            server.stop()
    print(f"proof: {checked} calls with results from 2 workers x 4 threads, read back from the other worker: "
          f"{wrong} wrong, {seconds:.1f} s")


if __name__ == "__main__":
    main()
