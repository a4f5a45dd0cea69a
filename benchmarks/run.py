"""Benchmarks: offload throughput, sender cost, import cost and idle mule memory.

Everything runs on a real uWSGI on loopback (see ``tests/support/harness.py``), side by side in one run:

* raw ``uwsgi.mule_msg`` of a small bytes payload to a hook that counts (the physical limit);
* uwsgiconf 2.4.0 ``mule_offload`` of a trivial function;
* uwsgidecorators ``@mulefunc`` (it returns None, so it cannot retry: run with the largest queue
  this machine allows, and any loss is reported);
* this project's ``Mule(1).offload()``, the same with the counters on (``stats=...``), and a farm
  target;
* a farm routed to RQ (a real redis-server on loopback): the cost of an offload against a bare
  ``Queue.enqueue_call`` of the same function, in the same process, alternating every 25 calls
  (``x bare`` is the median of the per-round ratios of calls per second), and end-to-end jobs per second with
  one worker (``uwsgiconf-mules worker --burst``: RQ's forking worker and its SimpleWorker), from
  the first offload until the worker has run the last job and exited.

Senders that can retry do so on a full queue the way uwsgiconf-mules does (they wait until the
queue polls writable again, with ``uwsgiconf_mules.runtime.sending.retry``), so the rows compare what each
variant costs per call, not how it waits. End to end means from the first send until the mule
has run call N; a run that loses calls is reported as lost, not as fast. ``x raw`` is the median
over runs of the ratio to the raw run just before it (every run of a variant follows a raw run
of its own, round by round, and the machine's speed drifts within seconds). Prints a markdown table,
writes ``benchmarks/results/latest.json``, and ends with the line ``offload/raw = X.XX``. Before it,
``result/plain = X.XX``: a call with a result (offload, the mule's write of its outcome, the
caller's read) against a plain offload, end to end per call, paired runs (``results_cost.py``).

    python benchmarks/run.py            # full run (a few minutes)
    python benchmarks/run.py --smoke    # tiny N, one run: checks that the benchmark works
    python benchmarks/run.py --rq-only  # the RQ rows only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import figures  # noqa: E402
import results_cost  # noqa: E402  # beside this script: a call with a result against a plain offload

from support.harness import Server, declaration, start_server  # noqa: E402

COMMON = '''
import json
import os
import struct
import time

from uwsgiconf_mules.runtime.sending import retry as retry_until_sent

RESULTS = os.environ["TEST_RESULTS"]
state = {"count": 0}


def finish(i, n):
    """Mule side: count calls of a run; at the last one, record the time and the count."""
    if i == 0:
        state["count"] = 0
    state["count"] += 1
    if i == n - 1:
        with open(os.path.join(RESULTS, "done"), "a") as handle:
            handle.write(json.dumps({"end": time.monotonic_ns(), "count": state["count"]}) + "\\n")


def retry(send, *args):
    """Retry on a full queue with uwsgiconf-mules' own loop: wait until the queue has room, then send."""
    if not send(*args):
        retry_until_sent(lambda: send(*args), 3600.0, "benchmark call", 0)


def run(n, size):
    payload = b"x" * size
    start = time.monotonic_ns()
    for i in range(n):
        send_one(i, n, payload)
    return {"start": start, "sent": time.monotonic_ns(), "pid": os.getpid()}


def sender(rounds, batch):
    """Sender cost: batches small enough for the queue, drained between batches."""
    total = 0
    for _ in range(rounds):
        begin = time.perf_counter_ns()
        for i in range(batch):
            send_one(i, 1 << 30, b"")
        total += time.perf_counter_ns() - begin
        time.sleep(0.02)
    return {"us_per_call": total / (rounds * batch) / 1000}


def application(environ, start_response):
    query = dict(item.split("=") for item in environ["QUERY_STRING"].split("&") if item)
    path = environ["PATH_INFO"]
    if path == "/run":
        body = run(int(query["n"]), int(query["size"]))
    elif path == "/sender":
        body = sender(int(query["rounds"]), int(query["batch"]))
    else:
        body = "pong"
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [(body if isinstance(body, str) else json.dumps(body)).encode()]
'''

PLAIN_CONFIG = """
from uwsgiconf.config import Section
section = Section()
section.workers.set_mules_params(mules=1{extra})
uwsgi_configuration = section.as_configuration()
"""

OURS_CONFIG = declaration("mules=1")
OURS_APP = '''
from uwsgiconf_mules.runtime import Mule

