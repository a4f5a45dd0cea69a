"""``uwsgiconf-mules top``: what every mule is doing, read from the instance's stats server.

The counters and gauges are uWSGI metrics (see :mod:`uwsgiconf_mules.runtime.metrics`), read from the
stats server the builders declared (``set_mules_params(stats=...)``); the per-task counters and
the key of the running call come from the status files the dispatch mules write in the spool.
Configuration-side only: no worker or mule imports this module.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from typing import Any

import click
from uwsgiconf.exceptions import ConfigurationError

from .._text import escape
from ..declarations import MULE_COUNTERS, MULE_GAUGES, Declarations
from ..errors import MulesError
from ..protocol import spool as _spool
from .common import arg_conf, cli, declared, errors, fail

STATS_TIMEOUT = 5.0
"""Seconds to wait for the stats server's answer."""
STALE = 5.0
"""A status file older than this many seconds says nothing about what is running now."""


class StatsError(MulesError):
    """The stats server could not be read.

    :param message: What went wrong.
    """


def read_stats(address: str, timeout: float = STATS_TIMEOUT) -> dict[str, Any]:
    """The JSON the uWSGI stats server at ``address`` sends (it writes it and closes).

    :param address: ``host:port`` or a unix socket path.
    :param timeout: Seconds to wait.
    :raises StatsError: naming the address, when it cannot be read or is not JSON.
    """
    try:
        if address.startswith("/"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            target: Any = address
        else:
            host, _, port = address.rpartition(":")
            family = socket.AF_INET6 if host.startswith("[") else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            target = (host.strip("[]"), int(port))
        with sock:
            sock.settimeout(timeout)
            sock.connect(target)
            chunks = []
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
    except OSError as exc:
        raise StatsError(f"cannot read the uWSGI stats server at {address} ({exc.strerror or exc}): is the "
                         "instance running with this configuration?") from None
    data = b"".join(chunks)
    try:
        return dict(json.loads(data[data.find(b"{"):]))
    except ValueError:
        raise StatsError(f"the stats server at {address} did not answer JSON ({data[:60]!r})") from None


def counting_since(stats: dict[str, Any]) -> float | None:
    """When the counters of the mules started at 0: the last start or graceful reload of the
    instance (uWSGI keeps metrics in the master's memory, which a reload renews), that is the first
    spawn of the workers not respawned since (``respawn_count`` 1); None when every worker was respawned.

    :param stats: What the stats server sent.
    """
    first = [worker["last_spawn"] for worker in stats.get("workers") or ()
             if isinstance(worker, dict) and worker.get("respawn_count") == 1 and worker.get("last_spawn")]
    return float(min(first)) if first else None


def snapshot(declarations: Declarations, stats: dict[str, Any]) -> dict[str, Any]:
    """Every mule and farm with its counters, from the stats server's JSON and the status files.

    :param declarations: The instance's declarations (with ``stats``).
    :param stats: What the stats server sent.
    """
    metrics = {name: value.get("value", 0) for name, value in (stats.get("metrics") or {}).items()
               if isinstance(value, dict)}
    now = time.time()
    mules = []
    dispatchers = set(declarations.dispatchers)  # once: linear in the mules and farms
    spool = _spool.Spool(declarations.spool_dir) if declarations.spool_dir is not None else None
    farms_of: dict[int, list[str]] = {}
    for farm in declarations.farms:
        for farm_mule in farm.mules:
            farms_of.setdefault(farm_mule, []).append(farm.name)
    for mule_id in range(1, declarations.mule_count + 1):
        dispatch = mule_id in dispatchers
        names = MULE_COUNTERS + MULE_GAUGES if dispatch else ("queued",)
        mule: dict[str, Any] = {"id": mule_id, "kind": "dispatch" if dispatch else "programmed",
                                "farms": farms_of.get(mule_id, [])}
        mule.update({name: metrics.get(f"mule.{mule_id}.{name}") for name in names})
        status = spool.read_status(mule_id) if dispatch and spool is not None else {}
        fresh = bool(status) and now - float(status.get("time", 0)) < STALE and status.get("pid") == mule.get("pid")
        mule["running"] = status.get("running") if fresh else None
        mule["tasks"] = status.get("tasks", {})
        mules.append(mule)
    farms = [{"name": farm.name, "mules": list(farm.mules), "queued": metrics.get(f"farm.{farm.name}.queued"),
              "queue_bytes": metrics.get(f"farm.{farm.name}.queue_bytes")} for farm in declarations.farms]
    return {"stats": declarations.stats, "uwsgi": {"version": stats.get("version"), "pid": stats.get("pid")},
            "time": now, "counting_since": counting_since(stats), "mules": mules, "farms": farms,
            "spool_problem": spool_problem(declarations), "schedules": schedules(declarations, spool),
            "results": results_store(declarations, stats)}


def results_store(declarations: Declarations, stats: dict[str, Any]) -> dict[str, Any] | None:
    """The results store's fill and evictions, from the stats server's ``caches`` (uWSGI counts a
    store found full, ``full``: with ``purge_lru``, one evicted result each, logged by nobody), or
    None when no store is declared or the stats do not show it.

    :param declarations: The instance's declarations.
    :param stats: What the stats server sent.
    """
    spec = declarations.results
    if spec is None:
        return None
    for cache in stats.get("caches") or ():
        if isinstance(cache, dict) and cache.get("name") == spec.name:
            return {"name": spec.name, "items": cache.get("items"), "max_items": spec.items,
                    "evicted": cache.get("full"), "hits": cache.get("hits"), "misses": cache.get("miss")}
    return None


def schedules(declarations: Declarations, spool: _spool.Spool | None) -> list[dict[str, Any]]:
    """Each schedule with its counters, last run, outcome and next run, from its state file.

    :param declarations: The instance's declarations.
    :param spool: Its spool, or None.
    """
    if not declarations.schedules or spool is None:
        return []
    from ..mule.schedule_state import read_state, state_path

    found = []
    for spec in declarations.schedules:
        state = read_state(state_path(spool, spec))
        found.append({"name": spec.name, "func": spec.func, "target": spec.target,
                      **{key: state.get(key, 0) for key in ("runs", "failed", "skipped", "missed")},
                      "last_start": state.get("last_start"), "outcome": state.get("outcome"),
                      "next": state["next"] / 1e9 if isinstance(state.get("next"), int) else None})
    return found


def _clock(when: Any) -> str:
    return "-" if not isinstance(when, (int, float)) else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when))


