"""The quickstart of the README (the same text as the docs' Quickstart page) and the Flask page, run
on a real uWSGI as a person pastes them: their files written into an empty directory, their
commands run as written (the compile line through a shell, the uwsgi line with exactly its arguments,
on a free loopback port instead of 8000), the curl line's request made, and the offloaded call seen
in uWSGI's log, run by a mule. Bounded waits; uWSGI always stopped; stdin /dev/null."""

from __future__ import annotations

import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.harness import free_port, stop_uwsgi

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
START_TIMEOUT = 30.0
RUN_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
# Readiness hooks given to uWSGI in its environment (UWSGI_<OPTION>), so that its command line stays
# the documented one: a worker logs once it accepts, a mule once it runs (see tests/support/harness.py).
WORKER_READY = "quickstart: worker accepting"
MULE_READY = "quickstart: mule ready"


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", text, re.M | re.S)


def files_of(text: str) -> dict[str, str]:
    """name -> source of each Python block that names its file on its first line (``# app.py: ...``)."""
    named = {}
    for block in blocks(text, "python"):
        first = re.match(r"# ([a-z_]+\.py)\b", block)
        if first:
            named[first[1]] = block
    return named


def quickstart(path: Path) -> str:
    text = path.read_text()
    if path.name == "README.md":
        start = text.index("\n## Quickstart\n")
        return text[start:text.index("\n## ", start + 1)]
    start = text.index("\n## Serve an app whose view offloads a call\n")
    return text[start:text.index("\n## ", start + 1)]


def test_the_readme_and_the_docs_have_one_quickstart() -> None:
    readme, docs = quickstart(ROOT / "README.md"), quickstart(ROOT / "docs" / "quickstart.md")
    assert readme.split("\n", 2)[2] == docs.split("\n", 2)[2]
    assert sorted(files_of(readme)) == ["app.py", "tasks.py", "uwsgicfg.py"]
    assert len(readme.strip().splitlines()) <= 60  # about 30 lines of code and commands, and their words


class Running:
    def __init__(self, proc: subprocess.Popen[bytes], log: Path, port: int) -> None:
        self.proc, self.log_path, self.port = proc, log, port

    def log(self) -> str:
        return self.log_path.read_bytes().decode(errors="replace")

    def wait_for(self, what: str, condition: object, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not condition():  # type: ignore[operator]
            if self.proc.poll() is not None:
                raise AssertionError(f"uWSGI exited with {self.proc.returncode} while waiting for {what}\n"
                                     f"{self.log()[-6000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}\n--- uWSGI log ---\n{self.log()[-6000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        stop_uwsgi(self.proc, self.log, STOP_TIMEOUT)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[list[Running]]:
    running: list[Running] = []
    yield running
    for server in running:
        server.stop()


def run_as_written(directory: Path, files: dict[str, str], commands: str, served: list[Running]) -> tuple[
        Running, str]:
    """Write the files, run the compile line, start the uwsgi line; returns the server and the curl line."""
    for name, source in files.items():
        (directory / name).write_text(source)
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(directory), "LANG": "C.UTF-8"}
    lines = [line for line in commands.splitlines() if line.strip()]
    compile_line, uwsgi_line, curl_line = lines
    assert compile_line == "uwsgiconf compile > app.ini"
    compiled = subprocess.run(compile_line, shell=True, cwd=directory, env=env, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=60, check=False)
    assert compiled.returncode == 0, compiled.stderr
    assert "farm = work:1,2" in (directory / "app.ini").read_text()

    args = shlex.split(uwsgi_line)
    assert args[0] == "uwsgi" and "127.0.0.1:8000" in args
    port = free_port()
    args = [str(BIN / "uwsgi"), *(f"127.0.0.1:{port}" if arg == "127.0.0.1:8000" else arg for arg in args[1:])]
    log = directory / "uwsgi.log"
    hooks = {"UWSGI_HOOK_ACCEPTING": f"log:{WORKER_READY}", "UWSGI_HOOK_AS_MULE": f"log:{MULE_READY}"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, cwd=directory, env={**env, **hooks}, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    server = Running(proc, log, port)
    served.append(server)

    def ready() -> bool:
        text = server.log()
        workers = len(re.findall(r"^spawned uWSGI worker \d+", text, re.M))
        def said(line: str) -> int:  # whole lines: uWSGI also echoes each hook as it runs it ("running ...")
            return len(re.findall(rf"^{re.escape(line)}$", text, re.M))

        return workers > 0 and said(WORKER_READY) >= workers and said(MULE_READY) >= 2 and _answers(port)

    server.wait_for("uWSGI to serve with 2 mules", ready, START_TIMEOUT)
    return server, curl_line


def _answers(port: int) -> bool:
    """The port accepts connections (no request: every request of these apps offloads a call)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def curl(server: Running, curl_line: str) -> str:
    command = curl_line.partition("#")[0]
    words = shlex.split(command)
    assert words[0] == "curl" and words[1].startswith("127.0.0.1:8000"), curl_line
    path = words[1].removeprefix("127.0.0.1:8000") or "/"
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=10) as response:
        assert response.status == 200
        return response.read().decode()


def ran_in_a_mule(server: Running, name: str) -> None:
    expected = re.compile(rf"^\S+ \S+ mule [12] \[tasks:greet\] INFO tasks: hello {name}, from a mule$", re.M)
    server.wait_for(f"the offloaded greet({name!r}) in the log", lambda: expected.search(server.log()),
                    RUN_TIMEOUT)


def test_the_quickstart_as_written_serves_the_app_and_runs_the_call_in_a_mule(
        tmp_path: Path, served: list[Running]) -> None:
    text = quickstart(ROOT / "README.md")
    (commands,) = blocks(text, "sh")
    server, curl_line = run_as_written(tmp_path, files_of(text), commands, served)
    assert 'prints "queued"' in curl_line
    assert "[tasks:greet]" not in server.log()
    assert curl(server, curl_line) == "queued\n"
    ran_in_a_mule(server, "world")
    (shown,) = blocks(text, "text")
    (logged,) = [line for line in server.log().splitlines() if "[tasks:greet]" in line]
    # The line shown is the line logged, but for its time and which mule of the two took it.
    assert re.sub(r"^\S+ \S+ mule \d", "", logged) == re.sub(r"^\S+ \S+ mule \d", "", shown.strip())
    server.stop()


def test_the_flask_page_as_written(tmp_path: Path, served: list[Running]) -> None:
    files = files_of(quickstart(ROOT / "README.md"))
    page = (ROOT / "docs" / "flask-wsgi.md").read_text()
    files.update(files_of(page))
    assert "from flask import Flask" in files["app.py"]
    commands = blocks(page, "sh")[0]
    server, curl_line = run_as_written(tmp_path, files, commands, served)
    assert "[tasks:greet]" not in server.log()
    assert curl(server, curl_line).strip() == '{"queued":true}'
    assert '{"queued":true}' in curl_line
    ran_in_a_mule(server, "ada")
    server.stop()
