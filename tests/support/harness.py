"""A real uWSGI for integration tests.

``start_server`` writes a ``uwsgicfg.py`` and an ``app.py`` into a directory, compiles the
config with the real ``uwsgiconf compile`` (or ``uwsgiconf-mules compile --format yaml``),
starts real uWSGI on it under ``--strict --master --die-on-term`` with stdin from /dev/null and
an HTTP socket on a free loopback port, and waits (bounded) until the port is bound, every
declared mule has spawned, every worker and mule has installed its own signal handlers (logged by
an ``accepting`` and an ``as-mule`` hook) and an HTTP probe answers. (One worker answering is not
enough: a worker that got SIGINT before reaching its accepting loop kept running, on a loaded
machine about one stop in ten, until uWSGI's 60 s reload mercy.)

The uWSGI is the ``uwsgi`` next to this Python (``pip install uwsgi`` in the venv), or the binary
named by ``UWSGICONF_MULES_TEST_UWSGI`` with the arguments of ``UWSGICONF_MULES_TEST_UWSGI_ARGS``
(shell words) first on its command line: a distribution's uWSGI, for instance
``UWSGICONF_MULES_TEST_UWSGI=/usr/bin/uwsgi UWSGICONF_MULES_TEST_UWSGI_ARGS="--plugin python3
--virtualenv $VIRTUAL_ENV"``. YAML is compiled for that binary (``--uwsgi``), as a user compiles
where uWSGI runs.

``Server.stop`` always stops it: SIGINT, then, after a bound, SIGKILL to the whole process group,
and that fails (``AssertionError`` with the log tail): a server that does not stop on SIGINT is a
bug to see, not to hide.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
UWSGI = Path(os.environ.get("UWSGICONF_MULES_TEST_UWSGI") or BIN / "uwsgi")
UWSGI_ARGS = tuple(shlex.split(os.environ.get("UWSGICONF_MULES_TEST_UWSGI_ARGS", "")))
START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0
"""Seconds a server has to stop after SIGINT. uWSGI waits for its mules, which keep their queued
calls in the spool (fsync per call) first; on a loaded 2-core machine a stop has taken over 10 s."""
WORKER_READY = "harness: worker accepting"
MULE_READY = "harness: mule ready"

APP_PRELUDE = '''
import json
import os

from uwsgiconf_mules.runtime import Farm, Mule, mule_offload

RESULTS = os.environ["TEST_RESULTS"]


def record(name, **data):
    """Append one JSON line to results/<name>, with the mule id and pid of this process."""
    data.update(mule=Mule.get_current_id(), pid=os.getpid())
    with open(os.path.join(RESULTS, name), "a") as handle:
        handle.write(json.dumps(data) + "\\n")


ROUTES = {}


def route(path):
    def register(func):
        ROUTES[path] = func
        return func
    return register


def application(environ, start_response):
    handler = ROUTES.get(environ["PATH_INFO"])
    if environ["PATH_INFO"] == "/ping":
        body, status = "pong", "200 OK"
    elif handler is None:
        body, status = "no route", "404 Not Found"
    else:
        try:
            body, status = json.dumps(handler(environ.get("QUERY_STRING", ""))), "200 OK"
        except Exception as exc:
            body, status = json.dumps({"error": type(exc).__name__, "message": str(exc)}), "500 Error"
    start_response(status, [("Content-Type", "text/plain")])
    return [body.encode()]
'''


QUEUED_WORK_APP = '''
import time


@mule_offload()
def work(i):
    time.sleep(0.02)
    record("work", i=i)


@route("/fill")
def fill(query):
    return sum(work(i) for i in range(int(query)))


@route("/ping-mule")
def ping_mule(query):
    return work(-1)
'''
"""App code (after ``APP_PRELUDE``) whose ``/fill?N`` queues N calls of 20 ms for mule 1 at once,
each recording its number: what the durability tests and the reload benchmark fill a queue with."""


BURST_APP = '''
import time

from uwsgiconf_mules.errors import DeliveryError

TASK_SECONDS = float(os.environ.get("TEST_TASK_SECONDS", "0.002"))


@mule_offload()
def quick(i):
    time.sleep(TASK_SECONDS)


@mule_offload()
def block(seconds):
    time.sleep(seconds)


@route("/burst")
def burst(query):
    queued = 0
    started = time.monotonic()
    try:
        for i in range(int(query)):
            quick(i)
            queued += 1
    except Exception as exc:
        return {"queued": queued, "error": type(exc).__name__, "message": str(exc),
                "waited": time.monotonic() - started}
    return {"queued": queued, "waited": time.monotonic() - started}


@mule_offload()
def drained(tag):
    record("drained", tag=tag)


@route("/drain")
def drain(query):  # queued behind everything sent so far: it runs once the queue is empty
    for _ in range(100):
        try:
            return drained.nowait(query)
        except DeliveryError:
            time.sleep(0.1)
    return drained(query)


@route("/nowait")
def nowait(query):
    block(2)
    queued = 0
    try:
        while True:
            quick.nowait(queued)
            queued += 1
    except DeliveryError as exc:
        error = {"queued": queued, "error": type(exc).__name__, "message": str(exc)}
    times = []
    for _ in range(int(query or 0)):
        started = time.perf_counter()
        try:
            quick.nowait(-1)
        except DeliveryError:
            times.append(time.perf_counter() - started)
    return dict(error, times=times)
'''
"""App code (after ``APP_PRELUDE``) for waits on a full queue of mule 1: ``/burst?N`` offloads N
calls of ``TEST_TASK_SECONDS`` (default 2 ms) from one request and says how many were queued, how
it ended and how long it waited; ``/nowait?N`` blocks the mule for 2 s, queues ``nowait`` calls
until one raises, then times N more that raise: what the send-bound tests and
``benchmarks/budget.py`` run."""


def declaration(params: str) -> str:
    """A ``uwsgicfg.py`` whose one section calls ``set_mules_params(<params>)``."""
    return (
        "from uwsgiconf_mules import Section\n"
        "section = Section()\n"
        f"section.workers.set_mules_params({params})\n"
        "uwsgi_configuration = section.as_configuration()\n"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def compile_config(directory: Path, fmt: str = "ini", out_dir: Path | None = None, yaml_args: Sequence[str] = (),
                   ) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """Compile ``directory/uwsgicfg.py`` with the real command into ``out_dir`` (default: directory).

    YAML is compiled for ``UWSGI`` unless ``yaml_args`` says otherwise (``--yaml-dialect libyaml``).
    Returns (config path, process).
    """
    if fmt == "ini":
        cmd = [str(BIN / "uwsgiconf"), "compile", "uwsgicfg.py"]
    else:
        cmd = [str(BIN / "uwsgiconf-mules"), "compile", "--format", fmt, *(yaml_args or ("--uwsgi", str(UWSGI))),
               "uwsgicfg.py"]
    proc = subprocess.run(cmd, cwd=directory, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, check=False)
    path = (out_dir or directory) / f"app.{fmt}"
    path.write_text(proc.stdout)
    return path, proc


class Server:
    """A running uWSGI; see the module docstring."""

    def __init__(self, directory: Path, port: int, proc: subprocess.Popen[bytes], log_path: Path,
                 results: Path) -> None:
        self.directory = directory
        self.port = port
        self.proc = proc
        self.log_path = log_path
        self.results = results

    def log(self, since: int = 0) -> str:
        """The uWSGI log, from byte offset ``since`` (see ``log_size``) on."""
        return self.log_path.read_bytes()[since:].decode(errors="replace")

    def log_size(self) -> int:
        """Bytes logged so far: ``log(since=log_size())`` later reads only what was logged meanwhile."""
        return self.log_path.stat().st_size

    def get(self, path: str, timeout: float = 30.0) -> tuple[int, Any]:
        """GET ``path``; returns (status, JSON-decoded body or text)."""
        url = f"http://127.0.0.1:{self.port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                status, body = response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            status, body = exc.code, exc.read().decode()
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body

    def lines(self, name: str) -> list[dict[str, Any]]:
        path = self.results / name
        if not path.exists():
            return []
        text = path.read_text()
        complete = text[:text.rfind("\n") + 1]  # a line still being written is read next time
        return [json.loads(line) for line in complete.splitlines() if line.strip()]

    def wait_for(self, condition: Callable[[], Any], timeout: float = 20.0, what: str = "") -> Any:
        """Poll ``condition`` until it returns a truthy value; fail with the log after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what or condition}\n--- uWSGI log ---\n"
                                     f"{self.log()[-6000:]}")
            time.sleep(0.05)

    def wait_lines(self, name: str, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
        self.wait_for(lambda: len(self.lines(name)) >= count, timeout, f"{count} lines in {name}")
        return self.lines(name)

    def mule_pids(self) -> dict[int, int]:
        """Mule id -> pid of its latest spawn, from the log."""
        return {int(m[1]): int(m[2]) for m in re.finditer(r"spawned uWSGI mule (\d+) \(pid: (\d+)\)",
                                                          self.log())}

    def ready_count(self, line: str) -> int:
        """How many processes logged ``line`` (a readiness hook), respawns included."""
        return len(re.findall(rf"^{re.escape(line)}$", self.log(), re.M))

    def stop(self) -> None:
        """SIGINT; if uWSGI is still running after ``STOP_TIMEOUT``, SIGKILL its process group and fail."""
        stop_uwsgi(self.proc, self.log)


def stop_uwsgi(proc: subprocess.Popen[bytes], log: Callable[[], str], timeout: float = STOP_TIMEOUT) -> None:
    """SIGINT to a uWSGI master; if it still runs after ``timeout`` seconds, SIGKILL its process
    group and fail with the tail of ``log()``.

    :param proc: The master (started in a session of its own).
    :param log: Reads its log.
    :param timeout: Seconds it has to stop.
    """
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout)
        raise AssertionError(f"uWSGI did not stop within {timeout:g} s of SIGINT and was killed with "
                             f"SIGKILL\n--- uWSGI log ---\n{log()[-6000:]}") from None


