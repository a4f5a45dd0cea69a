"""On a real uWSGI: a graceful reload starts the mule counters at 0 again (uWSGI keeps metrics in the
master's memory), and ``top`` says since when they count: the reload's time, not the first start's."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from support.harness import MULE_READY, WORKER_READY, Server, _answers, declaration
from uwsgiconf_mules.cli.top import read_stats, snapshot
from uwsgiconf_mules.declarations import parse_record

APP = '''
@mule_offload()
def work(i):
    record("work", i=i)


@route("/work")
def run_work(query):
    return work(int(query))
'''


def test_top_counts_from_the_last_reload(uwsgi_server: Callable[..., Server], tmp_path: Path) -> None:
    stats, fifo = tmp_path / "stats.sock", tmp_path / "master.fifo"
    server = uwsgi_server(declaration(f"mules=1, stats={str(stats)!r}"), APP, extra_args=["--master-fifo", str(fifo)])
    record = next(line for line in (server.directory / "app.ini").read_text().splitlines()
                  if "UWSGICONF_MULES=" in line).partition("UWSGICONF_MULES=")[2]
    declarations = parse_record(record)
    assert server.get("/work?1") == (200, True)
    server.wait_lines("work", 1)

    def view() -> dict[str, object]:
        return snapshot(declarations, read_stats(str(stats)))

    first = server.wait_for(lambda: (v := view())["mules"][0]["started"] == 1 and v, what="the call counted")
    started = first["counting_since"]
    assert isinstance(started, float) and started <= time.time()
    time.sleep(1.1)  # last_spawn counts whole seconds
    reloaded_at = time.time()
    fifo.write_bytes(b"r")
    server.wait_for(lambda: server.ready_count(MULE_READY) >= 2 and server.ready_count(WORKER_READY) >= 4
                    and _answers(server.port), 30, "the reload")
    after = server.wait_for(lambda: (v := view())["counting_since"] != started and v, what="counters renewed")
    assert after["mules"][0]["started"] == 0
    assert int(reloaded_at) <= after["counting_since"] <= time.time()
