"""How long one request waits on a full queue: a burst of calls to a slow mule, from one request,
on a real uWSGI (one worker, one dispatch mule, the default send_timeout of 5 s). Prints, per
burst size, how long the request took, how many calls were queued, and how it ended; then how
long a ``nowait`` offload takes to raise on a full queue.

    python benchmarks/budget.py [TASK_SECONDS]      # default 0.03: calls of 30 ms
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support.harness import BURST_APP, declaration, start_server


def main() -> None:
    task = float(sys.argv[1]) if len(sys.argv) > 1 else 0.03
    os.environ["TEST_TASK_SECONDS"] = str(task)  # read by the app in uWSGI
    with tempfile.TemporaryDirectory() as tmp:
        for size in (300, 1000, 2000):  # a fresh server each, with an empty queue
            server = start_server(Path(tmp) / f"burst{size}", declaration("mules=1"), BURST_APP, workers=1)
            try:
                body = server.get(f"/burst?{size}", timeout=600)[1]
            finally:
                server.stop()
            print(f"burst of {size} calls of {task * 1000:g} ms: request took {body['waited']:.2f} s, "
                  f"{body['queued']} queued, ended: {body.get('error', 'all queued')}", flush=True)
        server = start_server(Path(tmp) / "nowait", declaration("mules=1"), BURST_APP, workers=1)
        try:
            body = server.get("/nowait?200", timeout=600)[1]
        finally:
            server.stop()
        if "times" in body:  # a version without nowait fails there
            times = body["times"]
            print(f"nowait on a full queue: raises after {statistics.median(times) * 1e6:.1f} µs (median of "
                  f"{len(times)}; max {max(times) * 1e6:.1f} µs)")


if __name__ == "__main__":
    main()
