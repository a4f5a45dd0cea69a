"""Where one call's latency goes, ours against raw ``mule_msg``, paired call by call.

One uWSGI instance, one worker, two mules: mule 1 a dispatch mule (``Mule(1).offload()``), mule 2
uWSGI's own C loop with a ``mule_msg_hook`` (``--mules 1`` beside the builders' declaration). The
worker sends one call every 2 ms, alternately to each, so that both are measured in the same
seconds (on a shared machine, the speed of separate runs drifts more than the difference).
``uwsgi.mule_msg`` is wrapped in the worker to stamp the moment it is called; each call is split:

* **sender**: from just before the call (``time.monotonic_ns()``) to the ``mule_msg`` call (the
  envelope, against ``struct.pack``);
* **mule side**: from the ``mule_msg`` call to the start of the function in the mule (the send,
  the wake-up, the scheduling, the mule's path to the function);
* **mule CPU**: the CPU time of each mule's main thread per call (``schedstat``), with
  ``--trace`` the tracing's share included;
* with ``--trace`` (``perf``, root): **after the wait**, from the exit of the syscall the mule
  waits in (``poll``: ours; ``epoll_wait``: uWSGI's loop) to the function's first statement (a
  ``getppid``, a marker): the mule's own path, which the loop's code decides.

Prints p50 per run and the medians; ``x raw`` is the median of the per-run ratios.

    python benchmarks/wake_path.py [--calls 600] [--runs 6] [--trace] [--busy]
"""

from __future__ import annotations

import argparse
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

from support.harness import Server, declaration, start_server  # noqa: E402

APP = '''
import json, os, struct, time
import uwsgi
from uwsgiconf_mules.protocol.envelope import PROBE
from uwsgiconf_mules.runtime import Mule

RESULTS = os.environ["TEST_RESULTS"]
seen = {"raw": [], "ours": []}


def arrived(kind, i, n):
    os.getppid()  # the marker of --trace
    seen[kind].append((i, time.monotonic_ns()))
    if i >= n - 2:
        with open(os.path.join(RESULTS, kind), "a") as handle:
            handle.write(json.dumps(seen[kind]) + "\\n")
        seen[kind].clear()


_send, stamp = uwsgi.mule_msg, [0]


def stamped(message, dest, _send=_send, _ns=time.monotonic_ns, _stamp=stamp):
    _stamp[0] = _ns()
    return _send(message, dest)


uwsgi.mule_msg = stamped  # before the first offload: the route resolves it then


def hook(message):
    if not message.startswith(PROBE):  # never one, unless the dispatch mule probed the shared queue
        arrived("raw", *struct.unpack_from("!II", message))


uwsgi.mule_msg_hook = hook


@Mule(1).offload()
def task(i, n, payload):
    arrived("ours", i, n)


def application(environ, start_response):
    n = int(environ["QUERY_STRING"] or 0)
    payload = b"x" * PAYLOAD
    sent = []
    for i in range(n):
        before = time.monotonic_ns()
        if i % 2:
            task(i, n, payload)
        else:
            uwsgi.mule_msg(struct.pack("!II", i, n) + payload, 2)
        sent.append((before, stamp[0]))
        time.sleep(0.002)
    with open(os.path.join(RESULTS, "sent"), "a") as handle:
        handle.write(json.dumps(sent) + "\\n")
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
'''

EVENTS = ("syscalls:sys_exit_poll", "syscalls:sys_exit_epoll_wait", "syscalls:sys_enter_getppid")


