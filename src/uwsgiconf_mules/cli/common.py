"""What the commands share: the command group, the options and arguments they take, their
output and errors, and reading the declarations of a CONF (a uwsgicfg.py or a compiled config)."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version
from typing import Any

import click
from uwsgiconf.exceptions import ConfigurationError
from uwsgiconf.utils import ConfModule

from .._project import configurations
from .._text import escape
from ..declarations import RECORD_ENV, Declarations, parse_record
from ..protocol import spool as _spool


def fail(message: str) -> None:
    click.secho(escape(message), err=True, fg="red")


def echo(line: str) -> None:
    """Print one line of the command's own output, escaped (see :mod:`uwsgiconf_mules._text`): it may quote
    what the command read (a spool file, a config, a uWSGI binary's answer)."""
    click.echo(escape(line))


@contextmanager
def errors() -> Iterator[None]:
    """One red line and exit 1 for a configuration error or a module that does not load."""
    try:
        yield
    except ConfigurationError as exc:
        fail(f"{exc}")
        sys.exit(1)
    except Exception as exc:
        fail(f"cannot load the configuration module: {type(exc).__name__}: {exc}")
        sys.exit(1)


arg_conf = click.argument("conf", type=click.Path(exists=True, dir_okay=False), default=ConfModule.default_name)


opt_uwsgi = click.option("--uwsgi", "uwsgi", metavar="BINARY", default=None,
                         help="The uWSGI to ask how it was built (default: the uwsgi next to this Python, else "
                              "on PATH).")


@click.group()
@click.version_option(version=version("uwsgiconf-mules"), prog_name="uwsgiconf-mules")
def cli() -> None:
    """uwsgiconf-mules: uWSGI mules and mule farms, declared once and used safely."""


opt_section = click.option("--section", metavar="NAME", default=None,
                           help="The section to read, when CONF has several (its name; `line N` of a compiled "
                                "config).")


def declared(conf: str) -> list[tuple[str, Declarations]]:
    """(what, declarations) for every section of CONF that declares mules or routed farms: CONF is a
    configuration module, or a compiled config (its declarations records are read)."""
    return [(what, declarations) for what, declarations, _ in declared_env(conf)]


_ENV_LINE = re.compile(r'^\s*i?env\s*[=:]\s*"?([A-Za-z_][A-Za-z0-9_]*)=(.*?)"?\s*$')


def declared_env(conf: str) -> list[tuple[str, Declarations, dict[str, str]]]:
    """:func:`declared`, with the environment variables each section sets (its ``env`` options)."""
    found = []
    if conf.endswith(".py"):
        for configuration in configurations(conf):
            for section in configuration.sections:
                declarations = getattr(section, "mules_declarations", None)
                if declarations is not None:
                    found.append((f"section '{section.name}'", declarations, section_env(section)))
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


def section_env(section: Any) -> dict[str, str]:
    """The environment variables a uwsgiconf section sets with ``env`` (``section.env(KEY, VALUE)``)."""
    env: dict[str, str] = {}
    for key, values in section._opts.items():
        if str(key) in ("env", "ienv"):
            for item in values if isinstance(values, list) else [values]:
                name, eq, value = str(item).partition("=")
                if eq:
                    env[name] = value
    return env


def spools(conf: str) -> list[tuple[str, _spool.Spool]]:
    """(what, spool) for every section of CONF with dispatch mules (see :func:`declared`)."""
    found = [(what, _spool.Spool(declarations.spool_dir)) for what, declarations in declared(conf)
             if declarations.spool_dir]
    if not found and not conf.endswith(".py"):
        raise ConfigurationError(f"{conf} declares no dispatch mules (no {RECORD_ENV} record with a spool)")
    return found


def one(conf: str, section: str | None, routed: bool = False) -> tuple[Declarations, dict[str, str]]:
    """The declarations of the one section of CONF that has them (with ``routed``: that routes farms),
    or of ``section`` (its name, or ``line N`` of a compiled config), and the variables it sets."""
    found = [(what, declarations, env) for what, declarations, env in declared_env(conf)
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
