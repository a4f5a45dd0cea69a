"""The figures of ``benchmarks/run.py`` beyond the throughput table: batches, latency (idle and
busy), and a mule's memory (idle, and after many calls). Every figure is paired with raw
``uwsgi.mule_msg`` measured right before it, on the same machine, in the same run.

* **batch**: N small calls queued by ``task.starmap(...)`` (one worker, one dispatch mule), from the
  first send until the mule ran call N, against N raw ``mule_msg`` calls (one per message, to a
  counting hook); ``x raw`` is the median of the paired ratios of calls per second.
* **latency**: single calls ``GAP`` seconds apart, the time from just before the send (the
  sender's ``time.monotonic_ns()``, carried in the call) to the start of the function in the mule;
  p50 and p99 per run, idle and with ``BUSY`` CPU-bound processes running beside uWSGI.
* **memory**: PSS and RSS of an idle mule (``/proc/<pid>/smaps_rollup``): a bare mule (``mule =``
  a script that only waits with ``uwsgi.mule_get_msg()``), a programmed mule that waits with
  ``uwsgiconf.runtime.mules`` (imported by the app too, in the master), and a dispatch mule; then
  the dispatch mule's RSS after 1,000 calls and after many.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from support.harness import Server, declaration, start_server

GAP = 0.002
"""Seconds between two calls of the latency runs."""
BUSY = 2
"""CPU-bound processes beside uWSGI in the busy latency runs (the machine has 2 cores)."""

LATENCY_COMMON = '''
import json
import os
import struct
import time

RESULTS = os.environ["TEST_RESULTS"]
seen = []


def arrived(i, n, sent):
    seen.append(time.monotonic_ns() - sent)
    if i == n - 1:
        with open(os.path.join(RESULTS, "latency"), "a") as handle:
            handle.write(json.dumps(sorted(seen)) + "\\n")
        seen.clear()


def application(environ, start_response):
    n = int(environ["QUERY_STRING"] or 0)
    for i in range(n):
        send_one(i, n)
        time.sleep(GAP)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
'''.replace("GAP", repr(GAP))

LATENCY_APPS = {
    "raw": '''
import uwsgi

def hook(message):
    i, n, sent = struct.unpack("!IIQ", message)
    arrived(i, n, sent)

uwsgi.mule_msg_hook = hook

def send_one(i, n):
    uwsgi.mule_msg(struct.pack("!IIQ", i, n, time.monotonic_ns()), 1)
''',
    "ours": '''
from uwsgiconf_mules.runtime import Mule

@Mule(1).offload()
def task(i, n, sent):
    arrived(i, n, sent)

def send_one(i, n):
    task(i, n, time.monotonic_ns())
''',
}

PLAIN = """
from uwsgiconf.config import Section
section = Section()
section.workers.set_mules_params(mules=1)
uwsgi_configuration = section.as_configuration()
"""

BATCH_APP = '''
from uwsgiconf_mules.runtime import Mule

@Mule(1).offload()
def task(i, n, payload):
    finish(i, n)

def send_one(i, n, payload):
    task(i, n, payload)

def run(n, size):
    payload = b"x" * size
    start = time.monotonic_ns()
    task.starmap((i, n, payload) for i in range(n))
    return {"start": start, "sent": time.monotonic_ns(), "pid": os.getpid()}
'''


def _percentile(values: list[int], share: float) -> float:
    return values[min(len(values) - 1, int(share * len(values)))] / 1000


def _latency_run(server: Server, n: int) -> dict[str, float]:
    before = len(server.lines("latency"))
    server.get(f"/?{n}", timeout=60 + n * GAP * 4)
    server.wait_for(lambda: len(server.lines("latency")) > before, 30, "the latency run")
    seen = server.lines("latency")[-1]
    return {"p50_us": _percentile(seen, 0.5), "p99_us": _percentile(seen, 0.99)}


def _busy(count: int) -> list[subprocess.Popen[bytes]]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def latency(workdir: Path, n: int, runs: int) -> dict[str, Any]:
    """p50 and p99 of one-call latency, raw and ours, idle and busy; ratios are medians of pairs."""
    servers = {name: start_server(workdir / f"latency_{name}", PLAIN if name == "raw" else declaration("mules=1"),
                                  LATENCY_COMMON + app, prelude=False, workers=1)
               for name, app in LATENCY_APPS.items()}
    results: dict[str, Any] = {}
    try:
        for server in servers.values():
            _latency_run(server, min(n, 100))  # warm up
        for mode in ("idle", "busy"):
            hogs = _busy(BUSY) if mode == "busy" else []
            try:
                time.sleep(0.2 if hogs else 0)
                taken: dict[str, list[dict[str, float]]] = {"raw": [], "ours": []}
                for _ in range(runs):
                    for name, server in servers.items():
                        taken[name].append(_latency_run(server, n))
            finally:
                for hog in hogs:
                    hog.kill()
                    hog.wait()
            results[mode] = {
                name: {key: statistics.median(run[key] for run in rows) for key in ("p50_us", "p99_us")}
                for name, rows in taken.items()}
            for key in ("p50_us", "p99_us"):
                results[mode][f"{key[:3]}_x_raw"] = statistics.median(
                    ours[key] / raw[key] for ours, raw in zip(taken["ours"], taken["raw"], strict=True))
        results["calls"], results["runs"], results["gap_s"], results["busy_processes"] = n, runs, GAP, BUSY
        return results
    finally:
        for server in servers.values():
            server.stop()


def memory_use(pid: int) -> dict[str, int]:
    """RSS and PSS of process ``pid``, in kB (``/proc/<pid>/smaps_rollup``)."""
    values = {"uss_kb": 0}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("Rss", "Pss"):
            values[key.lower() + "_kb"] = int(rest.split()[0])
        elif key in ("Private_Clean", "Private_Dirty"):  # USS: what only this process maps
            values["uss_kb"] += int(rest.split()[0])
    return values


MEMORY_APP = '''
import os
import time

from uwsgiconf_mules.runtime import Mule

RESULTS = os.environ["TEST_RESULTS"]


@Mule(1).offload()
def task(i, n, payload):
    if i == n - 1:
        with open(os.path.join(RESULTS, "done"), "a") as handle:
            handle.write("{}\\n")


def application(environ, start_response):
    n = int(environ["QUERY_STRING"] or 0)
    payload = b"x" * 1024
    for i in range(n):
        task(i, n, payload)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
'''


BARE_MULE = """
import uwsgi

