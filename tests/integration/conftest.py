"""Integration tests: each starts a real uWSGI (see tests/support/harness.py) or runs a real command.

Every test in this folder is marked ``integration`` (``make unit`` runs the others).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from support.harness import Server, start_server, stop_all

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def uwsgi_server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start real uWSGI servers (see tests/support/harness.py); every one is stopped at teardown."""
    servers: list[Server] = []
    counter = iter(range(1000))

    def start(config: str, app: str = "", **kwargs: Any) -> Server:
        server = start_server(tmp_path / f"server{next(counter)}", config, app, **kwargs)
        servers.append(server)
        return server

    yield start
    stop_all(servers)