def _p50(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def _run(server: Server, n: int) -> dict[str, float]:
    counts = [len(server.lines(name)) for name in ("ours", "raw", "sent")]
    server.get(f"/?{n}", timeout=60 + n * 0.01)
    server.wait_for(lambda: all(len(server.lines(name)) > count
                                for name, count in zip(("ours", "raw", "sent"), counts, strict=True)), 30, "a run")
    sent = server.lines("sent")[-1]
    out = {}
    for kind in ("raw", "ours"):
        rows = server.lines(kind)[-1]
        out[f"{kind} sender"] = _p50([(sent[i][1] - sent[i][0]) / 1000 for i, _ in rows])
        out[f"{kind} mule side"] = _p50([(now - sent[i][1]) / 1000 for i, now in rows])
        out[f"{kind} total"] = _p50([(now - sent[i][0]) / 1000 for i, now in rows])
    return out


def _cpu_ns(pid: int) -> int:
    """CPU time of the main thread of ``pid`` (``/proc/<pid>/task/<pid>/schedstat``), in ns."""
    return int(Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()[0])


def _after_wait(data: str, pids: dict[int, int]) -> dict[str, float]:
    """p50 from a wait syscall's exit to the marker, per mule, from ``perf script``."""
    out = subprocess.run(["perf", "script", "-i", data, "-F", "tid,time,event", "--ns"],
                         capture_output=True, text=True, check=True).stdout
    exits: dict[int, float] = {}
    taken: dict[int, list[float]] = {pids[1]: [], pids[2]: []}
    for line in out.splitlines():
        found = re.match(r"\s*(\d+)\s+([\d.]+):\s+(\S+):", line)
        if not found:
            continue
        tid, when, event = int(found[1]), float(found[2]), found[3]
        if "exit" in event:
            exits[tid] = when
        elif tid in exits and tid in taken:
            taken[tid].append((when - exits.pop(tid)) * 1e6)
    return {"ours after the wait": _p50(taken[pids[1]]), "raw after the wait": _p50(taken[pids[2]])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=600, help="calls per run, half to each mule")
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--trace", action="store_true", help="also the mule's path after its wait (perf, root)")
    parser.add_argument("--busy", action="store_true", help="two CPU-bound processes beside uWSGI")
    parser.add_argument("--payload", type=int, default=0,
                        help="bytes of payload a call carries (uWSGI's own loop reads 64 KiB at most)")
    args = parser.parse_args()
    print("load", " ".join(Path("/proc/loadavg").read_text().split()[:3]))
    with tempfile.TemporaryDirectory(prefix="uwsgiconf-mules-wake-") as tmp:
        server = start_server(Path(tmp) / "wake", declaration("mules=1"),
                              APP.replace("PAYLOAD", str(args.payload)), prelude=False, workers=1,
                              extra_args=["--mules", "1"], expect_mules=2)
        hogs: list[subprocess.Popen[bytes]] = []
        try:
            _run(server, 200)  # the dispatch mule finds its queues
            pids = server.mule_pids()
            if args.busy:
                hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
                time.sleep(0.2)
            rows: list[dict[str, Any]] = []
            for _ in range(args.runs):
                perf = None
                if args.trace:
                    data = str(Path(tmp) / "perf.data")
                    perf = subprocess.Popen(["perf", "record", "-q", "-o", data, "-p", f"{pids[1]},{pids[2]}",
                                             *(arg for event in EVENTS for arg in ("-e", event))],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    time.sleep(0.4)
                cpu = {mule: _cpu_ns(pid) for mule, pid in pids.items()}
                row: dict[str, Any] = _run(server, args.calls)
                calls = args.calls // 2
                row["ours mule CPU"] = (_cpu_ns(pids[1]) - cpu[1]) / calls / 1000
                row["raw mule CPU"] = (_cpu_ns(pids[2]) - cpu[2]) / calls / 1000
                if perf is not None:
                    perf.send_signal(2)
                    perf.wait()
                    row.update(_after_wait(data, pids))
                rows.append(row)
                print("  " + ", ".join(f"{key} {value:.2f}" for key, value in row.items()))
        finally:
            for hog in hogs:
                hog.kill()
                hog.wait()
            server.stop()
    print(f"{args.calls // 2} calls of {args.payload} B to each mule x {args.runs} runs, p50 µs (median of runs), "
          "ours x raw:")
    for part in ("sender", "mule side", "total", "after the wait", "mule CPU"):
        if f"ours {part}" in rows[0]:
            ours = statistics.median(row[f"ours {part}"] for row in rows)
            raw = statistics.median(row[f"raw {part}"] for row in rows)
            ratio = statistics.median(row[f"ours {part}"] / row[f"raw {part}"] for row in rows)
            print(f"  {part:15} ours {ours:7.2f}  raw {raw:7.2f}  x raw {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
