"""uwsgiconf's own ways of running uWSGI, with mules declared on its ``PythonSection`` preset
(``uwsgiconf_mules.PythonSection``), on a real uWSGI: ``configure_uwsgi(get_configurations)`` in
``uwsgicfg.py`` run by ``uwsgiconf run``, and uwsgify's ``manage.py uwsgi_run`` (which loads that
``uwsgicfg.py``) with ``manage.py uwsgi_reload`` through the master fifo it declares. Each time a
view sees the farms and its offload runs; the config uwsgify compiles is compared whole with an
expected file."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.django_site import env_of, rows, site
from support.harness import APP_PRELUDE, BIN, Server, _answers, free_port, stop_all
from support.helpers import EXPECTED, normalise

MISSING = "was not imported in the uWSGI master"

RUN_CONFIG = '''
import os

from uwsgiconf.config import configure_uwsgi
from uwsgiconf_mules import PythonSection


def get_configurations():
    section = PythonSection.bootstrap(f"http://{os.environ['TEST_HTTP']}", wsgi_module="app", workers=2)
    section.workers.set_mules_params(farms=section.workers.mule_farm("fast", 2), spool_dir=os.environ["TEST_SPOOL"])
    return section


uwsgi_configuration = configure_uwsgi(get_configurations)
'''

RUN_APP = '''
@Farm("fast").offload()
def work(tag):
    record("work", tag=tag)


@route("/farms")
def farms(query):
    return [farm.name for farm in Farm.get_farms()]


@route("/work")
def run_work(query):
    return work(query)
'''

UWSGIFY_CONFIG = '''
"""uWSGI config of the Django example on uwsgiconf's preset, for uwsgify's manage.py uwsgi_run."""
import os
from pathlib import Path

from uwsgiconf.config import configure_uwsgi
from uwsgiconf_mules import PythonSection

HERE = Path(__file__).resolve().parent


def get_configurations():
    section = PythonSection.bootstrap(f"http://{os.environ.get('TEST_HTTP', '127.0.0.1:8000')}",
                                      wsgi_module="mysite.wsgi", workers=2,
                                      params_python={"search_path": str(HERE)})
    section.set_runtime_dir(os.environ.get("TEST_RUNTIME", HERE))
    section.env("DJANGO_SETTINGS_MODULE", "mysite.settings")
    section.workers.set_mules_params(farms=section.workers.mule_farm("mail", 2),
                                     spool_dir=os.environ.get("TEST_SPOOL", str(HERE / "spool")))
    return section


uwsgi_configuration = configure_uwsgi(get_configurations)
'''


def _ready(server: Server, mules: int, starts: int = 1) -> None:
    server.wait_for(lambda: len(re.findall(r"spawned uWSGI mule \d+ ", server.log())) >= mules * starts
                    and server.log().count("WSGI app 0 (mountpoint='') ready") >= starts and _answers(server.port),
                    30, f"start {starts}")


def _spawn(cmd: list[str], directory: Path, env: dict[str, str], port: int) -> Server:
    log = directory / "uwsgi.log"
    results = directory / "results"
    results.mkdir(exist_ok=True)
    path = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"  # the uwsgi of this venv: both exec "uwsgi"
    full_env = {**os.environ, **env, "PATH": path, "TEST_RESULTS": str(results), "TEST_HTTP": f"127.0.0.1:{port}"}
    full_env.pop("UWSGICONF_MULES", None)
    with open(log, "wb") as handle:
        proc = subprocess.Popen(cmd, cwd=directory, stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT,
                                env=full_env, start_new_session=True)
    return Server(directory, port, proc, log, results)


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    stop_all(started)


def test_uwsgiconf_run_with_configure_uwsgi(tmp_path: Path, servers: list[Server]) -> None:
    (tmp_path / "uwsgicfg.py").write_text(RUN_CONFIG)
    (tmp_path / "app.py").write_text(APP_PRELUDE + RUN_APP)
    server = _spawn([str(BIN / "uwsgiconf"), "run"], tmp_path, {"TEST_SPOOL": str(tmp_path / "spool")}, free_port())
    servers.append(server)
    _ready(server, 2)
    assert server.get("/farms") == (200, ["fast"])
    assert server.get("/work?run") == (200, True)
    assert [line["tag"] for line in server.wait_lines("work", 1)] == ["run"]
    assert MISSING not in server.log()


def _uwsgify_site(tmp_path: Path) -> tuple[Path, Path]:
    directory, db = site(tmp_path)
    (directory / "uwsgicfg.py").write_text(UWSGIFY_CONFIG)
    settings = directory / "mysite" / "settings.py"
    text = settings.read_text()
    assert '    "shop",\n' in text
    settings.write_text(text.replace('    "shop",\n', '    "shop",\n    "uwsgiconf.contrib.django.uwsgify",\n'))
    return directory, db


def test_uwsgify_compiles_the_projects_config(tmp_path: Path) -> None:
    directory, db = _uwsgify_site(tmp_path)
    env = dict(env_of(db), TEST_RUNTIME="/run/site-test", TEST_SPOOL="/var/spool/site-test")
    proc = subprocess.run([sys.executable, "manage.py", "uwsgi_run", "--compile", "--noerrpages"], cwd=directory,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, env=env, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    compiled = normalise(proc.stdout).replace(str(directory), "<site>")
    assert compiled == (EXPECTED / "presets" / "uwsgify.ini").read_text()


def test_uwsgify_uwsgi_run_and_uwsgi_reload(tmp_path: Path, servers: list[Server]) -> None:
    directory, db = _uwsgify_site(tmp_path)
    env = dict(env_of(db), TEST_RUNTIME=str(tmp_path / "run"))
    (tmp_path / "run" / "site").mkdir(parents=True)  # uwsgify's {project_runtime_dir}: pid file and fifo
    manage = [sys.executable, "manage.py"]
    server = _spawn([*manage, "uwsgi_run", "--nostatic", "--noerrpages"], directory, env, free_port())
    servers.append(server)
    _ready(server, 2)
    assert server.get("/signup?email=first@example.com&via=task") == (200, {"queued": True})
    server.wait_for(lambda: len(rows(db)) == 1, 20, "a row written by a mule")

    reload = subprocess.run([*manage, "uwsgi_reload"], cwd=directory, capture_output=True, text=True, timeout=60,
                            stdin=subprocess.DEVNULL, env=env, check=False)
    assert reload.returncode == 0, reload.stdout + reload.stderr
    _ready(server, 2, starts=2)
    assert server.get("/signup?email=second@example.com") == (200, {"queued": True})
    found = server.wait_for(lambda: len(rows(db)) == 2 and rows(db), 20, "a row written after the reload")
    assert [email for email, _, _ in found] == ["first@example.com", "second@example.com"]
    assert MISSING not in server.log()
    assert "Traceback" not in server.log()

