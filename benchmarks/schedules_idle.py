"""What 100 schedules cost an idle instance, on a real uWSGI (docs: schedules).

Four instances in turn, each with 2 workers and 2 dispatch mules in one farm: no schedule, 100
cron schedules not due in the window (``0 3 * * *`` under 100 names), 100 schedules every 60 s
(aligned to the epoch: all tick at :00, once at most in the window) and 100 every 10 s (two
ticks each in the window, each a call of a task that does nothing). After a settling second, the
CPU time of every process of the instance (utime + stime of the master, workers and mules, from
/proc) over ``--seconds`` (default 20), as % of one core.

    python benchmarks/schedules_idle.py [--seconds 20]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from support.harness import start_server  # noqa: E402

APP = '''
@mule_offload("f")
def nothing(i):
    pass
'''


def config(schedules: str) -> str:
    return ("from uwsgiconf_mules import Section\nsection = Section()\n"
            "section.workers.set_mules_params(farms=[section.workers.mule_farm('f', 2)])\n"
            f"{schedules}\nuwsgi_configuration = section.as_configuration()\n")


VARIANTS = {
    "no schedule": "",
    "100 cron, not due": "for i in range(100):\n"
                         "    section.workers.schedule('app:nothing', cron='0 3 * * *', farm='f', name=f's{i}', "
                         "args=[i])",
    "100 every 60 s": "for i in range(100):\n"
                      "    section.workers.schedule('app:nothing', every=60, farm='f', name=f's{i}', args=[i])",
    "100 every 10 s": "for i in range(100):\n"
                      "    section.workers.schedule('app:nothing', every=10, farm='f', name=f's{i}', args=[i])",
}


def cpu(pids: list[int]) -> float:
    """Seconds of CPU time used so far by ``pids`` (those still there)."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def processes(master: int) -> list[int]:
    found = [master]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            except OSError:
                continue
            if ppid == master:
                found.append(int(entry.name))
    return found


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=20.0)
    options = parser.parse_args()
    for name, schedules in VARIANTS.items():
        with tempfile.TemporaryDirectory() as directory:
            server = start_server(Path(directory), config(schedules), APP)
            try:
                time.sleep(1.0)
                pids = processes(server.proc.pid)
                before, began = cpu(pids), time.monotonic()
                time.sleep(options.seconds)
                used, elapsed = cpu(pids) - before, time.monotonic() - began
                ticks = sum(len([spec for spec in spool.glob("*.json") if '"runs"' in spec.read_text()])
                            for spool in Path("/var/tmp").glob(f"uwsgiconf-mules-{os.getuid()}/*/schedules"))
                print(f"{name}: {100 * used / elapsed:.2f} % of a core over {elapsed:.1f} s "
                      f"({len(pids)} processes; schedules that ran so far, all runs: {ticks})")
            finally:
                server.stop()


if __name__ == "__main__":
    main()
