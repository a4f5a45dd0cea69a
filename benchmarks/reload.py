"""How long a graceful reload (SIGHUP) takes with a full queue: from the signal until the new
mule has spawned and the app answers again. One dispatch mule, 250 calls of 20 ms queued; the
queued calls are kept in the spool and run by the new mule. Prints the runs and the median.

    python benchmarks/reload.py [RUNS]
"""

from __future__ import annotations

import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support.harness import QUEUED_WORK_APP, _answers, declaration, start_server


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(runs):
            config = declaration(f"mules=1, spool_dir='{tmp}/spool{run}'")
            server = start_server(Path(tmp) / f"run{run}", config, QUEUED_WORK_APP)
            try:
                assert server.get("/fill?250")[1] == 250
                time.sleep(0.2)  # the mule runs the first calls; about 240 are queued
                started = time.monotonic()
                os.kill(server.proc.pid, signal.SIGHUP)
                server.wait_for(lambda s=server: s.log().count("spawned uWSGI mule 1 ") >= 2, 60, "the new mule")
                server.wait_for(lambda s=server: _answers(s.port), 60, "the app")
                times.append(time.monotonic() - started)
                server.wait_for(lambda s=server: len(s.lines("work")) >= 250, 60, "every call run")
            finally:
                server.stop()
    print(f"graceful reload with a full queue (s): {', '.join(f'{t:.2f}' for t in times)}; "
          f"median {statistics.median(times):.2f}")


if __name__ == "__main__":
    main()
