"""What delayed calls and the record of the running call cost, on a real uWSGI (docs: lifecycle).

1. Sending: a worker times, in batches the mule drains between (no wait on a full queue), plain
   offloads against delayed sends (``f.later(60)(...)``) of the same small call; ratio of medians.
2. The record of the running call: the one store per call the mule loop makes (``record[0] = size``
   into the shared mapping of ``mules/<id>.run``), timed with ``timeit`` against the same loop
   without it (best of rounds), in ns per call; it makes no system call.
3. Scale (``--pending N``, default 100,000): N delayed calls written into a spool before uWSGI starts
   (due 10 to 20 minutes later) and 200 probes due 3 to 13 s after the start; reported: how long the
   mule took to read what is pending (its own log line), the lateness of the probes (p50, p99, max),
   and the CPU the idle mule used over 20 s (utime + stime from /proc).

    python benchmarks/lifecycle.py [--pending N] [--skip-scale]
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import re
import statistics
import sys
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from support.harness import declaration, start_server  # noqa: E402

APP = '''
import time

from uwsgiconf_mules.runtime import mule_offload


@mule_offload()
def small(i):
    pass


@mule_offload()
def stamp(tag, due):
    record("stamp", tag=tag, due=due, at=time.time())


@route("/send")
def send(query):
    kind, count = query.split(",")
    send = small if kind == "plain" else small.later(60)
    started = time.perf_counter()
    for i in range(int(count)):
        send(i)
    return (time.perf_counter() - started) / int(count)
'''


def sending(rounds: int, batch: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(Path(tmp) / "send", declaration(f"mules=1, spool_dir='{tmp}/spool'"), APP)
        try:
            times: dict[str, list[float]] = {"plain": [], "later": []}
            for _ in range(rounds):
                for kind, measured in times.items():
                    _, seconds = server.get(f"/send?{kind},{batch}")
                    measured.append(float(seconds))
                    time.sleep(0.05 if kind == "plain" else batch * 0.004)  # the mule keeps each delayed call: fsync
            plain, later = statistics.median(times["plain"]), statistics.median(times["later"])
            return {"batch": batch, "rounds": rounds, "plain_us": plain * 1e6, "later_us": later * 1e6,
                    "ratio": later / plain}
        finally:
            server.stop()


def record_cost(number: int = 2_000_000, rounds: int = 9) -> dict[str, float]:
    with tempfile.TemporaryFile() as handle:
        handle.truncate(mmap.ALLOCATIONGRANULARITY)
        head = mmap.mmap(handle.fileno(), mmap.ALLOCATIONGRANULARITY)
        record = memoryview(head).cast("Q")
        size = 123
        with_store = min(timeit.repeat("record[0] = size", globals=locals(), number=number, repeat=rounds))
        without = min(timeit.repeat("size", globals=locals(), number=number, repeat=rounds))
        record.release()
        head.close()
    return {"ns_per_call": (with_store - without) / number * 1e9}


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def scale(pending: int) -> dict[str, Any]:
    from uwsgiconf_mules.protocol import envelope, spool as _spool
    from uwsgiconf_mules.protocol.spool import delayed
    from uwsgiconf_mules.protocol.spool.checks import private_dir

    with tempfile.TemporaryDirectory() as tmp:
        kept = _spool.Spool(f"{tmp}/spool")
        kept.create()
        encode = envelope.encoder("app:stamp")
        now = time.time()
        written = time.perf_counter()
        where = delayed.folder("mule:1")
        private_dir(kept.part(delayed.PART))
        private_dir(kept.part(where))
        for i in range(pending):
            due = now + 600 + 600 * i / pending
            kept.write(where, envelope.stored(encode((f"p{i}", due), {})), delayed.note("mule:1", 1), durable=False,
                       name=delayed.name(int(due * 1e9)))
        written = time.perf_counter() - written
        probes = 200
        for i in range(probes):
            due = now + 3 + 10 * i / probes + (time.time() - now)
            delayed.write(kept, "mule:1", envelope.stored(encode((f"probe{i}", due), {})), int(due * 1e9))
        server = start_server(Path(tmp) / "scale", declaration(f"mules=1, spool_dir='{tmp}/spool'"), APP)
        try:
            server.wait_lines("stamp", probes, timeout=60)
            pid = server.mule_pids()[1]
            time.sleep(3.0)  # the last rescan after the last claim
            cpu, wall = _cpu(pid), time.monotonic()
            time.sleep(20.0)
            idle = (_cpu(pid) - cpu) / (time.monotonic() - wall)
            late = sorted(run["at"] - run["due"] for run in server.lines("stamp"))
            read = re.search(r"(\d+) delayed call\(s\) pending in the spool .* \(read in ([\d.]+) s\)", server.log())
            return {"pending": pending, "written_s": written, "probes": probes,
                    "read_at_start_s": float(read[2]) if read else None, "pending_seen": int(read[1]) if read else None,
                    "late_p50_ms": late[len(late) // 2] * 1000, "late_p99_ms": late[int(len(late) * 0.99)] * 1000,
                    "late_max_ms": late[-1] * 1000, "early": sum(value < 0 for value in late),
                    "idle_cpu_percent": idle * 100}
        finally:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pending", type=int, default=100_000)
    parser.add_argument("--skip-scale", action="store_true")
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    results: dict[str, Any] = {"record": record_cost(), "sending": sending(args.rounds, 100)}
    print(f"record of the running call: {results['record']['ns_per_call']:.1f} ns per call (no system call)")
    send = results["sending"]
    print(f"sending: plain offload {send['plain_us']:.2f} us, delayed {send['later_us']:.2f} us: "
          f"{send['ratio']:.2f} x a plain offload")
    if not args.skip_scale:
        results["scale"] = found = scale(args.pending)
        print(f"{found['pending']} pending: read at start in {found['read_at_start_s']} s; probes late p50 "
              f"{found['late_p50_ms']:.1f} ms, p99 {found['late_p99_ms']:.1f} ms, max {found['late_max_ms']:.1f} ms, "
              f"{found['early']} early; idle mule {found['idle_cpu_percent']:.2f} % of a core")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
