"""What the counters cost per call, in nanoseconds, outside uWSGI (``make bench`` measures the
throughput on a real uWSGI, with the counters off and on).

* sender: what an offloaded function does more per call with the counters on (a count in a list,
  inline, once its process's flushing thread runs), after a C function of two arguments standing
  in for ``uwsgi.mule_msg``; and the same through ``_metrics.counting``, the wrapper used for
  functions decorated where the declarations were not known yet;
* mule, counters off: the clock read the fast path takes for the failure line's duration;
* mule, counters on: what the counted fast path does more than the plain one (one clock read
  for both, then a count and noting the running call; at the first call of a streak of calls of
  one task, adding up the previous streak's time too).

Each figure is the best of 15 runs of a million calls, minus the same loop doing nothing.

Then, on a real uWSGI (one server with the counters off, one with them on, measured in turns):
how long a dispatch mule takes per call to run a queue of :data:`DRAIN` small calls queued while
it was held, without a sender competing for the CPU. The mule's own cost, in µs per call, median
of the rounds.

    python benchmarks/counters.py [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any

from uwsgiconf_mules.runtime import metrics as _metrics

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from support.harness import Server, declaration, start_server  # noqa: E402

NUMBER = 1_000_000
REPEAT = 15
DRAIN = 4000
"""Calls queued behind a held call, then run in a row (a 4 MiB queue holds about 5,400)."""

DRAIN_APP = '''
import os
import time

from uwsgiconf_mules.runtime import mule_offload

RESULTS = os.environ["TEST_RESULTS"]


@mule_offload()
def hold(path):
    while not os.path.exists(path):
        time.sleep(0.001)
    os.unlink(path)
    state["start"] = time.perf_counter_ns()


state = {}


@mule_offload()
def task(i, n):
    if i == n - 1:
        with open(os.path.join(RESULTS, "drained"), "a") as handle:
            handle.write(str((time.perf_counter_ns() - state["start"]) / n / 1000) + "\\n")


def application(environ, start_response):
    start_response("200 OK", [])
    if environ["PATH_INFO"] == "/ping":
        return [b"pong"]
    n = int(environ["QUERY_STRING"])
    hold(os.path.join(RESULTS, "go"))
    for i in range(n):
        task(i, n)
    return [b"queued"]
'''


def best(statement: str, namespace: dict[str, Any], setup: str = "pass") -> float:
    """Nanoseconds per run of ``statement`` (after ``setup``, in the same function), best of :data:`REPEAT`."""
    runs = timeit.repeat(statement, setup, globals=namespace, number=NUMBER, repeat=REPEAT)
    return min(runs) / NUMBER * 1e9


def drain(server: Server) -> float:
    """µs per call for the mule to run :data:`DRAIN` queued calls."""
    before = len(server.lines("drained"))
    status, body = server.get(f"/drain?{DRAIN}")
    assert status == 200, body
    (server.results / "go").write_text("")
    server.wait_for(lambda: len(server.lines("drained")) > before, 60, "the drain")
    return float(server.lines("drained")[-1])


def mule_cost(rounds: int) -> dict[str, Any]:
    """The drain, counters off and on, measured in turns."""
    configs = {"off": "mules=1, msg_buffer=4194304", "on": "mules=1, msg_buffer=4194304, stats='{stats}'"}
    with tempfile.TemporaryDirectory(prefix="uwsgiconf-mules-counters-") as tmp:
        servers: dict[str, Server] = {}
        try:
            for name, params in configs.items():
                servers[name] = start_server(Path(tmp) / name, declaration(params.format(stats=f"{tmp}/stats.sock")),
                                             DRAIN_APP, prelude=False, workers=1)
            for server in servers.values():
                drain(server)  # warm up: the mule finds its queue
            samples: dict[str, list[float]] = {name: [] for name in servers}
            for _ in range(rounds):
                for name, server in servers.items():
                    samples[name].append(drain(server))
        finally:
            for server in servers.values():
                server.stop()
    results: dict[str, Any] = {name: {"median_us": statistics.median(values), "min_us": min(values), "runs": values}
                               for name, values in samples.items()}
    # Paired round by round: the machine's speed drifts between rounds, both alike.
    results["on/off"] = statistics.median(on / off for on, off in zip(samples["on"], samples["off"], strict=True))
    return results


COUNTED = """now = clock()
cell[0] += 1
if cell is not last:
    running[0] = None
    last[2] += now - began
    running[2] = began = now
    last = running[0] = cell
running[1] = now"""
"""What the counted fast path of ``_dispatch.mule_loop`` does more than the plain one (see there)."""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=41)
    args = parser.parse_args()
    _metrics._started = True  # the flushing thread runs: what every call after a worker's first sees
    stub = {}.get  # a C function of two arguments, as uwsgi.mule_msg
    namespace: dict[str, Any] = {
        "send": stub, "counted": _metrics.counting(stub, 1), "message": b"x" * 60, "clock": time.perf_counter,
        "cell": [0, 0, 0.0], "previous": [0, 0, 0.0], "running": [None, 0.0, 0.0],
    }
    nothing = best("pass", namespace)
    plain = best("send(message, 1)", namespace)
    results = {
        "sender, counters on (ns/call)": best("if send(message, 1) is None:\n    cell[0] += 1", namespace) - plain,
        "sender, counters on, wrapped (ns/call)": best("counted(message, 1)", namespace) - plain,
        "mule, counters off: clock read (ns/call)": best("began = clock()", namespace) - nothing,
        # The mule loop's counted fast path: a call of the task of the streak running, and the
        # first call of a streak (the task changed, or the queue had run empty).
        "mule, counters on: counted path (ns/call)": best(COUNTED, namespace, "last, began = cell, 0.0")
        - best("began = clock()", namespace),
        "mule, counters on: counted path, a streak's first call (ns/call)": best(
            COUNTED + "\nlast = previous", namespace, "last, began = previous, 0.0")
        - best("began = clock()\nlast = previous", namespace, "last = previous"),
    }
    for name, value in results.items():
        print(f"{name}: {value:.0f}")
    mule = mule_cost(args.rounds)
    for name in ("off", "on"):
        print(f"mule on a real uWSGI, counters {name}: {mule[name]['median_us']:.2f} µs/call (median), "
              f"{mule[name]['min_us']:.2f} (min)")
    print(f"mule on a real uWSGI, counters on/off (paired, median): {mule['on/off']:.3f}")
    print(json.dumps({"python": sys.version.split()[0], **{k: round(v, 1) for k, v in results.items()},
                      "mule_us_per_call": {name: round(mule[name]["median_us"], 3) for name in ("off", "on")},
                      "mule_on_off": round(mule["on/off"], 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
