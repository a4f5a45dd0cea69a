"""The runtime's check that it was imported in the uWSGI master, on a real uWSGI, in every way uWSGI
is started: in the foreground, ``--daemonize`` (the master forks before it loads anything),
``--daemonize2`` (it forks after loading the app, so its pid changes after the runtime was imported)
and through ``--master-fifo`` reloads. Each time a view sees the declared farms, its offload runs
and no mule logs that ``shared-import`` is missing; without ``shared-import`` (``--lazy-apps``) the
line is logged and a view gets ``DeclarationsMissingError``."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.harness import (
    APP_PRELUDE,
    MULE_READY,
    UWSGI,
    UWSGI_ARGS,
    WORKER_READY,
    Server,
    _answers,
    compile_config,
    declaration,
    free_port,
    launch,
)

APP = '''
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

MISSING = "was not imported in the uWSGI master"
WORKERS = 2
MULES = 2


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


class Daemon(Server):
    """A uWSGI that daemonized itself: stopped through the pid in its pidfile."""

    def __init__(self, directory: Path, port: int, log_path: Path, results: Path, *, pidfile: Path,
                 group: int) -> None:
        super().__init__(directory, port, None, log_path, results)  # type: ignore[arg-type]
        self.pidfile = pidfile
        self.group = group  # the process group of the command that daemonized (start_new_session)

    def log(self, since: int = 0) -> str:
        """The log, empty until the daemon opened it."""
        return super().log(since) if self.log_path.exists() else ""

    def stop(self) -> None:
        try:
            pid = int(self.pidfile.read_text())
        except (OSError, ValueError):  # not written yet: nothing to ask, stop them all
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.group, signal.SIGKILL)
            return
        if _gone(pid):
            return
        os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + 10
        while not _gone(pid):
            if time.monotonic() > deadline:
                os.killpg(os.getpgid(pid), signal.SIGKILL)
                raise AssertionError(f"daemonized uWSGI did not stop on SIGINT\n{self.log()[-4000:]}")
            time.sleep(0.05)


def _ready(server: Server, starts: int) -> None:
    server.wait_for(lambda: (server.ready_count(MULE_READY) >= MULES * starts
                             and server.ready_count(WORKER_READY) >= WORKERS * starts and _answers(server.port)),
                    30, f"start {starts} ready")


def _start(directory: Path, mode: str, extra: tuple[str, ...] = ()) -> Server:
    directory.mkdir()
    (directory / "uwsgicfg.py").write_text(declaration(
        f"farms=section.workers.mule_farm('fast', {MULES}), spool_dir={str(directory / 'spool')!r}"))
    (directory / "app.py").write_text(APP_PRELUDE + APP)
    config, compiled = compile_config(directory)
    assert compiled.returncode == 0, compiled.stderr
    if mode == "foreground":
        return launch(config, directory, extra_args=extra, expect_mules=MULES, workers=WORKERS)
    results = directory / "results"
    results.mkdir()
    log, pidfile, port = directory / "uwsgi.log", directory / "uwsgi.pid", free_port()
    cmd = [str(UWSGI), *UWSGI_ARGS, "--ini", str(config), "--strict", "--master", "--die-on-term",
           "--http-socket", f"127.0.0.1:{port}", "--module", "app:application", "--pythonpath", str(directory),
           "--chdir", str(directory), "--workers", str(WORKERS), "--hook-accepting", f"log:{WORKER_READY}",
           "--hook-as-mule", f"log:{MULE_READY}", f"--{mode}", str(log), "--pidfile", str(pidfile), *extra]
    env = dict(os.environ, TEST_RESULTS=str(results))
    env.pop("UWSGICONF_MULES", None)
    proc = subprocess.Popen(cmd, cwd=directory, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    server = Daemon(directory, port, log, results, pidfile=pidfile, group=proc.pid)
    try:
        assert proc.wait(30) == 0, f"uWSGI did not daemonize\n{server.log()[-4000:]}"
    except BaseException:
        server.stop()
        raise
    try:
        _ready(server, 1)
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        server.stop()


def _assert_offloads(server: Server, tag: str) -> None:
    assert server.get("/farms") == (200, ["fast"])
    assert server.get(f"/work?{tag}") == (200, True)
    server.wait_for(lambda: tag in [line["tag"] for line in server.lines("work")], 20, f"work {tag} ran")
    assert MISSING not in server.log()


@pytest.mark.parametrize("mode", ["foreground", "daemonize", "daemonize2"])
def test_farms_and_offloads_work_and_no_false_missing_line(tmp_path: Path, servers: list[Server], mode: str) -> None:
    fifo = tmp_path / "app" / "master.fifo"
    server = _start(tmp_path / "app", mode, ("--master-fifo", str(fifo)))
    servers.append(server)
    _assert_offloads(server, "first")

    fifo.write_bytes(b"r")  # a graceful reload of the whole instance: the master imports the runtime again
    _ready(server, 2)
    _assert_offloads(server, "reloaded")


def test_missing_shared_import_is_said_and_raised(tmp_path: Path, servers: list[Server]) -> None:
    directory = tmp_path / "app"
    server = _start(directory, "foreground")  # compiled; now started again without shared-import
    server.stop()
    config = directory / "app.ini"
    config.write_text("".join(line for line in config.read_text().splitlines(keepends=True)
                              if not line.startswith("shared-import")))
    (directory / "uwsgi.log").unlink()
    # No offloaded function at import: it would fail the app's import (loud, but no view to ask).
    (directory / "app.py").write_text(APP_PRELUDE + APP[APP.index('@route("/farms")'):APP.index('@route("/work")')])
    server = launch(config, directory, extra_args=("--lazy-apps",), expect_mules=MULES, workers=WORKERS)
    servers.append(server)
    status, body = server.get("/farms")
    assert (status, body["error"]) == (500, "DeclarationsMissingError"), body
    assert "`shared-import = uwsgiconf_mules.runtime` is missing" in body["message"]
    server.wait_for(lambda: server.log().count(MISSING) >= MULES, 10, "a missing line from every mule")


@pytest.mark.parametrize("lazy", [False, True], ids=["prefork", "lazy-apps"])
def test_an_app_that_cannot_load_stops_uwsgi_at_start(tmp_path: Path, lazy: bool) -> None:
    """Offloaded functions in the --wsgi-file script itself: the error is raised when the script is
    loaded, and the builders' need-app makes uWSGI exit then, instead of serving 500s."""
    (tmp_path / "uwsgicfg.py").write_text(declaration(f"mules=1, spool_dir={str(tmp_path / 'spool')!r}"))
    (tmp_path / "script.py").write_text(
        "from uwsgiconf_mules.runtime import mule_offload\n\n\n@mule_offload()\ndef task():\n    pass\n\n\n"
        "def application(environ, start_response):\n    start_response('200 OK', [])\n    return [b'ok']\n")
    config, compiled = compile_config(tmp_path)
    assert compiled.returncode == 0, compiled.stderr
    cmd = [str(UWSGI), *UWSGI_ARGS, "--ini", str(config), "--strict", "--master", "--die-on-term",
           "--http-socket", f"127.0.0.1:{free_port()}", "--wsgi-file", str(tmp_path / "script.py"),
           "--chdir", str(tmp_path), "--workers", "1", *(["--lazy-apps"] if lazy else [])]
    log_path = tmp_path / "uwsgi.log"
    with open(log_path, "wb") as handle:
        proc = subprocess.Popen(cmd, cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        returncode = proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        raise AssertionError(f"uWSGI kept running\n{log_path.read_text()[-3000:]}") from None
    log = log_path.read_text(errors="replace")
    assert returncode != 0, log[-3000:]
    assert "cannot be imported by name in a mule (a script run as __main__, or uWSGI's --wsgi-file)" in log
    assert "no app loaded" in log or "GAME OVER" in log, log[-3000:]