@Mule(1).offload()
def task(i, n, payload):
    finish(i, n)

def send_one(i, n, payload):
    task(i, n, payload)
'''
OURS_FARM_CONFIG = declaration("farms=[section.workers.mule_farm('bench', 1)]")

VARIANTS: dict[str, dict[str, str]] = {
    "raw mule_msg": {
        "config": PLAIN_CONFIG.format(extra=""),
        "app": '''
import uwsgi

def hook(message):
    i, n = struct.unpack_from("!II", message)
    finish(i, n)

uwsgi.mule_msg_hook = hook

def send_one(i, n, payload):
    retry(uwsgi.mule_msg, struct.pack("!II", i, n) + payload, 1)
''',
    },
    "uwsgiconf 2.4 mule_offload": {
        "config": PLAIN_CONFIG.format(extra=""),
        "app": '''
from uwsgiconf.runtime.mules import mule_offload

@mule_offload(1)
def task(i, n, payload):
    finish(i, n)

def send_one(i, n, payload):
    retry(task, i, n, payload)
''',
    },
    "uwsgidecorators @mulefunc": {
        "config": PLAIN_CONFIG.format(extra=", msg_buffer={wmem_max}"),
        "app": '''
from uwsgidecorators import mulefunc

@mulefunc(1)
def task(i, n, payload):
    finish(i, n)

def send_one(i, n, payload):
    task(i, n, payload)  # returns None: cannot know whether it was queued
''',
    },
    "uwsgiconf-mules Mule(1)": {"config": OURS_CONFIG, "app": OURS_APP},
    "uwsgiconf-mules Mule(1), counters on": {"config": declaration("mules=1, stats='{stats}'"), "app": OURS_APP},
    "uwsgiconf-mules Farm": {
        "config": OURS_FARM_CONFIG,
        "app": '''
from uwsgiconf_mules.runtime import Farm

@Farm("bench").offload()
def task(i, n, payload):
    finish(i, n)

def send_one(i, n, payload):
    task(i, n, payload)
