"""``uwsgiconf-mules spool list|replay|purge``: the spool of CONF, through the spool's own methods
(:class:`uwsgiconf_mules.protocol.spool.Spool`)."""

from __future__ import annotations

import os
import re
import sys
from collections import Counter

import click
from uwsgiconf.utils import ConfModule

from .._project import configurations
from ..protocol import spool as _spool
from ..protocol.spool import delayed as _delayed
from .common import cli, echo, errors, fail, spools

_DJANGO_RUN = "uwsgiconf_mules.django:_run"


def _key(payload: bytes) -> str:
    """The task a kept call is listed under: its key, or for a call of the Django backend's runner
    the Django task's own path (its first argument; see ``runtime.policy.task_name``)."""
    if b"\x00" not in payload:
        return "?"
    key = payload[1:payload.find(b"\x00")].decode("utf-8", "replace")
    if key != _DJANGO_RUN:
        return key
    from ..protocol import envelope as _protocol
    from ..runtime.policy import task_name

    try:
        _, args, _ = _protocol.decode(_protocol.restored(payload))
    except Exception:  # a call that cannot be read here (its arguments need the project's code): by its key
        return key
    return task_name(key, tuple(args))


@cli.command()
@click.argument("action", type=click.Choice(["list", "replay", "purge"]))
@click.option("--all", "everything", is_flag=True,
              help="purge: queued calls, delayed calls and calls left by dead mules too, not only dead letters.")
@click.option("--stale", is_flag=True,
              help="purge: remove the default spools (under /var/tmp, one per directory a config was compiled in) "
                   "that hold no call, no running mule uses and nothing changed in for 10 minutes; CONF is not read.")
@click.argument("conf", type=click.Path(dir_okay=False), default=ConfModule.default_name)
def spool(action: str, everything: bool, stale: bool, conf: str) -> None:
    """List, replay or purge the spool of CONF (a uwsgicfg.py, default, or a compiled config).

    list: calls kept for the next mules, calls left by mules that died, dead letters (failed and
    interrupted calls among them), by task and reason, and delayed calls by target. replay: dead
    letters back to the queue (the dispatch mules run them when they next start: it says how, for
    the config at hand); untrusted ones never. purge: dead letters (with --all, everything; with
    --stale, the default spools nobody uses). One red line per problem, exit 1 on errors.
    """
    if stale:
        if action != "purge":
            raise click.UsageError("--stale goes with purge")
        _purge_stale()
        return
    if not os.path.isfile(conf):
        raise click.BadParameter(f"File {conf!r} does not exist.", param_hint="'CONF'")
    with errors():
        found = spools(conf)
        hint = _reload_hint(conf) if action == "replay" else ""
    problems: list[str] = []
    for what, kept in found:
        echo(f"{what}: spool {kept.path}")
        if not os.path.isdir(kept.path):
            echo("  empty (nothing was kept yet)")
            continue
        for line in _spool_action(kept, action, everything, problems):
            echo(f"  {line}")
        if hint:
            echo(f"  to start them now: {hint}")
    for problem in problems:
        fail(problem)
    sys.exit(1 if problems else 0)


_RELOAD_KEYS = ("touch-mules-reload", "master-fifo", "touch-reload", "safe-pidfile", "safe-pidfile2", "pidfile",
                "pidfile2")


_OPTION_LINE = re.compile(r'^\s*([a-z0-9-]+)\s*[=:]\s*"?(.*?)"?\s*$')


def _reload_hint(conf: str) -> str:
    """How to restart the dispatch mules of CONF, from the options it declares: a mules reload
    file, the master fifo, a reload file, the pid file, else the master's pid."""
    found: dict[str, str] = {}
    if conf.endswith(".py"):
        for configuration in configurations(conf):
            for section in configuration.sections:
                for key, values in section._opts.items():
                    if str(key) in _RELOAD_KEYS:
                        found.setdefault(str(key), str(values[0] if isinstance(values, list) else values))
    else:
        with open(conf, encoding="utf-8") as handle:
            for line in handle:
                match = _OPTION_LINE.match(line)
                if match and match[1] in _RELOAD_KEYS:
                    found.setdefault(match[1], match[2])
    if "touch-mules-reload" in found:
        return f"touch {found['touch-mules-reload']} (reloads the mules only)"
    if "master-fifo" in found:
        return f"echo r > {found['master-fifo']} (a graceful reload of the instance)"
    if "touch-reload" in found:
        return f"touch {found['touch-reload']} (a graceful reload of the instance)"
    pidfile = next((found[key] for key in _RELOAD_KEYS[3:] if key in found), None)
    if pidfile is not None:
        return f"kill -HUP $(cat {pidfile}) (a graceful reload of the instance)"
    return ("kill -HUP <pid of the uWSGI master> (a graceful reload of the instance); for a file to touch instead, "
            "declare set_mules_params(touch_reload=...)")


def _purge_stale() -> None:
    """``spool purge --stale``: remove the stale default spools of this user (see ``_spool.stale``)."""
    from ..declarations import default_spool_dir

    root = os.path.dirname(default_spool_dir())
    names, removed, kept, problems = _spool.purge_stale(root)
    echo(f"default spools in {root}: {names}")
    click.echo(f"  removed {removed} stale (no call, no running mule, unchanged for "
               f"{_spool.STALE_AFTER / 60:g} min)")
    click.echo(f"  kept {len(kept)} (calls kept in them, a running mule, or a recent change)")
    for path in kept:
        echo(f"    {path}")
    for problem in problems:
        fail(problem)
    sys.exit(1 if problems else 0)


def _spool_action(kept: _spool.Spool, action: str, everything: bool, problems: list[str]) -> list[str]:
    """What ``action`` did to the spool ``kept``, as the lines to print (problems go to ``problems``)."""
    if action == "list":
        lines = []
        for part, title in (("queue", "queued for the next mules"), ("claimed", "being run, or left by dead mules"),
                            ("dead", "dead letters")):
            entries = kept.entries(part, problems)
            lines.append(f"{title}: {len(entries)}")
            counts = Counter((_key(payload), _spool.grouped(note) if part == "dead" else "")
                             for _, note, payload in entries)
            lines.extend(f"  {n} x {key}{f' ({note})' if note else ''}" for (key, note), n in sorted(counts.items()))
        pending = _delayed.count(kept)  # delayed calls and retries, waiting for their time
        if any(pending.values()):
            lines.append(f"delayed (calls and retries waiting for their time): {sum(pending.values())}")
            lines.extend(f"  {n} x for {target}" for target, n in sorted(pending.items()) if n)
        strangers = kept.strangers()
        if strangers:
            lines.append(f"ignored in queue/, never run (not this user's regular files): {len(strangers)}")
            lines.extend(f"  {name!r}: {why}" for name, why in strangers)
        return lines
    if action == "replay":
        replayed, untrusted = kept.replay(problems)
        return [f"replayed {replayed} dead letter(s): they run when the dispatch mules next start (a delayed call "
                "still ahead of its time, back among the delayed calls of its target, when due)",
                f"kept {untrusted} untrusted message(s): never replayed (purge them)"]
    parts = ("queue", "claimed", "dead") if everything else ("dead",)
    removed = kept.purge(parts, problems)
    delayed = _delayed.files(kept) if everything else []
    for path in delayed:
        try:
            os.unlink(path)
        except OSError as exc:
            problems.append(f"{path}: cannot purge: {exc}")
            continue
        removed += 1
    return [f"purged {removed} file(s) from {', '.join(parts + (('delayed',) if delayed else ()))}"]
