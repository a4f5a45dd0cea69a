"""Helpers shared by the test modules (``tests/support/harness.py`` is the real-uWSGI harness).

``CASES``: declarations compiled by the tests, by name: the body of a ``uwsgicfg.py``. Each has
expected outputs in ``tests/expected/<name>.ini``, ``<name>.yaml`` (YAML for uWSGI's embedded
parser) and ``libyaml/<name>.yaml`` (for uWSGI built with libyaml): ``expected(name, fmt, dialect)``.

``fake_uwsgi`` writes a stand-in ``uwsgi`` that answers ``--cflags`` and ``--version`` as a pip or a
Debian build does, for the tests of how the uWSGI of the environment is found and read.

A command runs on a ``uwsgicfg.py`` written into a directory, either as a real command
(``compile_with``, a subprocess) or in this process through click's ``CliRunner``
(``invoke_with``); both return a ``CompletedProcess`` with the exit code, stdout and stderr.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import click
from click.testing import CliRunner

from uwsgiconf_mules.declarations import DISPATCH_MULE

EXPECTED = Path(__file__).resolve().parent.parent / "expected"
STAMP = re.compile(r'(uwsgiconf v)\S+ on [^"\n]*')
DEFAULT_SPOOL = re.compile(r"spool=/var/tmp/uwsgiconf-mules-\d+/[0-9a-f]{16}")

HEADER = "from uwsgiconf_mules import Section\nsection = Section()\nworkers = section.workers\n"
FOOTER = "uwsgi_configuration = section.as_configuration()\n"

CASES = {
    # The example of the design brief: a farm by count, a farm by ids.
    "design": """
workers.set_mules_params(farms=[workers.mule_farm('fast', 2), workers.mule_farm('slow', [3, 4])])
""",
    # Counts only: farms numbered one after the other from mule 1.
    "counts": """
workers.set_mules_params(farms=[workers.mule_farm('a', 2), workers.mule_farm('b', 3)])
""",
    # Explicit ids, a mule in two farms, an explicit count with a mule in no farm.
    "explicit": """
workers.set_mules_params(mules=5, farms=[
    workers.mule_farm('odd', [1, 3]), workers.mule_farm('even', [2, 4]), workers.mule_farm('all', [1, 2, 3, 4])])
""",
    # Programmed mules next to dispatch mules (None), a farm of dispatch mules.
    "programmed": """
workers.set_mules_params(mules=['feeder.py', 'jobs:consume', None, None],
                         farms=workers.mule_farm('work', [3, 4]))
""",
    # Message buffer, harakiri, reload mercy, touch-reload and send timeout.
    "options": """
workers.set_mules_params(mules=2, harakiri_timeout=30, reload_mercy=10, msg_buffer=1048576,
                         touch_reload=['/tmp/reload-mules'], send_timeout=2.5)
""",
    # A start-up hook every dispatch mule calls before it runs any call.
    "init": """
workers.set_mules_params(farms=workers.mule_farm('mail', 2), mule_init='shop.startup:prepare')
""",
    # Counters: a stats server (a unix socket: the tests run in parallel), a failure hook, a
    # programmed mule and a farm of dispatch mules, declared in two calls.
    "stats": """
workers.set_mules_params(mules=['feeder.py', None, None], farms=workers.mule_farm('work', [2, 3]))
workers.set_mules_params(stats='/tmp/uwsgiconf-mules-case-stats.sock', on_failure='hooks:report')
""",
    # Mixed: a count farm, an id farm, more mules than the farms need, set in two calls.
    "mixed": """
workers.set_mules_params(mules=6, farms=[workers.mule_farm('io', 2), workers.mule_farm('cpu', [5, 6])])
workers.set_mules_params(harakiri_timeout=60)
""",
    # A results store kept in a file across reloads, for the tasks that declare result_ttl (in /tmp: the
    # compiled case runs on a real uWSGI, which makes the file).
    "results": """
workers.set_mules_params(farms=workers.mule_farm('calc', 2),
                         results={'items': 5000, 'item_size': 8192, 'store': '/tmp/uwsgiconf-mules-case-results.cache'})
