"""``uwsgiconf-mules record``: the declarations record of CONF (the value of UWSGICONF_MULES)."""

from __future__ import annotations

import click

from .common import arg_conf, cli, errors, one, opt_section


@cli.command()
@opt_section
@arg_conf
def record(section: str | None, conf: str) -> None:
    """Print the declarations record of CONF (a uwsgicfg.py, default, or a compiled config): the value
    of UWSGICONF_MULES, which the runtime reads outside uWSGI (scripts, RQ workers on other hosts).

    \b
        export UWSGICONF_MULES="$(uwsgiconf-mules record)"
    """
    with errors():
        declarations = one(conf, section)[0]
    click.echo(declarations.record())