''',
    },
}
RAW = "raw mule_msg"
OURS = "uwsgiconf-mules Mule(1)"
COUNTED = "uwsgiconf-mules Mule(1), counters on"


def _wmem_max() -> int:
    try:
        return int(Path("/proc/sys/net/core/wmem_max").read_text())
    except (OSError, ValueError):
        return 4194304


def _pids(server: Server) -> tuple[int, int]:
    """(the worker, the mule 1) of ``server``: the processes whose CPU time a run counts."""
    return server.get("/run?n=1000&size=0")[1]["pid"], server.mule_pids()[1]


def _measure_throughput(server: Server, n: int, size: int, timeout: float,
                        pids: tuple[int, int] | None = None) -> dict[str, Any]:
    done_before = len(server.lines("done"))
    ticks = [figures.cpu_ticks(pid) for pid in pids] if pids else []
    status, sent = server.get(f"/run?n={n}&size={size}", timeout=timeout)
    if status != 200:
        raise RuntimeError(f"run failed: {sent}")
    # Once the sender is done, the mule gets a bounded time to finish: a variant that cannot
    # retry may have lost the last call, and then no completion is ever recorded.
    sender_seconds = (sent["sent"] - sent["start"]) / 1e9
    deadline = time.monotonic() + min(timeout, 5 + 10 * sender_seconds)
    while len(server.lines("done")) <= done_before:
        if time.monotonic() > deadline:
            cpu = [figures.cpu_ticks(pid) - before for pid, before in zip(pids or (), ticks, strict=True)]
            return {"rate": None, "lost": "the last call never ran", "n": n, "cpu_ticks": cpu}
        time.sleep(0.01)
    done = server.lines("done")[-1]
    seconds = (done["end"] - sent["start"]) / 1e9
    lost = n - done["count"]
    cpu = [figures.cpu_ticks(pid) - before for pid, before in zip(pids or (), ticks, strict=True)]
    return {"rate": None if lost else n / seconds, "lost": lost, "seconds": seconds,
            "sender_seconds": sender_seconds, "cpu_ticks": cpu, "n": n}


BIG = 153600
"""The payload of the largest row (150 KiB, near the default socket limit of 208 KiB). uWSGI's own
mule loop, which runs raw's hook, reads at most ``mule-msg-size`` bytes of a message (64 KiB by
default: the rest is cut off), so this row runs on servers of its own declaring
``msg_buffer=BIG_BUFFER`` for every variant: each reads its messages whole, from queues of one size."""
BIG_BUFFER = 163840
BIG_VARIANTS = (RAW, OURS, COUNTED, "uwsgiconf-mules Farm")
"""Variants of the largest row (uwsgiconf 2.4 and uwsgidecorators read 64 KiB at most)."""


def throughput(workdir: Path, sizes: dict[int, int], runs: int, timeout: float,
               only: list[str] | None = None) -> dict[str, Any]:
    """The table: the rows up to 32 KiB on one set of servers, the largest on another (see :data:`BIG`)."""
    small = {size: n for size, n in sizes.items() if size != BIG}
    results = _throughput(workdir / "small", small, runs, timeout, only) if small else {}
    if BIG in sizes:
        big = _throughput(workdir / "big", {BIG: sizes[BIG]}, runs, timeout,
                          [name for name in BIG_VARIANTS if not only or name in only], buffer=BIG_BUFFER)
        for name, found in big.items():
            if name in results:
                results[name]["sizes"].update(found["sizes"])
            else:
                results[name] = found
    return results


def _config(name: str, workdir: Path, index: int, buffer: int | None) -> str:
    config = VARIANTS[name]["config"].replace("{wmem_max}", str(_wmem_max())).replace(
        "{stats}", str(workdir / f"stats-{index}.sock"))
    if buffer is None:
        return config
    return re.sub(r"set_mules_params\(", f"set_mules_params(msg_buffer={buffer}, ", config, count=1)


def _throughput(workdir: Path, sizes: dict[int, int], runs: int, timeout: float,
                only: list[str] | None = None, *, buffer: int | None = None) -> dict[str, Any]:
    """All servers up at once; runs interleaved variant by variant, so drift hits all alike."""
    names = [name for name in VARIANTS if not only or name in only or name == RAW]
    servers: dict[str, Server] = {}
    try:
        for name in names:
            servers[name] = start_server(workdir / re.sub(r"\W+", "_", name), _config(name, workdir, len(servers),
                                                                                     buffer),
                                         COMMON + VARIANTS[name]["app"], prelude=False, workers=1)
        pids = {name: _pids(server) for name, server in servers.items()}  # and a warm-up
        time.sleep(0.5)
        samples: dict[tuple[str, int], list[dict[str, Any]]] = {}
        raw_before: dict[tuple[str, int], list[dict[str, Any]]] = {}  # the raw run just before each run
        for size, n in sizes.items():
            for _ in range(runs):
                for name, server in servers.items():
                    if name == RAW:
                        continue
                    raw = _measure_throughput(servers[RAW], n, size, timeout, pids[RAW])
                    samples.setdefault((RAW, size), []).append(raw)
                    raw_before.setdefault((name, size), []).append(raw)
                    samples.setdefault((name, size), []).append(_measure_throughput(server, n, size, timeout,
                                                                                    pids[name]))
        results: dict[str, Any] = {}
        for name, server in servers.items():
            per_size = {str(size): _row(samples[(name, size)], raw_before.get((name, size), samples[(name, size)]), n)
                        for size, n in sizes.items()}
            cost = server.get(f"/sender?rounds={max(2, runs * 4)}&batch=100", timeout=timeout)[1]
            results[name] = {"sizes": per_size, "sender_us_per_call": cost["us_per_call"],
                             "queue_full_events": server.log().count("MULE MSG QUEUE IS FULL")}
        return results
    finally:
        for server in servers.values():
            server.stop()


def _row(taken: list[dict[str, Any]], raws: list[dict[str, Any]], n: int) -> dict[str, Any]:
    """One row of the table: rates, the median of the ratios to the paired raw runs, and the CPU
    time per call of the sender (the worker) and of the mule, from /proc (utime + stime)."""
    rates = [s["rate"] for s in taken if s["rate"]]
    # Paired with the raw run just before it: the machine's speed drifts within seconds, so ratios
    # of neighbouring runs are what compare.
    paired = [s["rate"] / r["rate"] for s, r in zip(taken, raws, strict=True) if s["rate"] and r["rate"]]
    calls = sum(s["n"] for s in taken)
    cpu = [sum(s["cpu_ticks"][which] for s in taken if s["cpu_ticks"]) * figures.TICK_US / calls for which in (0, 1)]
    return {
        "n": n, "runs": len(taken),
        "median": statistics.median(rates) if len(rates) == len(taken) else None,
        "min": min(rates) if rates else None, "max": max(rates) if rates else None,
        "rates": [s["rate"] for s in taken],
        "x_raw": statistics.median(paired) if len(paired) == len(taken) else None,
        "lost": [s["lost"] for s in taken if s["lost"]],
        "sender_cpu_us": cpu[0], "mule_cpu_us": cpu[1],
    }


def batch(workdir: Path, n: int, runs: int, timeout: float) -> dict[str, Any]:
    """``n`` small calls by ``task.starmap(...)`` against ``n`` raw ``mule_msg`` calls, paired run by run."""
    servers = {RAW: start_server(workdir / "batch_raw", VARIANTS[RAW]["config"], COMMON + VARIANTS[RAW]["app"],
                                 prelude=False, workers=1),
               "starmap": start_server(workdir / "batch_ours", OURS_CONFIG, COMMON + figures.BATCH_APP,
                                       prelude=False, workers=1)}
    try:
        pids = {name: _pids(server) for name, server in servers.items()}
        raws, ours = [], []
        for _ in range(runs):
            raws.append(_measure_throughput(servers[RAW], n, 0, timeout, pids[RAW]))
            ours.append(_measure_throughput(servers["starmap"], n, 0, timeout, pids["starmap"]))
        return {"raw": _row(raws, raws, n), "starmap": _row(ours, raws, n)}
    finally:
        for server in servers.values():
            server.stop()


RQ_TASKS = """
from uwsgiconf_mules.runtime import Farm


@Farm("bench").offload()
def task(i, n, payload):
    pass
"""


def rq_cost(workdir: Path, rounds: int, batch: int, jobs: int) -> dict[str, Any]:
    """A farm routed to RQ against a bare ``Queue.enqueue_call``, and jobs/s with one worker."""
    import redis
    import rq

    from support.redis_server import RedisServer
    from uwsgiconf_mules.declarations import declare
    from uwsgiconf_mules.runtime import instance as _instance

    server = RedisServer(workdir / "redis").start()
    try:
        record = declare(backends={"bench": f"rq://127.0.0.1:{server.port}/0?queue=bench"}).record()
        (workdir / "rq_bench_tasks.py").write_text(RQ_TASKS)
        (workdir / "app.ini").write_text(f"[uwsgi]\nenv = UWSGICONF_MULES={record}\n")
        sys.path.insert(0, str(workdir))
        os.environ["UWSGICONF_MULES"] = record
        _instance.reset()
        import rq_bench_tasks

        offload = rq_bench_tasks.task
        client = redis.Redis(host="127.0.0.1", port=server.port)
        bare = rq.Queue("bare", connection=client, serializer="rq.serializers.JSONSerializer")
        func = offload.__wrapped__
        offload(0, 1, "")  # connects
        bare.enqueue_call(func, args=(0, 1, ""))
        ratios, ours_us, bare_us = [], [], []
        block = 25  # the two alternate every `block` calls, so that the machine's drift hits both alike
        for _ in range(rounds):
            client.flushdb()
            timings = {"ours": 0.0, "bare": 0.0}
            for start in range(0, batch, block):
                for name in (("ours", "bare") if start // block % 2 else ("bare", "ours")):
                    begin = time.perf_counter()
                    if name == "ours":
                        for i in range(start, start + block):
                            offload(i, batch, "")
                    else:
                        for i in range(start, start + block):
                            bare.enqueue_call(func, args=(i, batch, ""))
                    timings[name] += time.perf_counter() - begin
            ratios.append(timings["bare"] / timings["ours"])
            ours_us.append(timings["ours"] / batch * 1e6)
            bare_us.append(timings["bare"] / batch * 1e6)
        end_to_end = {}
        for name, args in (("forking worker", ()), ("SimpleWorker", ("--worker-class", "rq.worker.SimpleWorker"))):
            client.flushdb()
            begin = time.perf_counter()
            for i in range(jobs):
                offload(i, jobs, "")
            subprocess.run([str(Path(sys.executable).parent / "uwsgiconf-mules"), "worker", "--burst", *args,
                            "app.ini"], cwd=workdir, check=True, capture_output=True, timeout=600,
                           stdin=subprocess.DEVNULL)
            seconds = time.perf_counter() - begin
            left = len(rq.Queue("bench", connection=client))
            finished = len(rq.registry.FinishedJobRegistry("bench", connection=client))
            end_to_end[name] = {"jobs": jobs, "seconds": seconds, "jobs_per_s": jobs / seconds, "left": left,
                                "finished": finished}
        client.close()
        return {"rounds": rounds, "batch": batch, "x_bare": statistics.median(ratios), "ratios": ratios,
                "offload_us": statistics.median(ours_us), "enqueue_call_us": statistics.median(bare_us),
                "end_to_end": end_to_end}
    finally:
        del os.environ["UWSGICONF_MULES"]
        server.stop()


def import_cost(repeat: int) -> dict[str, Any]:
    # Both packages import from cached bytecode, as installed packages do: an editable install
    # under PYTHONDONTWRITEBYTECODE=1 would otherwise compile this project's sources at every import.
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}

    def once(module: str) -> float:
        proc = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"],
                              capture_output=True, text=True, check=True, env=env)
        for line in proc.stderr.splitlines():
            parts = [p.strip() for p in line.split("|")]
            if len(parts) == 3 and parts[2] == module:
                return int(parts[1]) / 1000
        raise RuntimeError(f"no import time for {module}")

    once("uwsgiconf_mules.runtime")  # writes the bytecode caches
    once("uwsgiconf.runtime.mules")
    ours, theirs = [], []
    for _ in range(repeat):
        ours.append(once("uwsgiconf_mules.runtime"))
        theirs.append(once("uwsgiconf.runtime.mules"))
    return {"uwsgiconf_mules.runtime_ms": statistics.median(ours),
            "uwsgiconf.runtime.mules_ms": statistics.median(theirs),
            "ratio": statistics.median(ours) / statistics.median(theirs)}


def _fmt_rate(value: float | None) -> str:
    return f"{value:,.0f}" if value else "-"


def rq_report(rq_results: dict[str, Any]) -> list[str]:
    lines = ["", "| farm routed to RQ (redis-server on loopback) | µs/call (median) | x bare (paired) |",
             "|---|---:|---:|",
             f"| bare Queue.enqueue_call | {rq_results['enqueue_call_us']:.0f} | 1.00 |",
             f"| @Farm('bench').offload() routed to RQ | {rq_results['offload_us']:.0f} | {rq_results['x_bare']:.2f} |",
             "", "| end to end, one worker | jobs | s | jobs/s | finished | left |", "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {name} | {row['jobs']} | {row['seconds']:.2f} | {row['jobs_per_s']:.0f} | {row['finished']} | "
              f"{row['left']} |" for name, row in rq_results["end_to_end"].items()]
    return [*lines, "", f"rq offload/enqueue_call = {rq_results['x_bare']:.2f}"]


def report(results: dict[str, Any]) -> str:
    lines = [f"Machine: {results['machine']} (load before the run: {results.get('load', '?')})"]
    thr = results.get("throughput", {})
    if thr:
        lines += ["", "| variant | payload | msgs/s (median) | min | max | x raw (paired) | sender CPU µs/call | "
                  "mule CPU µs/call | lost |", "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for name, variant in thr.items():
            for size, row in variant["sizes"].items():
                ratio = f"{row['x_raw']:.2f}" if row["x_raw"] else "-"
                lost = ", ".join(map(str, row["lost"])) or "0"
                lines.append(f"| {name} | {size} B | {_fmt_rate(row['median'])} | {_fmt_rate(row['min'])} | "
                             f"{_fmt_rate(row['max'])} | {ratio} | {row['sender_cpu_us']:.2f} | "
                             f"{row['mule_cpu_us']:.2f} | {lost} |")
        lines += ["", "| variant | sender cost (µs/call, small) |", "|---|---:|"]
        lines += [f"| {name} | {variant['sender_us_per_call']:.2f} |" for name, variant in thr.items()]
    if "batch" in results:
        lines += ["", "| small calls, one worker to one mule | calls | calls/s (median) | x raw (paired) | "
                  "sender CPU µs/call | mule CPU µs/call |", "|---|---:|---:|---:|---:|---:|"]
        for name, row in results["batch"].items():
            label = "raw mule_msg, one call per message" if name == "raw" else "task.starmap(...), one batch"
            lines.append(f"| {label} | {row['n']} | {_fmt_rate(row['median'])} | {row['x_raw'] or 0:.2f} | "
                         f"{row['sender_cpu_us']:.2f} | {row['mule_cpu_us']:.2f} |")
    if "latency" in results:
        lat = results["latency"]
        lines += ["", f"| one call every {lat['gap_s'] * 1000:g} ms, send to start (µs, median of {lat['runs']} runs "
                  f"of {lat['calls']}) | p50 | p99 | p50 x raw | p99 x raw |", "|---|---:|---:|---:|---:|"]
        for mode in ("idle", "busy"):
            found = lat[mode]
            for name in ("raw", "ours"):
                ratios = (f"{found['p50_x_raw']:.2f} | {found['p99_x_raw']:.2f}" if name == "ours" else "1.00 | 1.00")
                who = "raw mule_msg" if name == "raw" else "Mule(1).offload()"
                beside = f" ({lat['busy_processes']} CPU-bound processes beside)" if mode == "busy" else ""
                lines.append(f"| {who}, {mode}{beside} | {found[name]['p50_us']:.1f} | {found[name]['p99_us']:.1f} | "
                             f"{ratios} |")
    if "rq" in results:
        lines += rq_report(results["rq"])
    if "import" in results:
        imp = results["import"]
        lines += ["", "| import (fresh interpreter, median) | ms |", "|---|---:|",
                  f"| uwsgiconf_mules.runtime | {imp['uwsgiconf_mules.runtime_ms']:.2f} |",
                  f"| uwsgiconf.runtime.mules | {imp['uwsgiconf.runtime.mules_ms']:.2f} |",
                  f"| ratio | {imp['ratio']:.2f} |"]
    if "memory" in results:
        mem = results["memory"]
        lines += ["", "| idle mule (medians) | RSS kB | PSS kB | PSS over a bare mule kB | USS kB | PSS of each run |",
                  "|---|---:|---:|---:|---:|---|"]
        lines += [f"| {name} | {m['rss_kb']} | {m['pss_kb']} | {m['pss_overhead_kb']} | {m['uss_kb']} | "
                  f"{', '.join(map(str, m['runs']))} |" for name, m in mem.items() if name != "after calls"]
        after = mem["after calls"]
        many = after["rss_kb_after_" + str(after["calls"])]
        lines += ["", f"dispatch mule RSS after 1,000 calls of 1 KiB: {after['rss_kb_after_1000']} kB; after "
                  f"{after['calls']:,}: {many} kB ({after['growth_kb']:+d} kB)"]
    if "results_cost" in results:  # a call with a result against a plain offload (benchmarks/results_cost.py)
        lines += ["", *results_cost.report(results["results_cost"])]
    results["summary"] = summary(results)
    return "\n".join([*lines, "", *results["summary"]])


def summary(results: dict[str, Any]) -> list[str]:
    """The last lines of the output, one per figure, for scripts to read."""
    lines = []
    thr = results.get("throughput", {})
    if OURS in thr or COUNTED in thr:
        first = next(iter(thr[RAW]["sizes"]))
        lines += [f"counters on/raw = {_ratio(thr, first, COUNTED)}", f"offload/raw = {_ratio(thr, first)}"]
    rows = [(row["x_raw"], name, size) for name in BIG_VARIANTS[1:] if name in thr
            for size, row in thr[name]["sizes"].items()]
    if rows:
        worst = min(rows, key=lambda item: item[0] or 0.0)
        label = worst[1].replace("uwsgiconf-mules ", "")
        lines.append(f"slowest/raw = {worst[0] or 0:.2f} ({label}, {worst[2]} B)")
    if "latency" in results:
        lines.append(f"latency p50 busy/raw = {results['latency']['busy']['p50_x_raw']:.2f}")
    if "memory" in results:
        mem = results["memory"]
        lines.append(f"mule pss over bare = {mem['uwsgiconf-mules runtime']['pss_overhead_kb']} kB "
                     f"(uwsgiconf {mem['uwsgiconf runtime']['pss_overhead_kb']} kB)")
    if "batch" in results:
        lines.append(f"batch/raw = {results['batch']['starmap']['x_raw'] or 0:.2f}")
    return lines


def _ratio(thr: dict[str, Any], size: str, name: str = OURS) -> str:
    ours = thr[name]["sizes"][size]["x_raw"] if name in thr else None
    return f"{ours:.2f}" if ours else "n/a"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", "--quick", action="store_true", help="tiny counts, one run: checks that every "
                        "figure of the benchmark works (about two minutes)")
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--only", action="append", choices=list(VARIANTS),
                        help="measure only these variants (and raw); repeatable")
    parser.add_argument("--sizes", type=lambda text: [int(x) for x in text.split(",")],
                        help=f"payload sizes to measure, e.g. 0,1024 (default 0,1024,32768,{BIG})")
    parser.add_argument("--skip-extras", action="store_true", help="throughput only: no batch, latency, import, "
                        "memory or RQ")
    parser.add_argument("--skip-table", action="store_true", help="no throughput table: the other figures only")
    parser.add_argument("--rq-only", action="store_true", help="the farm routed to RQ only")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "latest.json")
    args = parser.parse_args()
    if args.smoke:
        sizes, runs, repeat, timeout = {0: 300, 1024: 100, 32768: 20, BIG: 10}, 1, 2, 30.0
        rq_rounds, rq_batch, rq_jobs = 2, 50, 50
        batch_n, batch_runs, latency_n, latency_runs, memory_calls = 300, 1, 50, 1, 3000
    else:
        sizes, runs, repeat, timeout = {0: 200_000, 1024: 100_000, 32768: 20_000, BIG: 5_000}, args.runs, 15, 120.0
        rq_rounds, rq_batch, rq_jobs = 21, 500, 1000
        batch_n, batch_runs, latency_n, latency_runs, memory_calls = 10_000, 15, 1000, 5, 1_000_000
    if args.sizes:
        sizes = {size: n for size, n in sizes.items() if size in args.sizes}
    extras = not args.skip_extras and not args.rq_only
    with tempfile.TemporaryDirectory(prefix="uwsgiconf-mules-bench-") as tmp:
        workdir = Path(tmp)
        results: dict[str, Any] = {
            "machine": f"{platform.machine()}, {platform.python_implementation()} {platform.python_version()}, "
                       f"{os.cpu_count()} cores, {platform.platform()}",
            "load": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
            "smoke": args.smoke,
        }
        if not args.rq_only and not args.skip_table:
            results["throughput"] = throughput(workdir, sizes, runs, timeout, args.only)
        if extras:
            results["batch"] = batch(workdir, batch_n, batch_runs, timeout)
            results["latency"] = figures.latency(workdir, latency_n, latency_runs)
        if not args.skip_extras:
            results["rq"] = rq_cost(workdir, rq_rounds, rq_batch, rq_jobs)
        if extras:
            results["import"] = import_cost(repeat)
            results["memory"] = figures.memory(workdir, memory_calls, 1 if args.smoke else 3)
            results["results_cost"] = results_cost.summary(workdir / "results-cost", *(
                (500, 1) if args.smoke else (20_000, 7)))
    text = report(results)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
