from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from support.redis_server import RedisServer
from uwsgiconf_mules.runtime import instance as _instance


@pytest.fixture
def declared(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], None]]:
    """Make the runtime (outside uWSGI) read a given declarations record."""

    def use(record: str) -> None:
        monkeypatch.setenv("UWSGICONF_MULES", record)
        _instance.reset()

    monkeypatch.delenv("UWSGICONF_MULES", raising=False)
    _instance.reset()
    yield use
    _instance.reset()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server for the whole session (one per xdist worker); tests empty it first."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def empty_redis(redis_server: RedisServer) -> Iterator[RedisServer]:
    """The session's redis-server, emptied."""
    client = redis_server.client()
    client.flushall()
    client.close()
    yield redis_server


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, which the test may stop and start."""
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _refusals_said_per_test(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no burst of refusals under way (they are said once per burst)."""
    from uwsgiconf_mules.runtime import tasks as _tasks

    monkeypatch.setattr(_tasks, "_burst", None)