""",
    # Farms routed to RQ next to a farm of mules: no mules for them, one record field each.
    "routed": """
workers.set_mules_params(farms=workers.mule_farm('local', 1), send_timeout=3)
workers.set_offload_backends(
    reports='rq://redis.internal:6380/2?queue=reports',
    mail='rq://?url_env=REDIS_URL&queue=mail&serializer=pickle&connect_timeout=0.5')
""",
    # Schedules: a cron expression in a time zone with arguments, an interval on one mule (one
    # record field each), a second schedule of one function under its own name, a per-host flag.
    "schedules": """
from datetime import timedelta
workers.set_mules_params(farms=workers.mule_farm('reports', 2))
workers.schedule('shop.tasks:nightly_report', cron='0 3 * * MON-FRI', farm='reports', tz='Europe/Paris',
                 args=['daily', 3], kwargs={'mail': True}, missed='once')
workers.schedule('shop.tasks:refresh', every=timedelta(days=1), mule=2, overlap=True, grace=5)
workers.schedule('shop.tasks:nightly_report', name='weekly', cron='30 4 * * SUN', farm='reports',
                 host_env='SHOP_SCHEDULES')
""",
}


def source(name: str) -> str:
    return HEADER + CASES[name] + FOOTER


def expected(name: str, fmt: str = "yaml", dialect: str = "embedded") -> str:
    """The expected output of case ``name`` (or ``two_sections``) in ``fmt`` (YAML: for ``dialect``)."""
    folder = EXPECTED / "libyaml" if fmt == "yaml" and dialect == "libyaml" else EXPECTED
    return (folder / f"{name}.{fmt}").read_text()


# What `uwsgi --cflags` prints, shortened (the flags that matter kept as printed): uWSGI 2.0.31 as
# `pip install uwsgi` builds it, and Debian 12's uwsgi-core 2.0.21.
PIP_CFLAGS = (
    '-O2 -I. -Wall -D_LARGEFILE_SOURCE -D_FILE_OFFSET_BITS=64 -DUWSGI_HAS_IFADDRS -DUWSGI_ZLIB '
    '-DUWSGI_VERSION="\\"2.0.31\\"" -DUWSGI_VERSION_BASE="2" -DUWSGI_VERSION_MAJOR="0" -DUWSGI_VERSION_MINOR="31" '
    '-DUWSGI_VERSION_REVISION="0" -DUWSGI_VERSION_CUSTOM="\\"\\"" -DUWSGI_YAML -DUWSGI_SSL -DUWSGI_XML '
    '-DUWSGI_PLUGIN_DIR="\\".\\"" -DUWSGI_DECLARE_EMBEDDED_PLUGINS="UDEP(python);UDEP(gevent);UDEP(ping);" '
    '-DUWSGI_LOAD_EMBEDDED_PLUGINS="ULEP(python);ULEP(gevent);ULEP(ping);"'
)
DEBIAN_CFLAGS = (
    '-O2 -I. -Wall -D_LARGEFILE_SOURCE -D_FILE_OFFSET_BITS=64 -g -O2 -DUWSGI_HAS_IFADDRS -DUWSGI_ZLIB -DUWSGI_PCRE '
    '-DUWSGI_ROUTING -DUWSGI_VERSION="\\"2.0.21-debian\\"" -DUWSGI_VERSION_BASE="2" -DUWSGI_VERSION_MAJOR="0" '
    '-DUWSGI_VERSION_MINOR="21" -DUWSGI_VERSION_REVISION="0" -DUWSGI_VERSION_CUSTOM="\\"debian\\"" -DUWSGI_YAML '
    '-DUWSGI_LIBYAML -I/usr/include/yajl -DUWSGI_JSON -DUWSGI_JSON_YAJL -DUWSGI_SSL '
    '-DUWSGI_PLUGIN_DIR="\\"/usr/lib/uwsgi/plugins\\""'
)


def fake_uwsgi(directory: Path, cflags: str = PIP_CFLAGS, version: str = "", status: int = 0) -> Path:
    """Write ``directory/uwsgi``: prints ``cflags`` for ``--cflags`` and ``version`` for ``--version``,
    and exits with ``status``; anything else exits 1. Only shell builtins: it runs with any PATH."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "uwsgi"
    path.write_text(f"#!/bin/sh\ncase \"$1\" in\n--cflags) printf '%s\\n' {shlex.quote(cflags)} ;;\n"
                    f"--version) printf '%s\\n' {shlex.quote(version)} ;;\n*) exit 1 ;;\nesac\nexit {status}\n")
    path.chmod(0o755)
    return path


