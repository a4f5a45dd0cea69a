from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import Server, start_server, stop_all
from uwsgiconf_mules import runtime


@pytest.fixture
def uwsgi_server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start real uWSGI servers (see tests/harness.py); every one is stopped at teardown."""
    servers: list[Server] = []
    counter = iter(range(1000))

    def start(config: str, app: str = "", **kwargs: Any) -> Server:
        server = start_server(tmp_path / f"server{next(counter)}", config, app, **kwargs)
        servers.append(server)
        return server

    yield start
    stop_all(servers)


@pytest.fixture
def declared(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], None]]:
    """Make the runtime (outside uWSGI) read a given declarations record."""

    def use(record: str) -> None:
        monkeypatch.setenv("UWSGICONF_MULES", record)
        runtime._reset_declarations()

    monkeypatch.delenv("UWSGICONF_MULES", raising=False)
    runtime._reset_declarations()
    yield use
    runtime._reset_declarations()
