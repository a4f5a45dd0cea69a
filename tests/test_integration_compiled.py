"""Real uWSGI under --strict on each compiled declaration: exactly the declared farms and mules."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from declarations_cases import CASES, source
from harness import Server
from uwsgiconf_mules.declarations import declare

pytestmark = pytest.mark.integration

# Programmed mules of the "programmed" case: a script and a module callable.
PROGRAMMED_MODULES = {
    "feeder": "from uwsgiconf_mules.runtime import Mule\nwhile True:\n    Mule.get_message()\n",
    "jobs": "from uwsgiconf_mules.runtime import Mule\ndef consume():\n    while True:\n        Mule.get_message()\n",
}


def declared(name: str) -> tuple[int, list[tuple[str, str]]]:
    """(mule count, [(farm name, 'ids')]) that the case declares, from its own source."""
    namespace: dict[str, object] = {}
    exec(source(name), namespace)
    section = namespace["section"]
    declarations = section.mules_declarations  # type: ignore[attr-defined]
    assert declarations is not None
    return declarations.mule_count, [(f.name, ",".join(map(str, f.mules))) for f in declarations.farms]


@pytest.mark.parametrize("name", sorted(CASES))
def test_uwsgi_creates_exactly_the_declared_farms_and_mules(
        uwsgi_server: Callable[..., Server], name: str) -> None:
    server = uwsgi_server(source(name), modules=PROGRAMMED_MODULES)
    log = server.log()
    mules, farms = declared(name)
    created = re.findall(r"created farm \d+ name: (\S+) mules:(\S+)", log)
    assert created == farms
    assert sorted(server.mule_pids()) == list(range(1, mules + 1))
    assert "unknown option" not in log.lower()


def test_declare_is_what_the_cases_use() -> None:
    # The helper above reads the builders' own declaration; check it against a hand count.
    assert declared("design") == (4, [("fast", "1,2"), ("slow", "3,4")])
    assert declare(mules=2).mule_count == 2
