from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from uwsgiconf_mules import runtime


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
