"""A sender that waits for room, and the other requests of its worker, per worker mode, on a real
uWSGI: one worker, one dispatch mule, a request that offloads 1,500 calls of 2 ms (the queue
fills, the sender waits for room) while a second client requests ``/ping`` every 50 ms on the same
worker. Prints, per mode, the calls run (of those offloaded, and how many twice) and the pings
answered while the sender waited (count, p50, max); then the same for ``await f.aoffload(...)``
(an event loop in a request of ``--threads 8``) with the longest time that loop was held (also
with the mule paused 1 s first, so that the queue stays full that long); then, for ``--gevent 50``
and ``--threads 8``, a SIGHUP to the master while the sender waits: calls the sender was told were
queued, run once, lost.

    python benchmarks/loop_engines.py [CALLS [MODE ...]]      # default: 1500 calls, every mode
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support.harness import APP_PRELUDE, declaration, start_server
from support.pings import MODES, PING_APP, missing, ping_while, ran, uwsgi_for


def run(tmp: Path, name: str, args: tuple[str, ...], path: str, calls: int, *, pause: float = 0) -> None:
    server = start_server(tmp / f"{name}{path}{pause}".replace(" ", "_").replace("/", "_"), declaration("mules=1"),
                          PING_APP, workers=1, extra_args=args, uwsgi=uwsgi_for(name))
    try:
        pinged = ping_while(server, f"{path}?0:{calls}" + (f":{pause:g}" if pause else ""))
        server.wait_for(lambda: len(server.lines("ran")) >= pinged.body["queued"], 120, "the calls run")
        time.sleep(0.3)  # a call run twice would show up now
        numbers = ran(server)
    finally:
        server.stop()
    queued, body = pinged.body["queued"], pinged.body
    runs = len(set(numbers))
    held = f", loop held at most {body['loop_held'] * 1000:.1f} ms" if "loop_held" in body else ""
    ended = f", {body['error'][:60]}" if "error" in body else ""
    what = f"{' `aoffload`' if path == '/aoffload' else ''}{f', the mule paused {pause:g} s first' if pause else ''}"
    print(f"| `{name}`{what} | {runs}/{queued} run, {len(numbers) - runs} "
          f"twice, {queued - runs} lost | {pinged.describe()}{held} | sender {body['waited']:.2f} s{ended} |",
          flush=True)


def reload_during_wait(tmp: Path, name: str, calls: int) -> None:
    """SIGHUP to the master while the sender waits for room (calls queued then are kept in the spool
    across the reload): how many the sender was told were queued, and how many ran once."""
    import signal
    import threading

    directory = tmp / f"reload{name}".replace(" ", "_")
    server = start_server(directory, declaration(f"mules=1, spool_dir={str(directory / 'spool')!r}, reload_mercy=20"),
                          PING_APP, workers=1, extra_args=MODES[name])
    try:
        reply: list[Any] = []
        sender = threading.Thread(target=lambda: reply.append(server.get(f"/offload?0:{calls}", timeout=120)[1]))
        sender.start()
        time.sleep(0.5)  # the sender waits for room by now
        os.kill(server.proc.pid, signal.SIGHUP)
        sender.join(120)
        body = reply[0]
        server.wait_for(lambda: len(server.lines("ran")) >= body["queued"], 120, "the calls run")
        time.sleep(0.3)
        numbers = ran(server)
    finally:
        server.stop()
    runs = len(set(numbers))
    ended = f", then {body['error'][:70]}" if "error" in body else ""
    print(f"| `{name}`, SIGHUP while the sender waits | {body['queued']} told queued{ended}; {runs} run, "
          f"{len(numbers) - runs} twice, {len(set(range(body['queued'])) - set(numbers))} lost | | |", flush=True)


def main() -> None:
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 1500
    modes = sys.argv[2:] or list(MODES)
    os.environ.setdefault("TEST_TASK_SECONDS", "0.002")
    print("| worker mode | calls | `/ping` while the sender waits | |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in modes:
            args = MODES[name]
            if missing(name):
                print(f"| `{name}` | not run: {missing(name)} | | |", flush=True)
                continue
            run(Path(tmp), name, args, "/offload", calls)
        if not sys.argv[2:]:
            run(Path(tmp), "--threads 8", MODES["--threads 8"], "/aoffload", calls)
            run(Path(tmp), "--threads 8", MODES["--threads 8"], "/aoffload", calls, pause=1)
            for name in ("--gevent 50", "--threads 8"):
                reload_during_wait(Path(tmp), name, calls)


if __name__ == "__main__":
    APP_PRELUDE  # noqa: B018 - the app the servers run starts with it
    main()