def stop_all(servers: Sequence[Server]) -> None:
    """Stop every server, then raise the first failure to stop (in a fixture: an error of the test)."""
    failures = []
    for server in servers:
        try:
            server.stop()
        except AssertionError as exc:
            failures.append(exc)
    if failures:
        raise failures[0]


def start_server(
    directory: Path,
    config: str,
    app: str = "",
    *,
    fmt: str = "ini",
    extra_args: Sequence[str] = (),
    modules: dict[str, str] | None = None,
    expect_mules: int | None = None,
    prelude: bool = True,
    workers: int = 2,
    app_first: str = "",
    uwsgi: Sequence[str] | None = None,
) -> Server:
    """Write, compile and start; see the module docstring.

    :param directory: An empty directory (pytest's ``tmp_path``).
    :param config: Body of ``uwsgicfg.py``.
    :param app: Code appended to ``APP_PRELUDE`` in ``app.py``.
    :param fmt: ``ini`` (compiled by ``uwsgiconf compile``) or ``yaml`` (by ``uwsgiconf-mules``).
    :param extra_args: More uWSGI command-line arguments (``--lazy-apps``, ...).
    :param modules: More modules to write beside ``app.py``: name -> source.
    :param expect_mules: Mules to wait for; by default the number of ``mule`` options compiled.
    :param prelude: Whether ``app.py`` starts with ``APP_PRELUDE`` (routes, ``record``).
    :param workers: Number of uWSGI workers.
    :param app_first: Code placed at the very top of ``app.py``, before the prelude.
    :param uwsgi: Another uWSGI to run: its binary and first arguments (default: ``UWSGI``, ``UWSGI_ARGS``).
    """
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "uwsgicfg.py").write_text(textwrap.dedent(config))
    (directory / "app.py").write_text(app_first + (APP_PRELUDE if prelude else "") + textwrap.dedent(app))
    for name, source in (modules or {}).items():
        (directory / f"{name}.py").write_text(textwrap.dedent(source))
    path, compiled = compile_config(directory, fmt)
    if compiled.returncode != 0:
        raise AssertionError(f"compile failed: {compiled.stderr}")
    if expect_mules is None:
        expect_mules = len(re.findall(r"^\s*mule\s*[=:]", compiled.stdout, re.M)) + sum(
            int(n) for n in re.findall(r"^\s*mules\s*[=:]\s*(\d+)", compiled.stdout, re.M))

    return launch(path, directory, fmt=fmt, extra_args=extra_args, expect_mules=expect_mules, workers=workers,
                  uwsgi=uwsgi)


