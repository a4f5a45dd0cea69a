from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from uwsgiconf_mules import _instance


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
