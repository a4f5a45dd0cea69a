"""``uwsgiconf-mules``: compile uwsgiconf modules to ini or uWSGI YAML, and check declarations.

Errors follow uwsgiconf's command: a configuration error is one red line on stderr and exit
code 1; a usage error (unknown option, missing file) exits 2.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version
from typing import Any

import click
from uwsgiconf.exceptions import ConfigurationError
from uwsgiconf.utils import ConfModule

from .._project import configurations
from .._text import escape
from ..config.formats import FORMATS, YAML_DIALECTS, collect, render
from ..config.uwsgi_build import find_uwsgi, inspect_uwsgi, resolve_dialect
from ..declarations import RECORD_ENV, Declarations, master_fds, parse_record, program_problem
from ..declarations.backends import ENGINES
from ..protocol import delayed as _delayed, spool as _spool
from ..protocol.limits import PROGRAMMED_READ_LIMIT, socket_message_limit
from . import top as _top

__all__ = ["main", "summary", "uwsgi_summary"]

SMALL_BUFFER = 8192


def _fail(message: str) -> None:
    click.secho(escape(message), err=True, fg="red")


def _echo(line: str) -> None:
    """Print one line of the command's own output, escaped (see :mod:`uwsgiconf_mules._text`): it may quote
    what the command read (a spool file, a config, a uWSGI binary's answer)."""
    click.echo(escape(line))


@contextmanager
def _errors() -> Iterator[None]:
    """One red line and exit 1 for a configuration error or a module that does not load."""
    try:
        yield
    except ConfigurationError as exc:
        _fail(f"{exc}")
        sys.exit(1)
    except Exception as exc:
        _fail(f"cannot load the configuration module: {type(exc).__name__}: {exc}")
        sys.exit(1)


arg_conf = click.argument("conf", type=click.Path(exists=True, dir_okay=False), default=ConfModule.default_name)
opt_uwsgi = click.option("--uwsgi", "uwsgi", metavar="BINARY", default=None,
                         help="The uWSGI to ask how it was built (default: the uwsgi next to this Python, else "
                              "on PATH).")


@click.group()
@click.version_option(version=version("uwsgiconf-mules"), prog_name="uwsgiconf-mules")
def cli() -> None:
    """uwsgiconf-mules: uWSGI mules and mule farms, declared once and used safely."""


@cli.command("compile")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="ini", show_default=True,
              help="ini (the same text as `uwsgiconf compile`) or yaml (uWSGI's own dialect).")
@click.option("--yaml-dialect", type=click.Choice(("auto", *YAML_DIALECTS)), default="auto", show_default=True,
              help="For yaml, the YAML parser of the uWSGI that will read it: embedded (pip's uWSGI) or libyaml "
                   "(Debian's, Ubuntu's); auto asks the uWSGI of this environment (`uwsgi --cflags`).")
@opt_uwsgi
@arg_conf
def compile_(fmt: str, yaml_dialect: str, uwsgi: str | None, conf: str) -> None:
    """Compile the configurations of CONF (default uwsgicfg.py) and print them.

    Every section of every configuration is rendered. Nothing is printed when any value cannot
    be written in the chosen format.
    """
    with _errors():
        loaded = configurations(conf)
        if fmt == "yaml":
            yaml_dialect = resolve_dialect(yaml_dialect, uwsgi)
        outputs = []
        for configuration in loaded:
            if configuration.sections:
                configuration.sections[0].print_stamp()  # as `uwsgiconf compile` does
            outputs.append(render(collect(configuration.sections), fmt, yaml_dialect))
    for output in outputs:
        click.echo(output, color=True)  # as written: click would strip escape codes when not printing to a terminal


