"""What the counters cost per call, in nanoseconds, outside uWSGI (``make bench`` measures the
throughput on a real uWSGI, with the counters off and on).

* sender: ``_metrics.counting`` around a C function of two arguments (standing in for
  ``uwsgi.mule_msg``), against the bare function, once the flushing thread runs;
* mule, counters off: the clock read the fast path takes for the failure line's duration;
* mule, counters on: what the counted fast path does more than the plain one (a cell lookup,
  two counts, two clock reads).

Each figure is the best of 15 runs of a million calls, minus the same loop doing nothing.

    python benchmarks/counters.py
"""

from __future__ import annotations

import json
import sys
import time
import timeit
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from uwsgiconf_mules import _metrics

NUMBER = 1_000_000
REPEAT = 15


def best(statement: str, namespace: dict[str, Any]) -> float:
    """Nanoseconds per run of ``statement``, best of :data:`REPEAT`."""
    return min(timeit.repeat(statement, globals=namespace, number=NUMBER, repeat=REPEAT)) / NUMBER * 1e9


def main() -> int:
    _metrics._started = True  # the flushing thread runs: what every call after a worker's first sees
    stub = {}.get  # a C function of two arguments, as uwsgi.mule_msg
    head = b"x" * 40
    namespace: dict[str, Any] = {
        "send": stub, "counted": _metrics.counting(stub, 1), "message": b"x" * 60, "clock": time.perf_counter,
        "cells": {head: [0, 0, 0.0, 0.0]}, "head": head,
    }
    nothing = best("pass", namespace)
    plain = best("send(message, 1)", namespace)
    results = {
        "sender, counters on (ns/call)": best("counted(message, 1)", namespace) - plain,
        "mule, counters off: clock read (ns/call)": best("began = clock()", namespace) - nothing,
        "mule, counters on: counted path (ns/call)": best(
            "cell = cells.get(head)\ncell[0] += 1\ncell[3] = began = clock()\ncell[3] = 0.0\n"
            "cell[2] += clock() - began", namespace) - nothing,
    }
    for name, value in results.items():
        print(f"{name}: {value:.0f}")
    print(json.dumps({"python": sys.version.split()[0], **{k: round(v, 1) for k, v in results.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
