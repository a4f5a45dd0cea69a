"""The docs site's pages held to what the code does.

Each page's claims that a test can check without a server: its code runs as shown, its samples are
what the commands print, its tables name what the code has, and the parts generated when the site is
built (``docs/hooks.py``: the options table, the command synopsis) cover every option and command.
The distributions page: its YAML is what ``compile`` writes for libyaml, its command loads the plugin
first, and the supported versions are the matrix's, oldest first (its commands were run as written on
Debian 12; the matrix runs them through the harness: ``.ci/matrix debian-uwsgi``). Watching your
mules: its code runs as shown (the Sentry hook against a stand-in ``sentry_sdk``), its sample of
``top`` has the columns ``top`` prints, and its table names every counter. The quickstart and the
Flask page run on a real uWSGI in ``tests/integration/test_quickstart.py``; ``make test`` builds the
site with ``mkdocs build --strict`` (a broken link, anchor or reference fails)."""

from __future__ import annotations

import importlib.util
import inspect
import re
import subprocess
import sys
import types
from pathlib import Path
from typing import Any, ClassVar

import pytest
from uwsgiconf.cli import base as uwsgiconf_cli

from support.helpers import invoke, invoke_with, normalise
from uwsgiconf_mules import Section
from uwsgiconf_mules.cli import cli
from uwsgiconf_mules.cli.top import render
from uwsgiconf_mules.config import Workers
from uwsgiconf_mules.config.uwsgi_build import OLDEST_SUPPORTED
from uwsgiconf_mules.declarations import DISPATCH_MULE, MuleFarm, declare

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
_spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
assert _spec and _spec.loader
hooks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hooks)


def page(name: str) -> str:
    return (DOCS / f"{name}.md").read_text()


def section(name: str, title: str) -> str:
    text = page(name)
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", text, re.M | re.S)


def shown_matches(shown: str, printed: str) -> bool:
    """A line of a sample matches a printed line; ``...`` in the sample stands for any text."""
    pattern = ".*".join(re.escape(part) for part in shown.split("..."))
    return re.fullmatch(pattern, printed) is not None


def assert_sample_is_output(sample: str, output: str) -> None:
    """Every line of ``sample`` matches the line of the output at its place (the stamp lines left out)."""
    installed = output.replace(DISPATCH_MULE, "/venv/lib/site-packages/uwsgiconf_mules/dispatch_mule.py")
    printed = [line for line in installed.splitlines() if line.strip() and not line.startswith("print")]
    shown = [line for line in sample.splitlines() if line.strip()]
    assert len(shown) == len(printed), (shown, printed)
    for shown_line, line in zip(shown, printed, strict=True):
        assert shown_matches(shown_line, line), (shown_line, line)


# The site's structure


def test_every_page_is_in_the_nav_and_every_nav_entry_is_a_page() -> None:
    nav = re.findall(r"^\s+- (?:[^:\n]+: )?([\w/.-]+\.md)$", (ROOT / "mkdocs.yml").read_text(), re.M)
    pages = sorted(str(path.relative_to(DOCS)) for path in DOCS.rglob("*.md"))
    assert sorted(nav) == pages
    assert len(nav) == len(set(nav))


def test_the_nav_has_a_section_for_task_capabilities() -> None:
    config = (ROOT / "mkdocs.yml").read_text()
    assert "  - Task capabilities:\n      - Overview and return values: capabilities.md\n" in config


def test_the_api_reference_names_objects_that_exist() -> None:
    targets = [target for path in sorted((DOCS / "reference").glob("*.md"))
               for target in re.findall(r"^::: (\S+)$", path.read_text(), re.M)]
    assert "uwsgiconf_mules.runtime" in targets and "uwsgiconf_mules.contrib.testing.modes" in targets
    for target in targets:
        parts = target.split(".")
        for split in range(len(parts), 0, -1):  # the longest importable module, then attributes
            try:
                found: object = importlib.import_module(".".join(parts[:split]))
            except ImportError:
                continue
            for name in parts[split:]:
                found = getattr(found, name)
            break
        else:
            raise AssertionError(f"{target} cannot be imported")


def test_the_python_blocks_of_every_page_are_python() -> None:
    for path in sorted(DOCS.rglob("*.md")):
        for number, block in enumerate(blocks(path.read_text(), "python")):
            compile(block, f"{path.name} block {number}", "exec")