@cli.command()
@opt_uwsgi
@arg_conf
def check(uwsgi: str | None, conf: str) -> None:
    """Load CONF (default uwsgicfg.py), validate its mules and farms, and print a summary, then which
    uWSGI is here (version, build) and whether it is supported.

    Exits 0 when valid; otherwise prints one red line per problem and exits 1.
    """
    with _errors():
        loaded = configurations(conf)
    problems: list[str] = []
    for configuration in loaded:
        for section in configuration.sections:
            lines, section_problems = summary(section)
            _echo(f"section '{section.name}' of configuration '{configuration.alias}':")
            for line in lines:
                _echo(f"  {line}")
            problems.extend(section_problems)
    for line in uwsgi_summary(uwsgi):
        _echo(line)
    for problem in problems:
        _fail(problem)
    sys.exit(1 if problems else 0)


def _declared(conf: str) -> list[tuple[str, Declarations]]:
    """(what, declarations) for every section of CONF that declares mules or routed farms: CONF is a
    configuration module, or a compiled config (its declarations records are read)."""
    return [(what, declarations) for what, declarations, _ in _declared_env(conf)]


_ENV_LINE = re.compile(r'^\s*i?env\s*[=:]\s*"?([A-Za-z_][A-Za-z0-9_]*)=(.*?)"?\s*$')


def _declared_env(conf: str) -> list[tuple[str, Declarations, dict[str, str]]]:
    """:func:`_declared`, with the environment variables each section sets (its ``env`` options)."""
    found = []
    if conf.endswith(".py"):
        for configuration in configurations(conf):
            for section in configuration.sections:
                declarations = getattr(section, "mules_declarations", None)
                if declarations is not None:
                    found.append((f"section '{section.name}'", declarations, _section_env(section)))
        return found
    with open(conf, encoding="utf-8") as handle:
        text = handle.read()
    env: dict[str, str] = {}
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("[") or (line[:1].isalpha() and line.rstrip().endswith(":")):  # a section begins
            env = {}
        _, marker, record = line.partition(f"{RECORD_ENV}=")
        if marker:
            records.append((f"line {number}", parse_record(record.strip().strip('"')), env))
            continue
        match = _ENV_LINE.match(line)
        if match:
            env[match[1]] = match[2]
    return records


def _section_env(section: Any) -> dict[str, str]:
    """The environment variables a uwsgiconf section sets with ``env`` (``section.env(KEY, VALUE)``)."""
    env: dict[str, str] = {}
    for key, values in section._opts.items():
        if str(key) in ("env", "ienv"):
            for item in values if isinstance(values, list) else [values]:
                name, eq, value = str(item).partition("=")
                if eq:
                    env[name] = value
    return env


def _spools(conf: str) -> list[tuple[str, _spool.Spool]]:
    """(what, spool) for every section of CONF with dispatch mules (see :func:`_declared`)."""
    found = [(what, _spool.Spool(declarations.spool_dir)) for what, declarations in _declared(conf)
             if declarations.spool_dir]
    if not found and not conf.endswith(".py"):
        raise ConfigurationError(f"{conf} declares no dispatch mules (no {RECORD_ENV} record with a spool)")
    return found


def _one(conf: str, section: str | None, routed: bool = False) -> tuple[Declarations, dict[str, str]]:
    """The declarations of the one section of CONF that has them (with ``routed``: that routes farms),
    or of ``section`` (its name, or ``line N`` of a compiled config), and the variables it sets."""
    found = [(what, declarations, env) for what, declarations, env in _declared_env(conf)
             if declarations.backends or not routed]
    if section is not None:
        found = [item for item in found if item[0] in (f"section '{section}'", section)]
    kind = "farms routed to an offload backend" if routed else f"declarations ({RECORD_ENV} record)"
    if not found:
        raise ConfigurationError(f"{conf} has no {kind}{f' in {section!r}' if section else ''}")
    if len(found) > 1:
        raise ConfigurationError(f"{conf} has {kind} in {', '.join(item[0] for item in found)}: name one with "
                                 "--section")
    return found[0][1], found[0][2]


opt_section = click.option("--section", metavar="NAME", default=None,
                           help="The section to read, when CONF has several (its name; `line N` of a compiled "
                                "config).")