def launch(
    config: Path,
    directory: Path,
    *,
    fmt: str = "ini",
    extra_args: Sequence[str] = (),
    expect_mules: int = 0,
    workers: int = 2,
    env: dict[str, str] | None = None,
    run_dir: Path | None = None,
    app: Sequence[str] = ("--module", "app:application"),
    uwsgi: Sequence[str] | None = None,
) -> Server:
    """Start real uWSGI on a compiled config and wait (bounded) until it is ready.

    :param config: The compiled config file.
    :param directory: The application directory (``--chdir``; ``app.py`` is imported from it).
    :param fmt: ``ini`` or ``yaml``.
    :param extra_args: More uWSGI command-line arguments.
    :param expect_mules: Mules to wait for.
    :param workers: Number of uWSGI workers.
    :param env: More environment variables.
    :param run_dir: Where the log and results go (default: ``directory``).
    :param app: The options that load the application (``--wsgi-file``, ``script.py`` instead).
    :param uwsgi: Another uWSGI to run: its binary and first arguments (default: ``UWSGI``, ``UWSGI_ARGS``).
    """
    run_dir = run_dir or directory
    results = run_dir / "results"
    results.mkdir(exist_ok=True)
    port = free_port()
    log_path = run_dir / "uwsgi.log"
    full_env = dict(os.environ, TEST_RESULTS=str(results), **(env or {}))
    full_env.pop("UWSGICONF_MULES", None)
    cmd = [*(uwsgi or (str(UWSGI), *UWSGI_ARGS)), f"--{fmt}", str(config), "--strict", "--master", "--die-on-term",
           "--http-socket", f"127.0.0.1:{port}", *app,
           "--pythonpath", str(directory), "--chdir", str(directory), "--workers", str(workers),
           "--hook-accepting", f"log:{WORKER_READY}", "--hook-as-mule", f"log:{MULE_READY}", *extra_args]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=directory, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, env=full_env, start_new_session=True)
    server = Server(directory, port, proc, log_path, results)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"uWSGI exited with {proc.returncode}\n{server.log()[-6000:]}")
            if (len(server.mule_pids()) >= expect_mules and server.ready_count(MULE_READY) >= expect_mules
                    and server.ready_count(WORKER_READY) >= workers and _answers(port)):
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"uWSGI not ready after {START_TIMEOUT} s\n{server.log()[-6000:]}")
            time.sleep(0.05)
    except BaseException as exc:
        try:
            server.stop()
        except AssertionError as stop_error:
            if isinstance(exc, Exception):
                raise AssertionError(f"{exc}\n\nThen, stopping it: {stop_error}") from exc
        raise
    return server


def read_options(config: Path, fmt: str, uwsgi: Path = UWSGI, args: Sequence[str] = UWSGI_ARGS,
                 ) -> tuple[list[tuple[str, str]], str]:
    """The options a real uWSGI reads from ``config``, in order, and its log: it runs ``--show-config``
    (which logs every option as ``key = value``) and exits before it binds or forks anything.

    The first option (``--ini``/``--yaml`` itself) is left out; an empty list means uWSGI printed no
    configuration (it failed first: see the log).
    """
    cmd = [str(uwsgi), *args, f"--{fmt}", str(config), "--show-config", "--hook-pre-jail", "exit:"]
    proc = subprocess.run(cmd, cwd=config.parent, capture_output=True, timeout=30, stdin=subprocess.DEVNULL,
                          check=False)
    log = (proc.stdout + proc.stderr).decode(errors="surrogateescape")
    shown = re.search(r"^\[uwsgi\]\n(.*?)^;end of configuration$", log, re.M | re.S)
    if not shown:
        return [], log
    options = [line.partition(" = ") for line in shown[1].split("\n")[:-1]]  # not splitlines(): values keep \x85
    return [(key, value) for key, _, value in options if key != fmt], log


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            pass
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False