# Generated parts


def test_the_options_table_has_every_parameter_of_the_builders() -> None:
    assert "<!-- generated: options -->" in page("configuration")
    rows = hooks.option_rows()
    named = [(call, name) for call, name, _, _ in rows]
    expected = [("set_mules_params", name) for name in inspect.signature(Workers.set_mules_params).parameters
                if name != "self"]
    expected += [("mule_farm", name) for name in inspect.signature(MuleFarm).parameters]
    expected += [("set_offload_backends", name) for name in inspect.signature(Workers.set_offload_backends).parameters
                 if name != "self"]
    expected += [("schedule", name) for name in inspect.signature(Workers.schedule).parameters if name != "self"]
    assert named == expected
    table = hooks.render(page("configuration"))
    assert "<!-- generated" not in table
    tables = dict(re.findall(r"^### `(\w+)`\n\n(.*?)(?=^#|\Z)", table, re.M | re.S))
    assert list(tables) == ["set_mules_params", "mule_farm", "set_offload_backends", "schedule"]
    for call, name in expected:
        assert f"\n| `{name}` | " in tables[call], (call, name)


def test_the_defaults_the_table_states_are_the_defaults() -> None:
    defaults = {name: value for call, name, value, _ in hooks.option_rows() if call == "set_mules_params"}
    assert defaults["send_timeout"] == "5"
    assert ";send-timeout=5;" in declare(mules=1).record()
    assert defaults["deploy_mode"] == "``'reload'``"
    options = dict(declare(mules=1, deploy_touch="/tmp/deployed").options())
    assert options.get("touch-reload") == "/tmp/deployed"
    assert "touch-chain-reload" not in options
    assert defaults["reload_mercy"] == "60 (uWSGI's)"  # uWSGI's own: nothing is emitted
    assert "mule-reload-mercy" not in dict(declare(mules=1).options())
    assert defaults["spool_dir"].startswith("a directory under ``/var/tmp``")
    assert defaults["mules"] == "-" and defaults["stats"] == "-"
    assert {name: value for call, name, value, _ in hooks.option_rows() if call == "mule_farm"} == {
        "name": "required", "mule_numbers": "required"}


def test_an_undocumented_parameter_fails_the_build() -> None:
    def builder(documented: int, forgotten: int) -> None:
        """A builder.

        :param documented: Told.
        """

    with pytest.raises(ValueError, match="parameter 'forgotten' has no :param: line"):
        hooks.rows_of("builder", builder)
    with pytest.raises(ValueError, match="unknown generated part 'nothing'"):
        hooks.render("<!-- generated: nothing -->")


def test_the_synopsis_has_every_command_and_option() -> None:
    assert "<!-- generated: cli -->" in page("cli")
    block = hooks.render(page("cli"))
    synopses = {name: synopsis for name, synopsis, _ in hooks.cli_synopses()}
    assert sorted(synopses) == sorted(cli.commands)
    assert {"top", "spool", "worker", "compile", "check", "record"} <= set(synopses)
    for name, synopsis in synopses.items():
        assert f"\n{synopsis}\n" in block
        helped = invoke(ROOT, cli, name, "--help").stdout
        options = set(re.findall(r"^\s+(--[a-z][a-z-]*)", helped, re.M)) - {"--help"}
        assert options == set(re.findall(r"\[(--[a-z][a-z-]*)", synopsis)), name
    assert "uwsgiconf-mules spool list|replay|purge [--all] [--stale] [CONF]" in block
    assert "uwsgiconf-mules top [--once] [--json] [--interval INTERVAL] [CONF]" in block


# Samples and examples of the pages


def test_the_configuration_sample_is_what_uwsgiconf_compile_prints(tmp_path: Path) -> None:
    text = page("configuration")
    declaration, = blocks(text, "python")
    sample, = blocks(text, "ini")
    proc = invoke_with(tmp_path, declaration, uwsgiconf_cli, "compile")
    assert proc.returncode == 0, proc.stderr
    assert_sample_is_output(sample, proc.stdout)


def test_the_quickstart_sample_is_what_uwsgiconf_compile_prints(tmp_path: Path) -> None:
    text = page("quickstart")
    declaration = next(block for block in blocks(text, "python") if block.startswith("# uwsgicfg.py"))
    sample, = blocks(text, "ini")
    proc = invoke_with(tmp_path, declaration, uwsgiconf_cli, "compile")
    assert proc.returncode == 0, proc.stderr
    assert_sample_is_output(sample, proc.stdout)