def spool_problem(declarations: Declarations) -> str | None:
    """Why the spool of dispatch mules cannot keep calls (senders get ``DeliveryError`` meanwhile), or None.

    :param declarations: The instance's declarations.
    """
    if declarations.spool_dir is None or not declarations.dispatchers:
        return None
    from ..runtime import spool_watch as _spool_watch

    return _spool.problem(declarations.spool_dir, *_spool_watch.spool_room(declarations))


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)


def _bytes(value: Any) -> str:
    return "?" if value == -1 else _cell(value)  # -1: a queue not measured yet


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    rows = [[escape(text) for text in row] for row in rows]  # task keys, farm names: what the mules wrote
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return ["  ".join(text.ljust(width) for text, width in zip(row, widths, strict=True)).rstrip()
            for row in [header, *rows]]


def render(view: dict[str, Any]) -> str:
    """The text of one screen of ``top``.

    :param view: A :func:`snapshot`.
    """
    uwsgi = view["uwsgi"]
    since = view.get("counting_since")
    counting = (f"since {time.strftime('%H:%M:%S', time.localtime(since))}" if since is not None else
                "since the last start or reload")
    lines = [escape(f"uWSGI {uwsgi['version']} (master pid {uwsgi['pid']}), stats {view['stats']}, "
                    f"{time.strftime('%H:%M:%S', time.localtime(view['time']))}; mule counters {counting} (a reload "
                    "starts them at 0; TASK counters go on)"), ""]
    if view.get("spool_problem"):
        lines[1:1] = [escape(f"SPOOL UNUSABLE: {view['spool_problem']}: offloaded calls to dispatch mules are refused")]
    rows = []
    for mule in view["mules"]:
        running = "-"
        if mule["running"]:
            seconds = (mule.get("running_ms") or 0) / 1000
            running = f"{mule['running']} ({seconds:.1f} s)"
        elif mule["kind"] == "dispatch":
            running = "idle"
        run_ms = mule.get("run_ms")
        rows.append([str(mule["id"]), _cell(mule.get("pid")), mule["kind"], ",".join(mule["farms"]) or "-",
                     _cell(mule.get("queued")), _cell(mule.get("started")), _cell(mule.get("succeeded")),
                     _cell(mule.get("failed")), _cell(mule.get("spooled")), _cell(mule.get("dead")),
                     "-" if run_ms is None else f"{run_ms / 1000:.1f}", _bytes(mule.get("queue_bytes")), running])
    lines += _table(["MULE", "PID", "KIND", "FARMS", "QUEUED", "STARTED", "OK", "FAILED", "SPOOLED", "DEAD",
                     "RUN s", "QUEUE B", "RUNNING"], rows)
    if view["farms"]:
        lines.append("")
        lines += _table(["FARM", "MULES", "QUEUED", "QUEUE B"],
                        [[farm["name"], ",".join(map(str, farm["mules"])), _cell(farm["queued"]),
                          _bytes(farm["queue_bytes"])] for farm in view["farms"]])
    store = view.get("results")
    if store is not None:
        lines += ["", escape(f"RESULTS STORE {store['name']}: {_cell(store['items'])} of {store['max_items']} items, "
                             f"{_cell(store['evicted'])} evicted since the last start or reload"
                             + (" (full: the least recently used go first; declare more items)" if store["evicted"]
                                else ""))]
    tasks = [[key, str(mule["id"]), str(counts.get("started")), str(counts.get("succeeded")),
              str(counts.get("failed")), f"{counts.get('run_ms', 0) / 1000:.1f}"]
             for mule in view["mules"] for key, counts in sorted(mule["tasks"].items())]
    if tasks:
        lines.append("")
        lines += _table(["TASK", "MULE", "STARTED", "OK", "FAILED", "RUN s"], tasks)
    if view.get("schedules"):
        lines.append("")
        lines += _table(["SCHEDULE", "TARGET", "RUNS", "FAILED", "SKIPPED", "MISSED", "LAST RUN", "OUTCOME", "NEXT"],
                        [[item["name"], item["target"], *(str(item[key]) for key in ("runs", "failed", "skipped",
                                                                                      "missed")),
                          _clock(item["last_start"]), item["outcome"] or "-", _clock(item["next"])]
                         for item in view["schedules"]])
    return "\n".join(lines)


