"""A real redis-server for the tests of farms routed to RQ.

``RedisServer.start()`` runs the Debian package's ``redis-server`` (``make test`` installs it
when missing) on a free loopback port, without persistence (``--save '' --appendonly no``; a
durable one writes every change to its append-only file before it answers), in
a fresh directory, and waits (bounded) until it answers PING; ``stop()`` stops it by pid:
SIGTERM, then after a bound SIGKILL and a failure. A stopped server can be started again on
the same port (``start()``), empty (a durable one with what it had written).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from .harness import free_port

START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0


class RedisServer:
    """One redis-server process; see the module docstring.

    :param directory: An empty directory for its working files and log.
    :param password: Clients must authenticate with this password (``requirepass``).
    :param durable: Whether every write is on disk before Redis answers it (``appendonly yes``,
        ``appendfsync always``), so that what it accepted survives a SIGKILL (see :meth:`kill`).
    """

    def __init__(self, directory: Path, password: str | None = None, durable: bool = False) -> None:
        self.directory = directory
        self.password = password
        self.durable = durable
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> Any:
        """A redis-py client of this server (for checks, not the code under test)."""
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, socket_timeout=5,
                           socket_connect_timeout=5)

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise AssertionError("redis-server is not installed: `make test` installs it (apt-get install "
                                 "redis-server)")
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / "redis.log", "ab") as log:
            self.proc = subprocess.Popen(
                [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 *(("--appendonly", "yes", "--appendfsync", "always") if self.durable else ("--appendonly", "no")),
                 "--dir", str(self.directory), "--daemonize", "no",
                 *(("--requirepass", self.password) if self.password else ())],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        client = self.client()
        while True:
            try:
                if client.ping():
                    break
            except Exception:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise AssertionError(f"redis-server did not answer PING within {START_TIMEOUT} s:\n"
                                         f"{(self.directory / 'redis.log').read_text()[-3000:]}") from None
                time.sleep(0.02)
        client.close()
        return self

    def kill(self) -> None:
        """SIGKILL, as a crash or the OOM killer would stop it; ``start()`` starts it again."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(STOP_TIMEOUT)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT)
            raise AssertionError(f"redis-server did not stop within {STOP_TIMEOUT} s of SIGTERM") from None