def test_the_check_sample_is_what_check_prints(tmp_path: Path) -> None:
    declaration, = blocks(page("configuration"), "python")
    sample = next(block for block in blocks(page("cli"), "text") if block.startswith("section 'uwsgi'"))
    proc = invoke_with(tmp_path, declaration, cli, "check")
    assert proc.returncode == 0, proc.stderr
    shown, printed = sample.splitlines(), proc.stdout.splitlines()
    assert len(shown) == len(printed)
    for shown_line, line in zip(shown, printed, strict=True):
        if shown_line.startswith("uWSGI here:"):  # this machine's uWSGI, not the sample's
            assert re.fullmatch(r"uWSGI here: \S+, version 2\.0\.\d+: supported \(2\.0\.21 or a later 2\.0\.x\)",
                                line), line
        elif shown_line.startswith("  spool: /var/tmp/uwsgiconf-mules-0/"):  # named after the directory compiled in
            assert re.sub(r"mules-\d+/[0-9a-f]{16} ", "", line) == re.sub(r"mules-0/[0-9a-f]{16} ", "", shown_line)
        elif "largest message" in shown_line:  # the socket limit depends on the machine's wmem_default
            assert line.startswith("  largest message: ") and line.endswith(shown_line.split("bytes to dispatch")[1])
        else:
            assert shown_line == line


def test_distribution_yaml_is_what_compile_writes_for_libyaml(tmp_path: Path) -> None:
    shown = re.findall(r"```yaml\n(.*?)```", page("distributions"), re.S)[0]
    lines = [normalise(line.strip()) for line in shown.splitlines() if line.strip()]
    proc = invoke_with(tmp_path, (ROOT / "examples" / "basic" / "uwsgicfg.py").read_text(), cli, "compile",
                       "--format", "yaml", "--yaml-dialect", "libyaml")
    assert proc.returncode == 0, proc.stderr
    shown_path = "/root/mules-venv/lib/python3.11/site-packages/uwsgiconf_mules/dispatch_mule.py"
    compiled = [normalise(line.strip()).replace("<dispatch_mule>", shown_path) for line in proc.stdout.splitlines()]
    assert len(lines) == len(compiled)
    for shown_line, line in zip(lines, compiled, strict=True):
        if shown_line.endswith('..."'):  # shortened
            assert line.startswith(shown_line.removesuffix('..."'))
        else:
            assert shown_line == line


def test_distribution_command_loads_the_plugin_first() -> None:
    commands = blocks(page("distributions"), "sh")[0]
    command = commands.replace("\\\n", " ")
    uwsgi = next(line for line in command.splitlines() if line.startswith("uwsgi "))
    assert uwsgi.startswith("uwsgi --plugin python3 --virtualenv ~/mules-venv --yaml app.yaml ")
    assert "~/mules-venv/bin/uwsgiconf-mules compile --format yaml > app.yaml" in command