@cli.command()
@click.option("--once", is_flag=True, help="Print one view and exit.")
@click.option("--json", "as_json", is_flag=True, help="With --once: the view as JSON, for scripts.")
@click.option("--interval", type=click.FloatRange(min=0.1), default=1.0, show_default=True,
              help="Seconds between two views.")
@arg_conf
def top(once: bool, as_json: bool, interval: float, conf: str) -> None:
    """What every mule of CONF (a uwsgicfg.py, default, or a compiled config) is doing, live: pid,
    kind, farms, the running call and for how long, counters, queue depth, per-task counters.

    Read from the stats server declared with set_mules_params(stats=...), refreshed every second
    until Ctrl-C. One red line and exit 1 when there is none or it cannot be read.
    """
    with errors():
        with_stats = [declarations for _, declarations in declared(conf) if declarations.stats]
        if not with_stats:
            raise ConfigurationError(f"{conf} declares no stats server: add stats='127.0.0.1:9191' (or a unix "
                                     "socket path) to set_mules_params, compile, and restart uWSGI")
    declarations = with_stats[0]
    try:
        while True:
            try:
                view = snapshot(declarations, read_stats(str(declarations.stats)))
            except StatsError as exc:
                fail(str(exc))
                sys.exit(1)
            if once:
                click.echo(json.dumps(view, indent=2) if as_json else render(view))
                return
            click.echo("\x1b[H\x1b[2J" + render(view), color=True)  # home, clear: a redraw
            time.sleep(interval)
    except KeyboardInterrupt:
        return
