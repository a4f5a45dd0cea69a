"""The README's claims about distributions' uWSGI that a test can hold it to: the section's YAML is
what `compile` writes for libyaml, its command loads the plugin first, and the supported versions
are the matrix's, oldest first. (Its commands were run as written on Debian 12; the matrix runs
them through the harness: `.ci/matrix debian-uwsgi`.) And "Watching your mules": its code runs as
shown (the Sentry hook against a stand-in ``sentry_sdk``), its sample of ``top`` has the columns
``top`` prints, and its table names every counter."""

from __future__ import annotations

import re
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from helpers import invoke, invoke_with, normalise
from uwsgiconf_mules import Section
from uwsgiconf_mules._declarations import declare
from uwsgiconf_mules._top import render
from uwsgiconf_mules._uwsgi_build import OLDEST_SUPPORTED
from uwsgiconf_mules.cli import cli

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    return README[start:README.index("\n## ", start + 1)]


def test_distribution_section_comes_before_limitations() -> None:
    headings = re.findall(r"^## (.+)$", README, re.M)
    assert headings.index("Running with your distribution's uWSGI") < headings.index("Limitations")


def test_distribution_yaml_is_what_compile_writes_for_libyaml(tmp_path: Path) -> None:
    shown = re.search(r"```yaml\n(.*?)```", section("Running with your distribution's uWSGI"), re.S)
    assert shown
    lines = [normalise(line.strip()) for line in shown[1].splitlines() if line.strip()]
    proc = invoke_with(tmp_path, (ROOT / "examples" / "basic" / "uwsgicfg.py").read_text(), cli, "compile",
                       "--format", "yaml", "--yaml-dialect", "libyaml")
    assert proc.returncode == 0, proc.stderr
    shown_path = "/root/mules-venv/lib/python3.11/site-packages/uwsgiconf_mules/dispatch_mule.py"
    compiled = [normalise(line.strip()).replace("<dispatch_mule>", shown_path) for line in proc.stdout.splitlines()]
    # The README (frozen while it moves to the docs site) predates the builders' `need-app`.
    compiled.remove('need-app: "true"')
    assert len(lines) == len(compiled)
    for shown_line, line in zip(lines, compiled, strict=True):
        if shown_line.endswith('..."'):  # shortened
            assert line.startswith(shown_line.removesuffix('..."'))
        else:
            assert shown_line == line


def test_distribution_command_loads_the_plugin_first() -> None:
    commands = re.search(r"```sh\n(.*?)```", section("Running with your distribution's uWSGI"), re.S)
    assert commands
    command = commands[1].replace("\\\n", " ")
    uwsgi = next(line for line in command.splitlines() if line.startswith("uwsgi "))
    assert uwsgi.startswith("uwsgi --plugin python3 --virtualenv ~/mules-venv --yaml app.yaml ")
    assert "~/mules-venv/bin/uwsgiconf-mules compile --format yaml > app.yaml" in command


def test_supported_versions_are_the_matrix_oldest_first() -> None:
    rows = re.findall(r"^\| ([^|]+) \| [^|]+ \| [^|]+ \| ([^|]+) \|$", section("Supported versions"), re.M)
    versions = [version.strip() for version, _ in rows[1:]]  # after the heading row
    assert versions == ["2.0.21", "2.0.21-debian", "newest 2.0.x"]
    assert versions[0] == ".".join(map(str, OLDEST_SUPPORTED))
    matrix = (ROOT / ".ci" / "matrix").read_text()
    combinations = matrix[matrix.index("COMBINATIONS=("):matrix.index("\n)\n")]
    names = re.findall(r"^    \"(\S+)\s", combinations, re.M)
    assert names == ["py3.10", "py3.11", "py3.11-uwsgi$OLDEST_UWSGI", "py3.12", "py3.13", "debian-uwsgi"]
    assert 'OLDEST_UWSGI=2.0.21' in matrix
    assert [name.strip() for _, name in rows[1:]] == [
        "`py3.11-uwsgi2.0.21`", "`debian-uwsgi`", "`py3.10` ... `py3.13`"]