def normalise(text: str) -> str:
    """Replace the generation stamp, this installation's dispatch mule path and the default spool
    directory (named after the directory compiled in) with fixed texts."""
    text = STAMP.sub(r"\1<version> on <date>", text).replace(DISPATCH_MULE, "<dispatch_mule>")
    return DEFAULT_SPOOL.sub("spool=<default_spool>", text)


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *parts: str) -> None:
    """Exit 1, nothing on stdout, one line on stderr that contains every part, no traceback."""
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    for part in parts:
        assert part in proc.stderr


CONF = "uwsgicfg.py"


PROGRAMS = re.compile(r"""['"]([A-Za-z_][A-Za-z0-9_]*)(\.py|:[A-Za-z_][A-Za-z0-9_.]*)['"]""")
"""A programmed mule named in a test's ``uwsgicfg.py``: ``'feeder.py'`` or ``'jobs:consume'``."""


def write_conf(directory: Path, body: str) -> Path:
    """Write ``body`` as ``directory/uwsgicfg.py``, and an empty script or module beside it for every
    programmed mule it names that is not there yet (the builders refuse one uWSGI would not find)."""
    path = directory / CONF
    path.write_text(body)
    for name, _ in PROGRAMS.findall(body):
        program = directory / f"{name}.py"
        if not program.exists() and name not in ("uwsgicfg", "app"):
            program.write_text("")
    return path


def compile_with(tmp_path: Path, body: str, *command: str) -> subprocess.CompletedProcess[str]:
    """Write ``body`` as ``uwsgicfg.py`` and run the real ``command`` on it, in ``tmp_path``."""
    write_conf(tmp_path, body)
    return subprocess.run([*command, CONF], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL, check=False)


def invoke_with(tmp_path: Path, body: str, command: click.Command, *args: str) -> subprocess.CompletedProcess[str]:
    """Like ``compile_with``, in this process: ``command`` is a click command (``uwsgiconf_mules.cli:cli``,
    ``uwsgiconf.cli:base``) and gets ``args`` and ``uwsgicfg.py``."""
    write_conf(tmp_path, body)
    return invoke(tmp_path, command, *args, CONF)


def invoke(directory: Path, command: click.Command, *args: str) -> subprocess.CompletedProcess[str]:
    """Run a click command in this process as its console script would run in ``directory``.

    The working directory is ``directory`` meanwhile (relative paths, as a user types them), and
    the configuration module is imported afresh: uwsgiconf imports it by name (``uwsgicfg``),
    so the module of an earlier call is dropped from ``sys.modules`` and no bytecode is written.
    ``sys.exit`` gives the exit code, as the command's own ``sys.exit`` would; any other
    exception propagates and fails the test (the real command would print a traceback).
    """
    # click 8.2 separates stderr by default and has no mix_stderr any more.
    separate = {"mix_stderr": False} if "mix_stderr" in inspect.signature(CliRunner).parameters else {}
    runner = CliRunner(**separate)
    module = Path(CONF).stem
    cwd = os.getcwd()
    dont_write_bytecode = sys.dont_write_bytecode
    sys.modules.pop(module, None)
    importlib.invalidate_caches()
    os.chdir(directory)
    sys.dont_write_bytecode = True
    try:
        result = runner.invoke(command, list(args), catch_exceptions=False)
    finally:
        os.chdir(cwd)
        sys.dont_write_bytecode = dont_write_bytecode
        sys.modules.pop(module, None)
    return subprocess.CompletedProcess([command.name or "", *args], result.exit_code, result.stdout, result.stderr)
