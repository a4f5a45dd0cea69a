"""``uwsgiconf-mules worker``: the engine's worker for the farms CONF routes to it."""

from __future__ import annotations

import os
import sys

import click
from uwsgiconf.exceptions import ConfigurationError

from ..declarations import RECORD_ENV
from ..declarations.backends import ENGINES
from .common import arg_conf, cli, errors, one, opt_section


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

    with errors():
        declarations, config_env = one(conf, section, routed=True)
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
