"""``uwsgiconf-mules check``: the declarations of CONF validated and summed up, and the uWSGI here."""

from __future__ import annotations

import os
import sys
from typing import Any

from uwsgiconf.exceptions import ConfigurationError

from .._project import configurations
from ..config.uwsgi_build import find_uwsgi, inspect_uwsgi
from ..declarations import Declarations, master_fds, program_problem
from ..protocol.limits import PROGRAMMED_READ_LIMIT, socket_message_limit
from . import top as _top
from .common import arg_conf, cli, echo, errors, fail, opt_uwsgi, section_env

SMALL_BUFFER = 8192


@cli.command()
@opt_uwsgi
@arg_conf
def check(uwsgi: str | None, conf: str) -> None:
    """Load CONF (default uwsgicfg.py), validate its mules and farms, and print a summary, then which
    uWSGI is here (version, build) and whether it is supported.

    Exits 0 when valid; otherwise prints one red line per problem and exits 1.
    """
    with errors():
        loaded = configurations(conf)
    problems: list[str] = []
    for configuration in loaded:
        for section in configuration.sections:
            lines, section_problems = summary(section)
            echo(f"section '{section.name}' of configuration '{configuration.alias}':")
            for line in lines:
                echo(f"  {line}")
            problems.extend(section_problems)
    for line in uwsgi_summary(uwsgi):
        echo(line)
    for problem in problems:
        fail(problem)
    sys.exit(1 if problems else 0)


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
    if declarations.schedules:
        import time

        from ..declarations.schedules import describe

        lines.extend(describe(spec, time.time_ns()) for spec in declarations.schedules)
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
    if django and declarations.dispatchers and "DJANGO_SETTINGS_MODULE" not in section_env(section):
        warnings.append("this is a Django project (manage.py here, or DJANGO_SETTINGS_MODULE set) but the config "
                        "sets no DJANGO_SETTINGS_MODULE: under --lazy-apps dispatch mules cannot set Django up and "
                        "tasks that use it fail; add section.env('DJANGO_SETTINGS_MODULE', 'mysite.settings')")
    return warnings


LOOP_ENGINES = {
    "gevent": "gevent loop engine: a sender waiting for room in a full queue waits through gevent's hub, the "
              "worker's other requests run meanwhile (monkey-patched or not)",
    "asyncio+greenlet": "asyncio loop engine with greenlet: a sender waiting for room in a full queue switches to "
                        "the event loop, the worker's other requests run meanwhile; coroutines: await "
                        "f.aoffload(...)",
    "asyncio": "asyncio loop engine without --greenlet: a sender waiting for room in a full queue holds the "
               "worker's other requests (at most send_timeout); add --greenlet, or in coroutines await "
               "f.aoffload(...)",
    "ugreen": "ugreen on Python 3.10: a sender waiting for room in a full queue suspends its request, the "
              "worker's other requests run meanwhile (timeouts in whole seconds)",
    "ugreen-unsafe": "ugreen on Python 3.11 or later: a sender waiting for room in a full queue holds the worker's "
                     "other requests (at most send_timeout; uWSGI's ugreen loses Python's frames across a switch); "
                     "prefer --gevent, --asyncio with --greenlet, or --threads",
    "async": "async mode without a suspend engine: a sender waiting for room in a full queue holds the worker's "
             "other requests (at most send_timeout); prefer --gevent or --threads",
}
"""What a sender waiting for room does under each loop engine (options of the section; ugreen: with
the Python that runs the check)."""


def _loop_engine(keys: set[str]) -> str:
    """The ``workers:`` line of ``check``: what a waiting sender does with the section's loop engine."""
    from ..runtime.engines import UGREEN_UNSAFE

    if "gevent" in keys:
        return LOOP_ENGINES["gevent"]
    if "asyncio" in keys:
        return LOOP_ENGINES["asyncio+greenlet" if "greenlet" in keys else "asyncio"]
    if "async" in keys:
        if "ugreen" in keys:
            return LOOP_ENGINES["ugreen" if sys.version_info < UGREEN_UNSAFE else "ugreen-unsafe"]
        return LOOP_ENGINES["async"]
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