@cli.command()
@opt_section
@arg_conf
def record(section: str | None, conf: str) -> None:
    """Print the declarations record of CONF (a uwsgicfg.py, default, or a compiled config): the value
    of UWSGICONF_MULES, which the runtime reads outside uWSGI (scripts, RQ workers on other hosts).

    \b
        export UWSGICONF_MULES="$(uwsgiconf-mules record)"
    """
    with _errors():
        declarations = _one(conf, section)[0]
    click.echo(declarations.record())


@cli.command()
@click.option("--burst", is_flag=True, help="Exit once the queues are empty.")
@click.option("--farm", "farms", metavar="NAME", multiple=True,
              help="Work for this routed farm only (repeatable); default: every routed farm.")
@click.option("--worker-class", metavar="CLASS", default=None,
              help="The engine's worker class, e.g. rq.worker.SimpleWorker (default: the engine's forking worker).")
@opt_section
@arg_conf
def worker(burst: bool, farms: tuple[str, ...], worker_class: str | None, section: str | None, conf: str) -> None:
    """Start a worker for the farms CONF (a uwsgicfg.py, default, or a compiled config) routes to RQ:
    `rq worker` with the Redis URL, the queues and the serializer the declaration names, and the
    declarations record and the variables the config sets (`env`, as uWSGI sets them: they win over
    this shell's) in its environment. Credentials are read from the environment variables the URL
    names; the URL reaches the worker in its environment, not on its command line. Exits with
    status 1 when the worker quits on an error (RQ's own `rq worker` exits with 0 then).
    """
    from importlib import import_module

    with _errors():
        declarations, config_env = _one(conf, section, routed=True)
        backends = list(declarations.backends)
        unknown = [farm for farm in farms if declarations.get_backend(farm) is None]
        if unknown:
            raise ConfigurationError(f"farm {unknown[0]!r} is not routed to an offload backend in {conf}; routed: "
                                     f"{', '.join(b.farm for b in backends)}")
        if farms:
            backends = [backend for backend in backends if backend.farm in farms]
        schemes = sorted({backend.scheme for backend in backends})
        if len(schemes) > 1:
            raise ConfigurationError(f"the routed farms use several engines ({', '.join(schemes)}): start one worker "
                                     "per engine with --farm")
        command, env = import_module(ENGINES[schemes[0]]).worker_command(backends, burst, worker_class)
    click.echo(f"uwsgiconf-mules: starting {schemes[0]} worker for farm(s) {', '.join(b.farm for b in backends)}",
               err=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(command[0], command, {**os.environ, **config_env, **env, RECORD_ENV: declarations.record()})


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
    with _errors():
        declared = [declarations for _, declarations in _declared(conf) if declarations.stats]
        if not declared:
            raise ConfigurationError(f"{conf} declares no stats server: add stats='127.0.0.1:9191' (or a unix "
                                     "socket path) to set_mules_params, compile, and restart uWSGI")
    declarations = declared[0]
    try:
        while True:
            try:
                view = _top.snapshot(declarations, _top.read_stats(str(declarations.stats)))
            except _top.StatsError as exc:
                _fail(str(exc))
                sys.exit(1)
            if once:
                click.echo(json.dumps(view, indent=2) if as_json else _top.render(view))
                return
            click.echo("\x1b[H\x1b[2J" + _top.render(view), color=True)  # home, clear: a redraw
            time.sleep(interval)
    except KeyboardInterrupt:
        return


def _key(payload: bytes) -> str:
    return payload[1:payload.find(b"\x00")].decode("utf-8", "replace") if b"\x00" in payload else "?"


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
    with _errors():
        spools = _spools(conf)
        hint = _reload_hint(conf) if action == "replay" else ""
    problems: list[str] = []
    for what, kept in spools:
        _echo(f"{what}: spool {kept.path}")
        if not os.path.isdir(kept.path):
            _echo("  empty (nothing was kept yet)")
            continue
        for line in _spool_action(kept, action, everything, problems):
            _echo(f"  {line}")
        if hint:
            _echo(f"  to start them now: {hint}")
    for problem in problems:
        _fail(problem)
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
    import shutil

    from ..declarations import default_spool_dir

    root = os.path.dirname(default_spool_dir())
    try:
        names = sorted(os.listdir(root))
    except FileNotFoundError:
        names = []
    removed, kept, problems = 0, [], []
    for name in names:
        path = os.path.join(root, name)
        if os.path.islink(path) or not os.path.isdir(path):
            continue
        try:
            if not _spool.stale(path):
                kept.append(path)
                continue
            shutil.rmtree(path)
        except OSError as exc:
            problems.append(f"{path}: cannot purge: {exc}")
            continue
        removed += 1
    _echo(f"default spools in {root}: {len(names)}")
    click.echo(f"  removed {removed} stale (no call, no running mule, unchanged for "
               f"{_spool.STALE_AFTER / 60:g} min)")
    click.echo(f"  kept {len(kept)} (calls kept in them, a running mule, or a recent change)")
    for path in kept:
        _echo(f"    {path}")
    for problem in problems:
        _fail(problem)
    sys.exit(1 if problems else 0)


def _spool_action(kept: _spool.Spool, action: str, everything: bool, problems: list[str]) -> list[str]:
    entries: dict[str, list[tuple[str, str, bytes]]] = {}
    for part in ("queue", "claimed", "dead"):
        entries[part] = []
        for path in kept.files(part):
            try:
                note, payload = _spool.read(path)
            except (OSError, ValueError) as exc:
                problems.append(f"{path}: {exc}")
                continue
            entries[part].append((path, note, payload))
    if action == "list":
        lines = []
        for part, title in (("queue", "queued for the next mules"), ("claimed", "being run, or left by dead mules"),
                            ("dead", "dead letters")):
            lines.append(f"{title}: {len(entries[part])}")
            counts = Counter((_key(payload), _spool.grouped(note) if part == "dead" else "")
                             for _, note, payload in entries[part])
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
        replayed = untrusted = 0
        for path, note, payload in entries["dead"]:
            if note.startswith(_spool.UNTRUSTED):
                untrusted += 1
                continue
            try:
                kept.write("queue", payload)
                os.unlink(path)
            except OSError as exc:
                problems.append(f"{path}: cannot replay: {exc}")
                continue
            replayed += 1
        return [f"replayed {replayed} dead letter(s): they run when the dispatch mules next start",
                f"kept {untrusted} untrusted message(s): never replayed (purge them)"]
    entries["delayed"] = [(path, "", b"") for path in (_delayed.files(kept) if everything else ())]
    parts = ("queue", "claimed", "dead", *(("delayed",) if entries["delayed"] else ())) if everything else ("dead",)
    removed = 0
    for part in parts:
        for path, _, _ in entries[part]:
            try:
                os.unlink(path)
            except OSError as exc:
                problems.append(f"{path}: cannot purge: {exc}")
                continue
            removed += 1
    return [f"purged {removed} file(s) from {', '.join(parts)}"]


def summary(section: Any) -> tuple[list[str], list[str]]:
    """Describe the mules and farms of a section: (summary lines, problems).

    :param section: A uwsgiconf section, ideally a :class:`uwsgiconf_mules.Section`.
    """
    keys = {str(key) for key in section._opts}
    declarations: Declarations | None = getattr(section, "mules_declarations", None)
    problems = []
    if "mule-msg-recv-size" in keys:
        problems.append(f"section '{section.name}': option mule-msg-recv-size does not exist in uWSGI 2.0.x "
                        "(--strict rejects it)")
    if declarations is None:
        if keys & {"mule", "mules", "farm"}:
            problems.append(f"section '{section.name}' declares mules or farms without uwsgiconf_mules.Section: "
                            "the runtime cannot see them; use `from uwsgiconf_mules import Section`")
        return ["no mules declared"], problems

    lines = [f"mules: {declarations.mule_count}"]
    lines.append(f"dispatch mules (run offloaded calls): {_ids(declarations.dispatchers)}")
    programs = [f"{i} {declarations.programs[i - 1]}" for i in declarations.programmed]
    absent = []  # absolute script paths: compiling does not look for them (a build host need not have them)
    for i in declarations.programmed:
        program = declarations.programs[i - 1] or ""
        problem = program_problem(program)
        if problem:
            problems.append(f"section '{section.name}': programmed mule {i}: {problem}")
        elif program_problem(program, absolute=True):
            absent.append(f"warning: programmed mule {i}: {program_problem(program, absolute=True)}")
    lines.append(f"programmed mules: {', '.join(programs) or 'none'}")
    for farm in declarations.farms:
        lines.append(f"farm {farm.name}: mule{'s' if len(farm.mules) > 1 else ''} {_ids(farm.mules)}")
    if not declarations.farms:
        lines.append("farms: none")
    lines.extend(f"farm {backend.farm}: routed to {backend.where()}, {backend.serializer} arguments (no mules; "
                 "workers: uwsgiconf-mules worker)" for backend in declarations.backends)
    limit = socket_message_limit(declarations.msg_size)
    programmed_limit = min(limit, PROGRAMMED_READ_LIMIT)
    lines.append(f"largest message: {limit} bytes to dispatch mules, {programmed_limit} bytes to programmed "
                 f"mules (this machine, mule-msg-size {declarations.msg_size or 'default'})")
    lines.append(f"send timeout: {declarations.send_timeout:g} s; harakiri: "
                 f"{f'{declarations.harakiri} s' if declarations.harakiri else 'none'}")
    if declarations.spool_dir:
        lines.append(f"spool: {declarations.spool_dir}{_spool_note(declarations.spool_dir, str(section.name))}")
    lines.append(f"workers: {_loop_engine(keys)}")
    lines.extend(f"warning: {warning}" for warning in _warnings(declarations, limit))
    lines.extend(f"warning: {warning}" for warning in _section_warnings(section, declarations))
    lines.extend(absent)
    spool_problem = _top.spool_problem(declarations)
    if spool_problem is not None:
        lines.append(f"warning: {spool_problem}: while it lasts, offloaded calls to dispatch mules are refused "
                     "(DeliveryError), as the mules could not keep queued calls across a reload or stop")
    return lines, problems


def _spool_note(path: str, name: str) -> str:
    from ..declarations import default_spool_dir

    if path != default_spool_dir(name):
        return ""
    return (" (the default: one per directory the config is compiled in and section, never removed; "
            "`uwsgiconf-mules spool purge --stale` removes those nobody uses, set_mules_params(spool_dir=...) "
            "chooses one)")


def _section_warnings(section: Any, declarations: Declarations) -> list[str]:
    warnings = []
    if declarations.farms:
        farmed = {i for farm in declarations.farms for i in farm.mules}
        farmless = [i for i in declarations.dispatchers if i not in farmed]
        if farmless:
            ids = _ids(tuple(farmless))
            warnings.append(f"dispatch mule(s) {ids} in no farm: they run only calls sent to them by id (Mule(n)"
                            ".offload(), mule_offload(n); mule_offload() with no target sends to mule 1)")
    django = os.path.exists("manage.py") or "DJANGO_SETTINGS_MODULE" in os.environ
    if django and declarations.dispatchers and "DJANGO_SETTINGS_MODULE" not in _section_env(section):
        warnings.append("this is a Django project (manage.py here, or DJANGO_SETTINGS_MODULE set) but the config "
                        "sets no DJANGO_SETTINGS_MODULE: under --lazy-apps dispatch mules cannot set Django up and "
                        "tasks that use it fail; add section.env('DJANGO_SETTINGS_MODULE', 'mysite.settings')")
    return warnings


LOOP_ENGINES = {
    "gevent": "gevent loop engine: a sender waiting for room in a full queue waits through gevent's hub, the "
              "worker's other requests run meanwhile (monkey-patched or not)",
    "asyncio": "asyncio loop engine: a sender waiting for room in a full queue holds the worker's other requests "
               "(at most send_timeout); coroutines: await f.aoffload(...)",
    "async": "async mode: a sender waiting for room in a full queue holds the worker's other requests (at most "
             "send_timeout; ugreen's suspend from Python hangs the worker on uWSGI 2.0.x); prefer --gevent or "
             "--threads",
}
"""What a sender waiting for room does under each loop engine (an option of the section)."""


def _loop_engine(keys: set[str]) -> str:
    """The ``workers:`` line of ``check``: what a waiting sender does with the section's loop engine."""
    for option in ("gevent", "asyncio", "async"):
        if option in keys:
            return LOOP_ENGINES[option]
    return ("threads or processes: a sender waiting for room in a full queue holds its own request only; mules run "
            "no loop engine (a task that uses gevent joins its greenlets before it returns)")


def uwsgi_summary(uwsgi: str | None = None) -> list[str]:
    """Describe the uWSGI of this environment: where, which version, which build, whether supported.

    :param uwsgi: The binary (default: the ``uwsgi`` next to this Python, else on PATH).
    """
    path = find_uwsgi(uwsgi)
    if path is None:
        return [f"uWSGI here: none next to {sys.executable} or on PATH (compile where uWSGI runs; "
                "compile --format yaml needs --yaml-dialect then)"]
    try:
        build = inspect_uwsgi(path)
    except ConfigurationError as exc:
        return [f"uWSGI here: {path}", f"  warning: cannot tell how it was built: {exc}"]
    lines = build.describe()
    if not build.supported:
        lines.append(f"  warning: uWSGI {build.version} is not supported")
    return lines


def _ids(ids: tuple[int, ...]) -> str:
    return ", ".join(map(str, ids)) if ids else "none"


def _warnings(declarations: Declarations, limit: int) -> list[str]:
    """What may not work as meant; in time linear in the mules and farms (a check of 100,000 mules is quick)."""
    warnings = []
    farms_of: dict[int, list[str]] = {}
    for farm in declarations.farms:
        for mule_id in farm.mules:
            farms_of.setdefault(mule_id, []).append(farm.name)
    for mule_id, names in sorted(farms_of.items()):
        if len(names) > 1:
            warnings.append(f"mule {mule_id} is in farms {', '.join(map(repr, names))}: their work shares one process")
    programmed_ids = set(declarations.programmed)
    for farm in declarations.farms:
        programmed = [i for i in farm.mules if i in programmed_ids]
        if programmed:
            warnings.append(f"farm {farm.name!r} includes programmed mule(s) {_ids(tuple(programmed))}: they take "
                            "farm messages only while waiting in get_message(farms=True)")
        dispatchers = tuple(i for i in farm.mules if i not in programmed_ids)
        if programmed and dispatchers:
            warnings.append(f"farm {farm.name!r} includes dispatch mule(s) {_ids(dispatchers)}: Farm({farm.name!r})"
                            ".send() is refused (a dispatch mule would drop a plain message); offloads run in either")
    if declarations.mule_count and not declarations.dispatchers:
        warnings.append("no dispatch mules: offloaded calls run only while a programmed mule waits in "
                        "get_message()")
    needed, allowed = master_fds(declarations.mule_count, len(declarations.farms)), _open_files_limit()
    if allowed is not None and needed > allowed:
        warnings.append(f"{declarations.mule_count} mule(s) and {len(declarations.farms)} farm(s) need about {needed} "
                        f"file descriptors in the uWSGI master, more than this process may open (ulimit -n "
                        f"{allowed}): uWSGI started with this limit cannot make their queues; raise it (ulimit -n, "
                        "LimitNOFILE= of a systemd unit) or declare fewer mules and farms")
    if declarations.msg_size is not None and declarations.msg_size < SMALL_BUFFER:
        warnings.append(f"msg_buffer {declarations.msg_size} is small: messages over {limit} bytes are refused "
                        "and bursts fill the queue quickly")
    return warnings


def _open_files_limit() -> int | None:
    """This process's soft limit of open files (``ulimit -n``), which uWSGI started from here inherits;
    None when there is none."""
    import resource

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return None if soft == resource.RLIM_INFINITY else int(soft)


def main() -> None:
    """Entry point of the ``uwsgiconf-mules`` command."""
    cli()