while True:
    uwsgi.mule_get_msg()
"""
"""A bare programmed mule: it waits for messages, and imports nothing (a script that ends would be respawned)."""

UWSGICONF_MULE = """
from uwsgiconf.runtime.mules import Mule

while True:
    Mule.get_message()
"""
"""A programmed mule of uwsgiconf 2.4: it waits for messages with its runtime."""


def memory(workdir: Path, calls: int, repeat: int = 3) -> dict[str, Any]:
    """Idle mules' memory (a bare mule: ``mule =`` a script that only waits for messages; uwsgiconf's:
    a programmed mule reading messages with ``uwsgiconf.runtime.mules``; a dispatch mule), medians of
    ``repeat`` servers each (a mule's PSS moves with what the master and the worker write), and the
    dispatch mule's RSS after 1,000 calls of 1 KiB and after ``calls``."""
    app = "def application(environ, start_response):\n    start_response('200 OK', [])\n    return [b'pong']\n"
    programmed = PLAIN.replace("mules=1", "mules=['mule_script.py']")
    cases = {  # (config, app, the mule's script)
        "bare mule": (programmed, app, BARE_MULE),
        "uwsgiconf runtime": (programmed, "import uwsgiconf.runtime.mules\n" + app, UWSGICONF_MULE),
        "uwsgiconf-mules runtime": (declaration("mules=1"), MEMORY_APP, None),
    }
    taken: dict[str, list[dict[str, int]]] = {name: [] for name in cases}
    results: dict[str, Any] = {}
    for run in range(repeat):  # the cases in turns
        for name, (config, code, script) in cases.items():
            server = start_server(workdir / f"mem_{run}_{name.replace(' ', '_').replace('-', '_')}", config, code,
                                  prelude=False, workers=1, modules=None if script is None else {"mule_script": script})
            try:
                time.sleep(1.0)
                pid = server.mule_pids()[1]
                taken[name].append(memory_use(pid))
                if name == "uwsgiconf-mules runtime" and not run:
                    results["after calls"] = _after_calls(server, pid, calls)
            finally:
                server.stop()
    for name, found in taken.items():
        results[name] = {key: int(statistics.median(values[key] for values in found)) for key in found[0]}
        results[name]["runs"] = [values["pss_kb"] for values in found]
    bare = results["bare mule"]
    for name in cases:
        results[name]["pss_overhead_kb"] = results[name]["pss_kb"] - bare["pss_kb"]
        results[name]["rss_overhead_kb"] = results[name]["rss_kb"] - bare["rss_kb"]
    return results


def _after_calls(server: Server, pid: int, calls: int) -> dict[str, int]:
    found = {}
    done = 0
    for total in (1000, calls):
        left = total - done
        while left:
            step = min(left, 100_000)
            before = len(server.lines("done"))
            server.get(f"/?{step}", timeout=600)
            server.wait_for(lambda before=before: len(server.lines("done")) > before, 120, "the calls")
            left -= step
        done = total
        found[f"rss_kb_after_{total}"] = memory_use(pid)["rss_kb"]
    found["calls"] = calls
    found["growth_kb"] = found[f"rss_kb_after_{calls}"] - found["rss_kb_after_1000"]
    return found


def cpu_ticks(pid: int) -> int:
    """utime + stime of ``pid``, in clock ticks (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])


TICK_US = 1e6 / os.sysconf("SC_CLK_TCK")
"""Microseconds per clock tick."""
