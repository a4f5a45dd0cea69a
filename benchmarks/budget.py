"""How long one request waits on a full queue: a burst of calls to a slow mule, from one request,
on a real uWSGI (one worker, one dispatch mule, the default send_timeout of 5 s). Prints, per
burst size, how long the request took, how many calls were queued, and how it ended; then how
long a ``nowait`` offload takes to raise on a full queue.

    python benchmarks/budget.py [TASK_SECONDS]      # default 0.03: calls of 30 ms
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from harness import declaration, start_server

APP = '''
import time


@mule_offload()
def slow(i):
    time.sleep(float(os.environ.get("TASK_SECONDS", "0.03")))


@route("/burst")
def burst(query):
    queued = 0
    started = time.monotonic()
    try:
        for i in range(int(query)):
            slow(i)
            queued += 1
    except Exception as exc:
        return {"queued": queued, "ended": type(exc).__name__, "seconds": time.monotonic() - started}
    return {"queued": queued, "ended": "all queued", "seconds": time.monotonic() - started}


@route("/nowait")
def nowait(query):
    if not hasattr(slow, "nowait"):  # a version without it
        return []
    try:
        while True:
            slow.nowait(-1)
    except Exception:
        pass
    times = []
    for _ in range(int(query)):
        started = time.perf_counter()
        try:
            slow.nowait(-1)
        except Exception:
            times.append(time.perf_counter() - started)
    return times
'''


def main() -> None:
    task = sys.argv[1] if len(sys.argv) > 1 else "0.03"
    import os

    os.environ["TASK_SECONDS"] = task
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(Path(tmp) / "budget", declaration("mules=1"), APP, workers=1)
        try:
            for size in (300, 1000, 2000):
                body = server.get(f"/burst?{size}", timeout=600)[1]
                print(f"burst of {size} calls of {float(task) * 1000:g} ms: request took {body['seconds']:.2f} s, "
                      f"{body['queued']} queued, ended: {body['ended']}", flush=True)
                server.stop()
                server = start_server(Path(tmp) / f"budget{size}", declaration("mules=1"), APP, workers=1)
            times = server.get("/nowait?200", timeout=600)[1]
            if times:
                print(f"nowait on a full queue: raises after {statistics.median(times) * 1e6:.1f} µs (median of "
                      f"{len(times)}; max {max(times) * 1e6:.1f} µs)")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