def test_supported_versions_are_the_matrix_oldest_first() -> None:
    rows = re.findall(r"^\| ([^|]+) \| [^|]+ \| [^|]+ \| ([^|]+) \|$", section("distributions", "Supported versions"),
                      re.M)
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
    example = blocks(page("testing"), "python")[0]
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
    (tmp_path / "test_signup.py").write_text(example)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_signup.py"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
                          env={"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 passed" in proc.stdout


def test_schedules_page_declaration_compiles_checks_and_its_test_runs_with_the_plugin(tmp_path: Path) -> None:
    text = page("schedules")
    declaration, tasks, flagged, example = blocks(text, "python")
    (tmp_path / "shop").mkdir()
    (tmp_path / "shop" / "__init__.py").write_text("")
    (tmp_path / "shop" / "tasks.py").write_text(tasks)
    (tmp_path / "uwsgicfg.py").write_text(declaration)
    checked = invoke_with(tmp_path, declaration, cli, "check")
    assert checked.returncode == 0, checked.stderr
    sample = next(block for block in blocks(text, "text") if "next:" in block).strip()
    shown = next(line.strip() for line in checked.stdout.splitlines() if "schedule shop.tasks:nightly_report:" in line)
    assert shown.partition("; next: ")[0] == sample.partition("; next: ")[0]
    assert shown.endswith("; missed: skip (grace 60 s)") and sample.endswith("; missed: skip (grace 60 s)")
    namespace: dict[str, Any] = {}
    exec(declaration.replace("uwsgi_configuration", "_") + flagged, namespace)
    assert namespace["section"].mules_declarations.schedules[-1].host_env == "SHOP_SCHEDULES"
    (tmp_path / "pytest.ini").write_text("[pytest]\nuwsgiconf_mules_config = uwsgicfg.py\npythonpath = .\n")
    (tmp_path / "test_reports.py").write_text(example)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_reports.py"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
                          env={"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout


def test_routing_page_declaration_compiles_and_its_commands_exist(tmp_path: Path) -> None:
    text = page("rq")
    declaration = blocks(text, "python")[0]
    body = ("from uwsgiconf_mules import Section\nsection = Section()\n" + declaration
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
    declare_block, pushers_block, sentry_block = blocks(page("watching"), "python")
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
    hooked: dict[str, Any] = {}
    exec(sentry_block, hooked)
    error = ValueError("boom")
    hooked["task_failed"]("app:fail", (1,), {"k": 2}, error, 3)
    assert captured == [("task", "app:fail"), ("mule", 3), ("args", "(1,)"), ("kwargs", "{'k': 2}"),
                        ("exception", error), ("exit", None)]


def test_the_sample_of_top_has_the_columns_top_prints() -> None:
    sample = re.search(r"```text\n(uWSGI .*?)```", page("watching"), re.S)
    assert sample
    view = {"stats": "127.0.0.1:9191", "uwsgi": {"version": "2.0.31", "pid": 1}, "time": 0.0,
            "mules": [{"id": 1, "kind": "dispatch", "farms": ["pair"], "running": None, "tasks": {"a:b": {}}}],
            "farms": [{"name": "pair", "mules": [1], "queued": 0, "queue_bytes": 0}]}
    printed = [line for line in render(view).splitlines() if line.startswith(("MULE", "FARM", "TASK"))]
    shown = [line for line in sample[1].splitlines() if line.startswith(("MULE", "FARM", "TASK"))]
    assert [line.split() for line in shown] == [line.split() for line in printed]
    declared = declare(mules=1, stats="127.0.0.1:1").metric_names()
    names = {name.split(".", 2)[2] if name.startswith(("mule.", "farm.")) else name for name, _ in declared}
    table = page("watching")
    assert all(f"`{name}`" in table or f".{name}`" in table for name in names)


def test_the_benchmarks_page_includes_the_benchmarks_account() -> None:
    assert '--8<-- "benchmarks/README.md"' in page("benchmarks")
    assert (ROOT / "benchmarks" / "README.md").exists()


def test_the_runtime_example_queues_what_its_comments_say(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from uwsgiconf_mules import testing

    example = blocks(page("runtime"), "python")[0]
    (tmp_path / "uwsgicfg.py").write_text(
        "from uwsgiconf_mules import Section\nsection = Section()\n"
        "section.workers.set_mules_params(mules=[None, None, 'inbox.py'], farms=["
        "section.workers.mule_farm('fast', [1, 2]), section.workers.mule_farm('slow', [3])])\n"
        "uwsgi_configuration = section.as_configuration()\n")
    (tmp_path / "docs_runtime_example.py").write_text(example)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with testing.capture(config=str(tmp_path / "uwsgicfg.py")) as outbox:
            module = importlib.import_module("docs_runtime_example")
    finally:
        sys.modules.pop("docs_runtime_example", None)
    assert [(call.key, call.target.name, call.args) for call in outbox] == [
        ("docs_runtime_example:resize", "fast", (42,)), ("docs_runtime_example:resize", "fast", (42,))]
    assert [(sent.target.name, sent.message) for sent in outbox.sent] == [("slow", b"reindex")]
    assert module.resize.target.mules == (module.Mule(1), module.Mule(2))  # "runs in mule 1 or 2"


# What the landed changes say, held to the code


SOURCE = "\n".join(path.read_text() for path in sorted((ROOT / "src").rglob("*.py")))


def sample_pattern(sample: str) -> str:
    """A quoted line of a page as a regex: ``N``, ``K`` and ``M`` a number, ``...`` and ``<why>`` any text."""
    parts = re.split(r"(\.\.\.|<why>|\b[NKM]\b)", sample)
    return "".join(".*" if part in ("...", "<why>") else r"\d+" if part in ("N", "K", "M") else re.escape(part)
                   for part in parts)


def test_the_presets_page_compiles_as_the_tested_preset(tmp_path: Path) -> None:
    from support.helpers import EXPECTED
    from uwsgiconf_mules import MulesMixin

    declaration, mixin = blocks(page("presets"), "python")
    assert declaration.startswith("# uwsgicfg.py\n")
    proc = invoke_with(tmp_path, declaration, uwsgiconf_cli, "compile")
    assert proc.returncode == 0, proc.stderr
    assert normalise(proc.stdout) == (EXPECTED / "presets" / "configure_uwsgi.ini").read_text()
    assert "class ShopSection(MulesMixin, NiceSection):" in mixin
    from uwsgiconf.presets.nice import Section as NiceSection
    with pytest.raises(TypeError, match=r"MulesMixin"):  # "the other order is refused with a TypeError"
        type("Wrong", (NiceSection, MulesMixin), {})


def test_the_stats_addresses_the_pages_allow_are_the_ones_accepted() -> None:
    from uwsgiconf_mules.errors import MulesConfigurationError

    for allowed in ("127.0.0.1:9191", "127.8.9.10:9191", "localhost:9191", "[::1]:9191", "/run/app/stats.sock"):
        assert ("stats", allowed) in declare(mules=1, stats=allowed).options()
    for refused in ("0.0.0.0:9191", "example.com:9191", "127.1:9191", "127.0.0.1:abc", "[::]:9191",
                    "/run/app/my stats.sock", "stats.sock"):
        with pytest.raises(MulesConfigurationError):
            declare(mules=1, stats=refused)
    options = dict(declare(mules=1, stats="/run/app/stats.sock").options())
    assert options["hook-master-start"] == "chmod:/run/app/stats.sock 600"  # "chmod 600 at master start"
    assert "`chmod 600` at master start, through a\n  `hook-master-start` line" in page("security")


def test_the_bounds_the_configuration_page_states_are_the_code_s() -> None:
    from uwsgiconf_mules import declarations as _declarations

    text = re.sub(r"\s+", " ", page("configuration"))
    assert _declarations.MAX_MULES == 262_140 and "more than 262,140 mules and farms" in text
    assert _declarations.ENV_MAX == 131_071 and "a declarations record over 131,071 bytes" in text
    assert _declarations.C_INT_MAX == 2_147_483_647 and "above 2,147,483,647" in text


def test_the_spool_figures_of_the_pages_are_the_code_s() -> None:
    from uwsgiconf_mules.protocol import spool as _spool

    reloads = re.sub(r"\s+", " ", page("reloads"))
    assert _spool.DEFAULT_LIMIT == 256 * 2**20 and "Past 256 MiB" in reloads
    assert _spool.DEFAULT_LIMIT // _spool.DEAD_SHARE == 32 * 2**20
    assert "an eighth of the spool's limit (32 MiB" in reloads
    assert _spool.DEAD_FILES == 10_000 and "and 10,000 files" in reloads
    assert _spool.STALE_AFTER == 600 and "nothing changed in for 10 minutes" in reloads


def test_the_log_lines_the_reloads_page_quotes_are_the_mules(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    from uwsgiconf_mules.mule import startup as _startup

    (tmp_path / "1.stop").write_text("{}")  # a record is there: a start without one reads none

    said = section("reloads", "What the log says")
    quoted = [re.sub(r"\s+", " ", sample) for sample in re.findall(r"`([^`]+)`", said)]

    class Stopped:  # the records two stops left: one kept 5 of which 3 remain, one lost 2 to a full disk
        path = "/var/spool/app"

        def part(self, name: str) -> str:
            return str(tmp_path)

        def check_stops(self) -> list[tuple[int, int, int, dict[str, int]]]:
            return [(1, 5, 3, {}), (2, 0, 0, {"the disk of the spool /var/spool/app is full": 2})]

    with caplog.at_level("ERROR", logger="uwsgiconf_mules"):
        _startup.check_stops(Stopped())  # type: ignore[arg-type]
    logged = [record.getMessage() for record in caplog.records]
    checked = [sample for sample in quoted if "lost calls since" in sample or "could not keep" in sample]
    assert len(checked) == 2
    for sample in checked:
        assert any(re.search(sample_pattern(sample), line) for line in logged), (sample, logged)
    for sample in set(quoted) - set(checked):  # the others: each fixed part as the mules word it
        for part in re.split(r"\.\.\.|<why>|\b[NKM]\b", sample):
            assert part.strip(" :") in SOURCE, (sample, part)


def test_the_pages_quote_what_top_prints_of_counters_and_the_spool() -> None:
    view = {"stats": "127.0.0.1:9191", "uwsgi": {"version": "2.0.31", "pid": 2657}, "time": 0.0,
            "counting_since": 0.0, "spool_problem": "spool: /x can be written by others (mode 777)",
            "mules": [], "farms": []}
    header, problem = render(view).splitlines()[:2]
    sample = re.search(r"```text\n(uWSGI .*?)\n", page("watching"))
    assert sample
    times = r"\d\d:\d\d:\d\d"
    assert re.sub(times, "T", sample[1]) == re.sub(times, "T", header)
    assert problem.startswith("SPOOL UNUSABLE: spool: /x ") and problem.endswith(
        ": offloaded calls to dispatch mules are refused")
    assert "`SPOOL\nUNUSABLE: <why>: ...`" in page("watching")


def test_the_loop_engines_page_quotes_what_a_worker_says(monkeypatch: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    from uwsgiconf_mules.runtime import engines as _engines, instance as _instance, sending as _sending

    for name, value in (("_engine", None), ("_waiter", None), ("_send_sockets", [])):
        monkeypatch.setattr(_sending, name, value)
    monkeypatch.setattr(_engines, "UGREEN_UNSAFE", (3, 0))  # the page quotes Python 3.11 and later

    class Worker:
        opt: ClassVar[dict[str, bytes]] = {"async": b"10", "ugreen": b"true"}

        def worker_id(self) -> int:
            return 1

    monkeypatch.setattr(_instance, "uwsgi", Worker())
    _sending.wait_for_room(0.0, 0.0)
    said = [record.getMessage() for record in caplog.records if "loop engine" in record.getMessage()]
    quoted, = blocks(page("loop-engines"), "text")
    assert said == [quoted.strip()]


def test_the_rq_page_quotes_what_the_worker_says() -> None:
    text = re.sub(r"\s+", " ", page("rq"))
    assert "`job refused: RQ cannot read its field(s) 'timeout' (AssertionError); nothing ran ...`" in text
    assert "job refused: RQ cannot read its field(s) " in SOURCE and "holds no hash" in SOURCE
    from uwsgiconf_mules.contrib.rq import worker as _rq_worker

    assert "quitting" in inspect.getsource(_rq_worker)


def test_the_replay_hint_the_reloads_page_describes_is_in_the_order_spool_replay_tries() -> None:
    from uwsgiconf_mules import cli as cli_module

    text = re.sub(r"\s+", " ", page("reloads"))
    described = text[text.index("`replay` says how to start the mules"):]
    described = described[:described.index(" - **")]
    order = ["touch-mules-reload", "master fifo", "touch-reload", "pid file"]
    assert [described.index(name) for name in order] == sorted(described.index(name) for name in order)
    keys = cli_module.spool._RELOAD_KEYS
    assert keys[:3] == ("touch-mules-reload", "master-fifo", "touch-reload")
    assert all("pidfile" in key for key in keys[3:])


def test_the_results_pages_option_and_top_line_are_what_the_code_renders() -> None:
    text = page("results")
    declared = declare(mules=1, stats="127.0.0.1:9191",
                       results={"items": 10000, "item_size": 16384, "store": "/var/lib/shop/results.cache"})
    option, = blocks(text, "ini")
    assert option.strip() == f"cache2 = {dict(declared.options())['cache2']}"
    line = next(block for block in blocks(text, "text") if block.startswith("RESULTS STORE")).strip()
    view = {"uwsgi": {"version": "2.0.31", "pid": 1}, "stats": "127.0.0.1:9191", "time": 0, "mules": [], "farms": [],
            "results": {"name": "uwsgiconf_mules_results", "items": 1000, "max_items": 1000, "evicted": 70}}
    assert render(view).splitlines()[-1] == line