def test_testing_example_runs_with_the_plugin(tmp_path: Path) -> None:
    example = re.search(r"```python\n(.*?)```", section("Tests and development servers"), re.S)
    assert example
    (tmp_path / "shop").mkdir()
    (tmp_path / "shop" / "__init__.py").write_text("")
    (tmp_path / "shop" / "tasks.py").write_text(
        "from uwsgiconf_mules.runtime import mule_offload\n\n\n"
        "@mule_offload('mail')\ndef send_welcome_email(user_id):\n"
        "    if not user_id:\n        raise ValueError('no user 0')\n")
    (tmp_path / "uwsgicfg.py").write_text(
        "from uwsgiconf_mules import Section\nsection = Section()\n"
        "section.workers.set_mules_params(mules=3, farms=section.workers.mule_farm('mail', [1]))\n"
        "uwsgi_configuration = section.as_configuration()\n")
    (tmp_path / "pytest.ini").write_text("[pytest]\nuwsgiconf_mules_config = uwsgicfg.py\npythonpath = .\n")
    (tmp_path / "test_signup.py").write_text(example[1])
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_signup.py"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
                          env={"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 passed" in proc.stdout


def test_routing_section_declaration_compiles_and_its_commands_exist(tmp_path: Path) -> None:
    text = section("When one machine is not enough")
    declaration = re.search(r"```python\n(.*?)```", text, re.S)
    assert declaration
    body = ("from uwsgiconf_mules import Section\nsection = Section()\n" + declaration[1]
            + "uwsgi_configuration = section.as_configuration()\n")
    record = invoke_with(tmp_path, body, cli, "record")
    assert record.returncode == 0, record.stderr
    assert ";farm=thumbnails:1,2;" in record.stdout
    assert record.stdout.strip().endswith(";route=reports:rq://redis.internal:6379/0?queue=reports")
    synopsis = re.search(r"```sh\n(uwsgiconf-mules worker .*?)\n```", text, re.S)
    assert synopsis
    helped = invoke(tmp_path, cli, "worker", "--help").stdout
    for option in re.findall(r"--[a-z-]+", synopsis[1]):
        assert option in helped
    assert 'export UWSGICONF_MULES="$(uwsgiconf-mules record)"' in text


def test_watching_your_mules_code_runs_as_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = re.findall(r"```python\n(.*?)```", section("Watching your mules"), re.S)
    declare_block, pushers_block, sentry_block = blocks
    namespace: dict[str, Any] = {"section": Section()}
    exec(declare_block + pushers_block, namespace)
    lines = [f"{key} = {value}" for key, value in namespace["section"]._get_options()]
    assert "stats = 127.0.0.1:9191" in lines
    assert "stats-push = socket:127.0.0.1:8125,myapp" in lines
    assert "metric = name=mule.1.started,type=counter" in lines
    assert any("on-failure=myproject.reports:task_failed" in line for line in lines)

    captured: list[tuple[str, object]] = []

    class Scope:
        def __enter__(self) -> Scope:
            return self

        def __exit__(self, *exc: object) -> None:
            captured.append(("exit", None))

        def set_tag(self, name: str, value: object) -> None:
            captured.append((name, value))

        def set_extra(self, name: str, value: object) -> None:
            captured.append((name, value))

    sentry = types.ModuleType("sentry_sdk")
    sentry.new_scope = Scope  # type: ignore[attr-defined]
    sentry.capture_exception = lambda exc: captured.append(("exception", exc))  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "sentry_sdk", sentry)
    hooks: dict[str, Any] = {}
    exec(sentry_block, hooks)
    error = ValueError("boom")
    hooks["task_failed"]("app:fail", (1,), {"k": 2}, error, 3)
    assert captured == [("task", "app:fail"), ("mule", 3), ("args", "(1,)"), ("kwargs", "{'k': 2}"),
                        ("exception", error), ("exit", None)]


def test_the_sample_of_top_has_the_columns_top_prints() -> None:
    sample = re.search(r"```text\n(uWSGI .*?)```", section("Watching your mules"), re.S)
    assert sample
    view = {"stats": "127.0.0.1:9191", "uwsgi": {"version": "2.0.31", "pid": 1}, "time": 0.0,
            "mules": [{"id": 1, "kind": "dispatch", "farms": ["pair"], "running": None, "tasks": {"a:b": {}}}],
            "farms": [{"name": "pair", "mules": [1], "queued": 0, "queue_bytes": 0}]}
    printed = [line for line in render(view).splitlines() if line.startswith(("MULE", "FARM", "TASK"))]
    shown = [line for line in sample[1].splitlines() if line.startswith(("MULE", "FARM", "TASK"))]
    assert [line.split() for line in shown] == [line.split() for line in printed]
    names = {name.split(".", 2)[2] for name, _ in declare(mules=1, stats="127.0.0.1:1").metric_names()}
    table = section("Watching your mules")
    assert all(f"`{name}`" in table or f".{name}`" in table for name in names)
