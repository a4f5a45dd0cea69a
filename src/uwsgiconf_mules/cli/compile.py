"""``uwsgiconf-mules compile``: the configurations of CONF as ini or uWSGI YAML."""

from __future__ import annotations

import click

from .._project import configurations
from ..config.formats import FORMATS, YAML_DIALECTS, collect, render
from ..config.uwsgi_build import resolve_dialect
from .common import arg_conf, cli, errors, opt_uwsgi


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
    with errors():
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
