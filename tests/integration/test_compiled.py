"""Real uWSGI under --strict on each compiled declaration, ini and YAML: exactly the declared
farms and mules, and offloads through the runtime run in the right mule."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from support.harness import Server
from support.helpers import CASES, source

# Programmed mules of the "programmed" case: a script and a module callable. Both read with
# Mule.get_message(), which also runs offloaded calls that reach them.
PROGRAMMED_MODULES = {
    "feeder": "from uwsgiconf_mules.runtime import Mule\nwhile True:\n    Mule.get_message(farms=True)\n",
    "jobs": "from uwsgiconf_mules.runtime import Mule\ndef consume():\n    while True:\n"
            "        Mule.get_message(farms=True)\n",
}

# Offloads one call to every declared farm and every declared mule; the call records where it ran.
APP = '''
def where(target):
    record("where", target=target)


# Decorated at import (a mule runs only functions registered there): one offloader per target.
TO_FARM = {farm.name: mule_offload(farm)(where) for farm in Farm.get_farms()}
TO_MULE = {mule.id: mule_offload(mule)(where) for mule in Mule.get_mules()}


@route("/everywhere")
def everywhere(query):
    sent = [TO_FARM[farm.name](f"farm:{farm.name}") for farm in Farm.get_farms()]
    sent += [TO_MULE[mule.id](f"mule:{mule.id}") for mule in Mule.get_mules()]
    return {"sent": sent, "farms": {farm.name: [m.id for m in farm.mules] for farm in Farm.get_farms()},
            "mules": [mule.id for mule in Mule.get_mules()]}
'''


def declared(name: str) -> tuple[int, list[tuple[str, str]]]:
    """(mule count, [(farm name, 'ids')]) that the case declares, from the builders' declaration."""
    namespace: dict[str, object] = {}
    exec(source(name), namespace)
    declarations = namespace["section"].mules_declarations  # type: ignore[attr-defined]
    return declarations.mule_count, [(f.name, ",".join(map(str, f.mules))) for f in declarations.farms]


@pytest.mark.parametrize("fmt", ["ini", "yaml"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_uwsgi_runs_exactly_the_declared_farms_and_mules(
        uwsgi_server: Callable[..., Server], name: str, fmt: str) -> None:
    server = uwsgi_server(source(name), APP, fmt=fmt, modules=PROGRAMMED_MODULES)
    log = server.log()
    assert f"getting {fmt.upper()} configuration" in log
    mules, farms = declared(name)
    assert re.findall(r"created farm \d+ name: (\S+) mules:(\S+)", log) == farms
    assert sorted(server.mule_pids()) == list(range(1, mules + 1))

    status, body = server.get("/everywhere")
    assert status == 200, body
    assert body["mules"] == list(range(1, mules + 1))
    assert [(farm, ",".join(map(str, ids))) for farm, ids in body["farms"].items()] == farms
    runs = server.wait_lines("where", len(body["sent"]))
    ran = {run["target"]: run["mule"] for run in runs}
    for farm, ids in body["farms"].items():
        assert ran[f"farm:{farm}"] in ids
    for mule in body["mules"]:
        assert ran[f"mule:{mule}"] == mule


def test_declared_helper_reads_the_builders_declaration() -> None:
    assert declared("design") == (4, [("fast", "1,2"), ("slow", "3,4")])
