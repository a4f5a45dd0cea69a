"""The ``uwsgiconf-mules`` command: compile (ini, yaml for each YAML dialect) and check.

In this process through click's ``CliRunner`` (``helpers.invoke_with``), and a few smoke tests of
the installed console script as a subprocess (``main()``, real exit codes).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import pytest
from uwsgiconf.cli import base as uwsgiconf_cli

from support.harness import BIN
from support.helpers import (
    CASES,
    DEBIAN_CFLAGS,
    EXPECTED,
    PIP_CFLAGS,
    assert_one_line_error,
    compile_with,
    expected,
    fake_uwsgi,
    invoke,
    invoke_with,
    normalise,
    source,
    write_conf,
)
from uwsgiconf_mules.cli import cli
from uwsgiconf_mules.config.formats import double_quoted

CLI = str(BIN / "uwsgiconf-mules")
DIALECTS = ["embedded", "libyaml"]


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("name", sorted(CASES))
def test_yaml_matches_expected_file(tmp_path: Path, name: str, dialect: str) -> None:
    proc = invoke_with(tmp_path, source(name), cli, "compile", "--format", "yaml", "--yaml-dialect", dialect)
    assert proc.returncode == 0, proc.stderr
    assert normalise(proc.stdout) == expected(name, "yaml", dialect)


@pytest.mark.parametrize("name", sorted(CASES))
def test_ini_is_identical_to_uwsgiconf_compile(tmp_path: Path, name: str) -> None:
    ours = invoke_with(tmp_path, source(name), cli, "compile")
    theirs = invoke_with(tmp_path, source(name), uwsgiconf_cli, "compile")
    assert ours.returncode == theirs.returncode == 0
    assert normalise(ours.stdout) == normalise(theirs.stdout) == (EXPECTED / f"{name}.ini").read_text()


@pytest.mark.parametrize("dialect", DIALECTS)
def test_all_sections_of_a_module_are_rendered(tmp_path: Path, dialect: str) -> None:
    body = (
        "from uwsgiconf.config import Configuration\nfrom uwsgiconf_mules import Section\n"
        "a = Section()\na.workers.set_mules_params(mules=1)\n"
        "b = Section(name='other')\nb.workers.set_mules_params(farms=b.workers.mule_farm('x', 1))\n"
        "uwsgi_configuration = Configuration([a, b])\n"
    )
    proc = invoke_with(tmp_path, body, cli, "compile", "--format", "yaml", "--yaml-dialect", dialect)
    assert normalise(proc.stdout) == expected("two_sections", "yaml", dialect)


def with_procname(value: str) -> str:
    """The design case with ``procname = <value>`` (``value`` is Python source)."""
    return source("design").replace(
        "uwsgi_configuration =", f"section.main_process.set_naming_params(name={value})\nuwsgi_configuration =")


# What the embedded parser cannot carry; libyaml carries each but the line breaks.
BAD_VALUES = {
    "hash": ("'a#b'", "contains '#'"),
    "newline": ("'a\\nb'", "contains a line break"),
    "carriage return": ("'a\\rb'", "contains a line break"),
    "quote": ("'\"a'", "starts with a quote"),
    "single quote": ("\"'a\"", "starts with a quote"),
    "bracket": ("'[a'", "starts with '['"),
    "brace": ("'{a'", "starts with '{'"),
    "dash": ("'-a'", "starts with '-'"),
    "empty": ("''", "is empty"),
    "lone percent at the end": ("'100%'", "ends with a lone '%'"),
    "nul": ("'a\\0b'", "contains a NUL character"),
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_yaml_refuses_values_the_embedded_parser_would_mangle(tmp_path: Path, case: str) -> None:
    value, problem = BAD_VALUES[case]
    assert_one_line_error(invoke_with(tmp_path, with_procname(value), cli, "compile", "--format", "yaml",
                                      "--yaml-dialect", "embedded"),
                          "option 'procname' of section 'uwsgi' cannot be written as uWSGI YAML for the embedded "
                          "parser: its value", problem)


LIBYAML_BAD_VALUES = {
    "newline": ("'a\\nb'", "contains a line break"),
    "carriage return": ("'a\\rb'", "contains a line break"),
    "nul": ("'a\\0b'", "contains a NUL character"),
    "lone percent at the end": ("'100%'", "ends with a lone '%'"),
    "percent before a double quote": ("'100%\"'", "has '%' before '\"'"),
    "percent before a backslash": ("'100%\\\\'", "has '%' before '\\\\'"),
    "percent before a tab": ("'100%\\tx'", "has '%' before '\\t'"),
    "percent before non-ASCII": ("'100%é'", "has '%' before 'é'"),
}


@pytest.mark.parametrize("case", sorted(LIBYAML_BAD_VALUES))
def test_libyaml_dialect_refuses_what_libyaml_cannot_carry(tmp_path: Path, case: str) -> None:
    value, problem = LIBYAML_BAD_VALUES[case]
    assert_one_line_error(invoke_with(tmp_path, with_procname(value), cli, "compile", "--format", "yaml",
                                      "--yaml-dialect", "libyaml"),
                          "option 'procname' of section 'uwsgi' cannot be written as uWSGI YAML for libyaml: its "
                          "value", problem)


@pytest.mark.parametrize("case", sorted(set(BAD_VALUES) - set(LIBYAML_BAD_VALUES)))
def test_libyaml_dialect_carries_what_the_embedded_parser_cannot(tmp_path: Path, case: str) -> None:
    value, _ = BAD_VALUES[case]
    proc = invoke_with(tmp_path, with_procname(value), cli, "compile", "--format", "yaml", "--yaml-dialect", "libyaml")
    assert proc.returncode == 0, proc.stderr
    assert f"  procname: {double_quoted(ast.literal_eval(value))}" in proc.stdout.splitlines()


def test_libyaml_values_are_double_quoted_and_escaped(tmp_path: Path) -> None:
    value = "'%%k say \"hi\" C:\\\\dir\\ttab \\x1b[31m caf\\u00e9 \\u2028 \\x85 \\U0001f600 #x'"
    proc = invoke_with(tmp_path, with_procname(value), cli, "compile", "--format", "yaml", "--yaml-dialect", "libyaml")
    assert proc.returncode == 0, proc.stderr
    assert ('  procname: "%%k say \\"hi\\" C:\\\\dir\\ttab \\x1b[31m caf\u00e9 \\u2028 \\x85 \U0001f600 #x"'
            in proc.stdout.splitlines())


NAMES = {
    "option name": ("section._set('bad key', 'x')", "option name 'bad key' of section 'uwsgi' cannot be a uWSGI "
                    "YAML key"),
    "section name": ("section.name = 'my app'", "section name 'my app' cannot be a uWSGI YAML key"),
}


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("case", sorted(NAMES))
def test_yaml_refuses_names_that_are_not_plain_keys(tmp_path: Path, case: str, dialect: str) -> None:
    code, message = NAMES[case]
    body = source("design").replace("uwsgi_configuration =", f"{code}\nuwsgi_configuration =")
    assert_one_line_error(invoke_with(tmp_path, body, cli, "compile", "--format", "yaml", "--yaml-dialect", dialect),
                          message)


# Which YAML `compile --format yaml` writes: the parser of the uWSGI of this environment (`uwsgi --cflags`).

def compile_yaml_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, beside: str | None, on_path: str | None,
                      *args: str) -> subprocess.CompletedProcess[str]:
    """Compile the design case as YAML where this Python's folder holds a fake uwsgi with ``beside`` flags
    and PATH one with ``on_path`` flags (None: no uwsgi there)."""
    venv_bin, path_dir = tmp_path / "venv" / "bin", tmp_path / "path"
    venv_bin.mkdir(parents=True)
    path_dir.mkdir()
    if beside is not None:
        fake_uwsgi(venv_bin, beside)
    if on_path is not None:
        fake_uwsgi(path_dir, on_path)
    monkeypatch.setattr(sys, "executable", str(venv_bin / "python"))
    monkeypatch.setenv("PATH", str(path_dir))
    work = tmp_path / "work"
    work.mkdir()
    return invoke_with(work, source("design"), cli, "compile", "--format", "yaml", *args)


DETECTION = {
    "pip uwsgi in the venv": (PIP_CFLAGS, None, "embedded"),
    "debian uwsgi on PATH": (None, DEBIAN_CFLAGS, "libyaml"),
    "the venv's before PATH": (PIP_CFLAGS, DEBIAN_CFLAGS, "embedded"),
    "the venv's libyaml build": (DEBIAN_CFLAGS, PIP_CFLAGS, "libyaml"),
}


@pytest.mark.parametrize("case", sorted(DETECTION))
def test_yaml_is_written_for_the_parser_of_the_uwsgi_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           case: str) -> None:
    beside, on_path, dialect = DETECTION[case]
    proc = compile_yaml_here(tmp_path, monkeypatch, beside, on_path)
    assert proc.returncode == 0, proc.stderr
    assert normalise(proc.stdout) == expected("design", "yaml", dialect)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_explicit_yaml_dialect_overrides_detection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   dialect: str) -> None:
    other = DEBIAN_CFLAGS if dialect == "embedded" else PIP_CFLAGS
    proc = compile_yaml_here(tmp_path, monkeypatch, other, None, "--yaml-dialect", dialect)
    assert normalise(proc.stdout) == expected("design", "yaml", dialect)
    proc = compile_yaml_here(tmp_path / "none", monkeypatch, None, None, "--yaml-dialect", dialect)
    assert normalise(proc.stdout) == expected("design", "yaml", dialect)


def test_uwsgi_option_names_the_binary_to_ask(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    debian = fake_uwsgi(tmp_path / "debian", DEBIAN_CFLAGS)
    proc = compile_yaml_here(tmp_path, monkeypatch, PIP_CFLAGS, PIP_CFLAGS, "--uwsgi", str(debian))
    assert normalise(proc.stdout) == expected("design", "yaml", "libyaml")


def test_no_uwsgi_found_is_one_line_saying_to_pass_the_dialect(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              ) -> None:
    assert_one_line_error(compile_yaml_here(tmp_path, monkeypatch, None, None),
                          "no uwsgi next to", "or on PATH", "--yaml-dialect embedded", "--yaml-dialect libyaml")


UNREADABLE = {
    "without YAML": ("-O2 -DUWSGI_VERSION=\"\\\"2.0.28\\\"\" -DUWSGI_SSL", 0,
                     "(uWSGI 2.0.28) was built without YAML support: use --format ini"),
    "not uWSGI": ("hello", 0, "--cflags printed no uWSGI build flags"),
    "failing": (PIP_CFLAGS, 3, "--cflags exited with 3"),
}


@pytest.mark.parametrize("case", sorted(UNREADABLE))
def test_a_uwsgi_that_cannot_tell_its_parser_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         case: str) -> None:
    cflags, status, message = UNREADABLE[case]
    uwsgi = fake_uwsgi(tmp_path / "odd", cflags, status=status)
    assert_one_line_error(compile_yaml_here(tmp_path, monkeypatch, None, None, "--uwsgi", str(uwsgi)), message)


def test_ini_never_asks_uwsgi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    broken = fake_uwsgi(tmp_path / "broken", "", status=3)
    monkeypatch.setenv("PATH", str(broken.parent))
    proc = invoke_with(tmp_path, source("design"), cli, "compile", "--uwsgi", str(broken))
    assert proc.returncode == 0, proc.stderr
    assert normalise(proc.stdout) == expected("design", "ini")


def test_invalid_declaration_through_our_compile_is_one_line(tmp_path: Path) -> None:
    body = source("design").replace("workers.mule_farm('slow', [3, 4])", "workers.mule_farm('fast', [3, 4])")
    proc = invoke_with(tmp_path, body, cli, "compile", "--format", "yaml")
    assert (proc.returncode, proc.stdout, proc.stderr.strip()) == (1, "", "farm 'fast' is declared twice")


def test_a_module_that_fails_to_load_is_one_line(tmp_path: Path) -> None:
    proc = invoke_with(tmp_path, "raise RuntimeError('broken module')\n", cli, "compile")
    assert proc.returncode == 1
    assert proc.stderr.strip() == "cannot load the configuration module: RuntimeError: broken module"


def test_usage_errors_exit_2_and_version_comes_from_metadata(tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return invoke(tmp_path, cli, *args)

    assert run("compile", "--format", "xml").returncode == 2
    assert run("compile", "missing.py").returncode == 2
    assert run("--help").returncode == 0 and "check" in run("--help").stdout
    assert run("--version").stdout.strip() == f"uwsgiconf-mules, version {version('uwsgiconf-mules')}"


def test_check_prints_a_summary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from uwsgiconf_mules.declarations import default_spool_dir

    monkeypatch.delenv("DJANGO_SETTINGS_MODULE", raising=False)
    uwsgi = fake_uwsgi(tmp_path / "bin", PIP_CFLAGS)
    proc = invoke_with(tmp_path, source("design"), cli, "check", "--uwsgi", str(uwsgi))
    monkeypatch.chdir(tmp_path)  # the default spool is named after the directory the config is read in
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[:6] == [
        "section 'uwsgi' of configuration 'uwsgicfg':",
        "  mules: 4",
        "  dispatch mules (run offloaded calls): 1, 2, 3, 4",
        "  programmed mules: none",
        "  farm fast: mules 1, 2",
        "  farm slow: mules 3, 4",
    ]
    assert lines[6].startswith("  largest message: ") and "bytes to dispatch mules" in lines[6]
    assert lines[7:] == [
        "  send timeout: 5 s; harakiri: none",
        f"  spool: {default_spool_dir()} (the default: one per directory the config is compiled in and section, "
        "never removed; `uwsgiconf-mules spool purge --stale` removes those nobody uses, "
        "set_mules_params(spool_dir=...) chooses one)",
        "  workers: threads or processes: a sender waiting for room in a full queue holds its own request only; mules "
        "run no loop engine (a task that uses gevent joins its greenlets before it returns)",
        f"uWSGI here: {uwsgi}, version 2.0.31: supported (2.0.21 or a later 2.0.x)",
        "  build: YAML read by uWSGI's embedded parser (as pip builds it); python built in",
    ]


@pytest.mark.parametrize("declaration, django, warnings", [
    ("mules=3, farms=workers.mule_farm('fast', [2])", False, [
        "dispatch mule(s) 1, 3 in no farm: they run only calls sent to them by id (Mule(n).offload(), "
        "mule_offload(n); mule_offload() with no target sends to mule 1)"]),
    ("mules=2", False, []),  # no farms: every mule is addressed by id
    ("farms=workers.mule_farm('mail', 1)", True, [
        "this is a Django project (manage.py here, or DJANGO_SETTINGS_MODULE set) but the config sets no "
        "DJANGO_SETTINGS_MODULE: under --lazy-apps dispatch mules cannot set Django up and tasks that use it fail; "
        "add section.env('DJANGO_SETTINGS_MODULE', 'mysite.settings')"]),
    ("farms=workers.mule_farm('mail', 1)\nsection.env('DJANGO_SETTINGS_MODULE', 'mysite.settings')", True, []),
], ids=["farmless", "no-farms", "django-unset", "django-set"])
def test_check_warns_about_farmless_dispatch_mules_and_django_settings(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, declaration: str, django: bool, warnings: list[str]) -> None:
    monkeypatch.delenv("DJANGO_SETTINGS_MODULE", raising=False)
    if django:
        (tmp_path / "manage.py").write_text("")
    declaration, _, more = declaration.partition("\n")
    body = source("design").replace(CASES["design"],
                                    f"workers.set_mules_params({declaration}, spool_dir='/var/x')\n{more}\n")
    proc = invoke_with(tmp_path, body, cli, "check")
    assert proc.returncode == 0, proc.stderr
    assert [line[11:] for line in proc.stdout.splitlines() if line.startswith("  warning: ")] == warnings
    assert "  spool: /var/x" in proc.stdout.splitlines()


def test_check_says_farm_mule_for_one_mule(tmp_path: Path) -> None:
    body = source("design").replace(CASES["design"], "workers.set_mules_params(farms=workers.mule_farm('one', 1))\n")
    proc = invoke_with(tmp_path, body, cli, "check")
    assert "  farm one: mule 1" in proc.stdout.splitlines()


UWSGI_HERE = {
    "debian": (DEBIAN_CFLAGS, "", [
        "uWSGI here: {uwsgi}, version 2.0.21-debian: supported (2.0.21 or a later 2.0.x)",
        "  build: YAML read by libyaml (as Debian and Ubuntu build it); python as a plugin (start it with "
        "--plugin python3 and, for a virtualenv, --virtualenv)"]),
    "too old": (PIP_CFLAGS.replace("2.0.31", "2.0.20"), "", [
        "uWSGI here: {uwsgi}, version 2.0.20: not supported: uwsgiconf-mules supports uWSGI 2.0.21 to 2.0.x",
        "  build: YAML read by uWSGI's embedded parser (as pip builds it); python built in",
        "  warning: uWSGI 2.0.20 is not supported"]),
    "too new": (PIP_CFLAGS.replace("2.0.31", "2.1.0"), "", [
        "uWSGI here: {uwsgi}, version 2.1.0: not supported: uwsgiconf-mules supports uWSGI 2.0.21 to 2.0.x",
        "  build: YAML read by uWSGI's embedded parser (as pip builds it); python built in",
        "  warning: uWSGI 2.1.0 is not supported"]),
    "version from --version, no YAML": ("-O2 -DUWSGI_SSL", "2.0.23", [
        "uWSGI here: {uwsgi}, version 2.0.23: supported (2.0.21 or a later 2.0.x)",
        "  build: no YAML support (use --format ini); python as a plugin (start it with --plugin python3 and, for "
        "a virtualenv, --virtualenv)"]),
    "not uWSGI": ("hello", "", [
        "uWSGI here: {uwsgi}",
        "  warning: cannot tell how it was built: {uwsgi} --cflags printed no uWSGI build flags: is it uWSGI?"]),
}


@pytest.mark.parametrize("case", sorted(UWSGI_HERE))
def test_check_says_which_uwsgi_is_here_and_whether_it_is_supported(tmp_path: Path, case: str) -> None:
    cflags, version_text, lines = UWSGI_HERE[case]
    uwsgi = fake_uwsgi(tmp_path / "bin", cflags, version_text)
    proc = invoke_with(tmp_path, source("design"), cli, "check", "--uwsgi", str(uwsgi))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[10:] == [line.format(uwsgi=uwsgi) for line in lines]


def test_check_finds_the_uwsgi_of_this_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    venv_bin = tmp_path / "venv" / "bin"
    uwsgi = fake_uwsgi(venv_bin, DEBIAN_CFLAGS)
    monkeypatch.setattr(sys, "executable", str(venv_bin / "python"))
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    proc = invoke_with(tmp_path, source("design"), cli, "check")
    assert proc.stdout.splitlines()[10] == (
        f"uWSGI here: {uwsgi}, version 2.0.21-debian: supported (2.0.21 or a later 2.0.x)")
    uwsgi.unlink()
    proc = invoke_with(tmp_path, source("design"), cli, "check")
    assert proc.returncode == 0
    assert proc.stdout.splitlines()[10:] == [
        f"uWSGI here: none next to {venv_bin / 'python'} or on PATH (compile where uWSGI runs; compile --format yaml "
        "needs --yaml-dialect then)"]


def test_check_warns_about_what_matters(tmp_path: Path) -> None:
    body = source("design").replace(
        CASES["design"], "workers.set_mules_params(mules=['feed.py', None], msg_buffer=1024, "
        "farms=[workers.mule_farm('a', [1, 2]), workers.mule_farm('b', [2])])\n")
    proc = invoke_with(tmp_path, body, cli, "check")
    assert proc.returncode == 0
    warnings = [line.strip() for line in proc.stdout.splitlines() if "warning:" in line]
    assert warnings == [
        "warning: mule 2 is in farms 'a', 'b': their work shares one process",
        "warning: farm 'a' includes programmed mule(s) 1: they take farm messages only while waiting in "
        "get_message(farms=True)",
        "warning: farm 'a' includes dispatch mule(s) 2: Farm('a').send() is refused (a dispatch mule would drop a "
        "plain message); offloads run in either",
        "warning: msg_buffer 1024 is small: messages over 4576 bytes are refused and bursts fill the queue quickly",
    ]


CHECK_PROBLEMS = (
    "from uwsgiconf.config import Configuration, Section as Plain\nfrom uwsgiconf_mules import Section\n"
    "plain = Plain(name='plain')\nplain.workers.set_mules_params(mules=2, msg_buffer_recv=1024)\n"
    "ours = Section()\nours.workers.set_mules_params(mules=1)\n"
    "uwsgi_configuration = Configuration([ours, plain])\n"
)
CHECK_PROBLEM_LINES = [
    "section 'plain': option mule-msg-recv-size does not exist in uWSGI 2.0.x (--strict rejects it)",
    "section 'plain' declares mules or farms without uwsgiconf_mules.Section: the runtime cannot see them; "
    "use `from uwsgiconf_mules import Section`",
]


def test_check_reports_each_problem_and_exits_1(tmp_path: Path) -> None:
    proc = invoke_with(tmp_path, CHECK_PROBLEMS, cli, "check")
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == CHECK_PROBLEM_LINES


def test_check_rejects_an_invalid_declaration(tmp_path: Path) -> None:
    body = source("design").replace("mule_farm('fast', 2)", "mule_farm('fa st', 2)")
    proc = invoke_with(tmp_path, body, cli, "check")
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("farm name 'fa st' contains whitespace")


# The installed console script, as a subprocess: main(), the process exit codes, stdout and stderr.

def test_command_prints_its_version_and_exits_2_on_a_usage_error(tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([CLI, *args], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL, check=False)

    assert run("--version").stdout.strip() == f"uwsgiconf-mules, version {version('uwsgiconf-mules')}"
    assert run("compile", "--format", "xml").returncode == 2


@pytest.mark.parametrize("dialect", DIALECTS)
def test_command_compiles_yaml(tmp_path: Path, dialect: str) -> None:
    proc = compile_with(tmp_path, source("design"), CLI, "compile", "--format", "yaml", "--yaml-dialect", dialect)
    assert proc.returncode == 0, proc.stderr
    assert normalise(proc.stdout) == expected("design", "yaml", dialect)


def test_command_keeps_escape_codes_as_uwsgiconf_compile_does(tmp_path: Path) -> None:
    """click would strip ANSI codes from a pipe; the config must keep what the user wrote."""
    body = source("design").replace("uwsgi_configuration =", "section.print_out('\\x1b[31mred', indent='')\n"
                                    "uwsgi_configuration =")
    ours = compile_with(tmp_path, body, CLI, "compile")
    theirs = compile_with(tmp_path, body, str(BIN / "uwsgiconf"), "compile")
    assert "print = \x1b[31mred" in theirs.stdout.splitlines()
    assert normalise(ours.stdout) == normalise(theirs.stdout)


def test_styled_prints_are_written_for_libyaml(tmp_path: Path) -> None:
    """uwsgiconf's styled prints use uWSGI's %[ (ESC): libyaml gets it as an escape, not a raw control character."""
    body = source("design").replace("Section()", "Section(style_prints=True)")
    proc = invoke_with(tmp_path, body, cli, "compile", "--format", "yaml", "--yaml-dialect", "libyaml")
    assert '  print: "\\e[31;49m>   This configuration was automatically generated using\\e[0m"' in (
        proc.stdout.splitlines())
    embedded = invoke_with(tmp_path, body, cli, "compile", "--format", "yaml", "--yaml-dialect", "embedded")
    assert "  print: %[[31;49m>   This configuration was automatically generated using%[[0m" in (
        embedded.stdout.splitlines())


def test_command_check_exits_1_with_one_line_per_problem(tmp_path: Path) -> None:
    proc = compile_with(tmp_path, CHECK_PROBLEMS, CLI, "check")
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == CHECK_PROBLEM_LINES


SPOOLED = ("from uwsgiconf_mules import Section\nsection = Section()\n"
           "section.workers.set_mules_params(mules=2, spool_dir={spool!r})\n"
           "uwsgi_configuration = section.as_configuration()\n")


def test_spool_lists_replays_and_purges(tmp_path: Path) -> None:
    from uwsgiconf_mules.protocol import spool as _spool

    kept = _spool.Spool(str(tmp_path / "spool"))
    body = SPOOLED.format(spool=kept.path)
    listed = invoke_with(tmp_path, body, cli, "spool", "list")
    assert (listed.returncode, listed.stdout.splitlines()[1]) == (0, "  empty (nothing was kept yet)")
    kept.create()
    kept.write("queue", b"mtasks:resize\x00", "farm:fast")
    kept.write("dead", b"atasks:gone\x00body", "unknown task tasks:gone: ...")
    kept.write("dead", b"atasks:gone\x00body", "unknown task tasks:gone: ...")
    kept.write("dead", b"\xfeUCM\x02forged", _spool.UNTRUSTED + "not sent by this uWSGI instance")
    listed = invoke_with(tmp_path, body, cli, "spool", "list")
    assert listed.returncode == 0
    assert listed.stdout.splitlines() == [
        f"section 'uwsgi': spool {kept.path}",
        "  queued for the next mules: 1",
        "    1 x tasks:resize",
        "  being run, or left by dead mules: 0",
        "  dead letters: 3",
        "    1 x ? (untrusted: not sent by this uWSGI instance)",
        "    2 x tasks:gone (unknown task tasks:gone: ...)",
    ]
    replayed = invoke_with(tmp_path, body, cli, "spool", "replay")
    assert replayed.stdout.splitlines()[1:] == [
        "  replayed 2 dead letter(s): they run when the dispatch mules next start (a delayed call still ahead of its "
        "time, back among the delayed calls of its target, when due)",
        "  kept 1 untrusted message(s): never replayed (purge them)",
        "  to start them now: kill -HUP <pid of the uWSGI master> (a graceful reload of the instance); for a file to "
        "touch instead, declare set_mules_params(touch_reload=...)"]
    assert len(kept.files("queue")) == 3 and len(kept.files("dead")) == 1
    purged = invoke_with(tmp_path, body, cli, "spool", "purge")
    assert purged.stdout.splitlines()[1] == "  purged 1 file(s) from dead"
    purged = invoke_with(tmp_path, body, cli, "spool", "purge", "--all")
    assert purged.stdout.splitlines()[1] == "  purged 3 file(s) from queue, claimed, dead"
    assert kept.files("queue") == kept.files("dead") == []


@pytest.mark.parametrize("options, hint", [
    ("section.workers.set_mules_params(touch_reload='/run/shop/mules.reload')",
     "touch /run/shop/mules.reload (reloads the mules only)"),
    ("section.master_process.set_basic_params(fifo_file='/run/shop/uwsgi.fifo')",
     "echo r > /run/shop/uwsgi.fifo (a graceful reload of the instance)"),
    ("section.main_process.set_basic_params(touch_reload='/run/shop/reload')",
     "touch /run/shop/reload (a graceful reload of the instance)"),
    ("section.main_process.set_pid_file('/run/shop/uwsgi.pid')",
     "kill -HUP $(cat /run/shop/uwsgi.pid) (a graceful reload of the instance)"),
], ids=["mules-touch", "fifo", "touch", "pidfile"])
def test_spool_replay_says_how_to_restart_the_mules_of_this_config(tmp_path: Path, options: str, hint: str) -> None:
    body = SPOOLED.format(spool=str(tmp_path / "spool"))
    body = body.replace("uwsgi_configuration", f"{options}\nuwsgi_configuration")
    (tmp_path / "spool").mkdir(mode=0o700)
    replayed = invoke_with(tmp_path, body, cli, "spool", "replay")
    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout.splitlines()[-1] == f"  to start them now: {hint}"
    compiled = invoke_with(tmp_path, body, cli, "compile")
    (tmp_path / "app.ini").write_text(compiled.stdout)
    replayed = invoke(tmp_path, cli, "spool", "replay", "app.ini")
    assert replayed.stdout.splitlines()[-1] == f"  to start them now: {hint}"


def test_spool_purge_stale_removes_only_default_spools_nobody_needs(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from uwsgiconf_mules import declarations as _declarations
    from uwsgiconf_mules.protocol import spool as _spool

    root = tmp_path / "uwsgiconf-mules-0"
    monkeypatch.setattr(_declarations, "default_spool_dir", lambda section="uwsgi": str(root / ("0" * 16)))
    spools = {name: _spool.Spool(str(root / name)) for name in ("empty", "dead", "running", "recent")}
    for kept in spools.values():
        kept.create()
    spools["dead"].write("dead", b"atasks:gone\x00", "unknown task")
    (Path(spools["running"].part("mules")) / "1.pid").write_text(str(os.getpid()))
    (Path(spools["empty"].part("mules")) / "1.pid").write_text("999999999")  # a mule that is gone
    old = time.time() - _spool.STALE_AFTER - 1
    for name in ("empty", "dead", "running"):
        for path in [root / name, *((root / name / part) for part in _spool.PARTS)]:
            os.utime(path, (old, old))
    purged = invoke(tmp_path, cli, "spool", "purge", "--stale")  # no uwsgicfg.py here: none needed
    assert purged.returncode == 0, purged.stderr
    assert purged.stdout.splitlines() == [
        f"default spools in {root}: 4",
        "  removed 1 stale (no call, no running mule, unchanged for 10 min)",
        "  kept 3 (calls kept in them, a running mule, or a recent change)",
        f"    {root / 'dead'}", f"    {root / 'recent'}", f"    {root / 'running'}"]
    assert sorted(os.listdir(root)) == ["dead", "recent", "running"]
    assert invoke(tmp_path, cli, "spool", "list", "--stale").returncode == 2


def test_spool_reads_a_compiled_config_and_says_what_it_cannot_read(tmp_path: Path) -> None:
    from uwsgiconf_mules.protocol import spool as _spool

    kept = _spool.Spool(str(tmp_path / "spool"))
    kept.create()
    (Path(kept.part("dead")) / "0-0-0.call").write_bytes(b"garbage")
    ini = tmp_path / "app.ini"
    ini.write_text(f"[uwsgi]\nenv = UWSGICONF_MULES=v2;mules=1;send-timeout=5;spool={kept.path}\n")
    listed = invoke(tmp_path, cli, "spool", "list", str(ini))
    assert listed.returncode == 1
    assert listed.stdout.splitlines()[0] == f"line 2: spool {kept.path}"
    assert listed.stderr.strip() == f"{kept.part('dead')}/0-0-0.call: not a spool file"
    (tmp_path / "plain.ini").write_text("[uwsgi]\nworkers = 2\n")
    assert_one_line_error(invoke(tmp_path, cli, "spool", "list", "plain.ini"), "declares no dispatch mules")


def test_record_prints_the_record_of_a_module_or_of_a_compiled_config(tmp_path: Path) -> None:
    printed = invoke_with(tmp_path, source("routed"), cli, "record")
    assert printed.returncode == 0, printed.stderr
    namespace: dict[str, object] = {}
    exec(source("routed"), namespace)
    record = namespace["section"].mules_declarations.record()  # type: ignore[attr-defined]
    assert normalise(printed.stdout) == normalise(record) + "\n"  # the default spool is named after the directory
    for fmt, dialect in (("ini", "embedded"), ("yaml", "embedded"), ("yaml", "libyaml")):
        compiled = invoke(tmp_path, cli, "compile", "--format", fmt, "--yaml-dialect", dialect, "uwsgicfg.py")
        (tmp_path / f"app.{fmt}").write_text(compiled.stdout)
        assert invoke(tmp_path, cli, "record", f"app.{fmt}").stdout == printed.stdout


def test_record_and_worker_name_what_they_cannot_find(tmp_path: Path) -> None:
    (tmp_path / "plain.ini").write_text("[uwsgi]\nworkers = 2\n")
    assert_one_line_error(invoke(tmp_path, cli, "record", "plain.ini"),
                          "plain.ini has no declarations (UWSGICONF_MULES record)")
    assert_one_line_error(invoke_with(tmp_path, source("design"), cli, "worker"),
                          "uwsgicfg.py has no farms routed to an offload backend")
    assert_one_line_error(invoke_with(tmp_path, source("routed"), cli, "worker", "--farm", "local"),
                          "farm 'local' is not routed to an offload backend in uwsgicfg.py; routed: reports, mail")
    two = source("routed").replace("uwsgi_configuration = section.as_configuration()",
                                   "other = Section(name='other')\nother.workers.set_offload_backends(x='rq://h')\n"
                                   "uwsgi_configuration = [section.as_configuration(), other.as_configuration()]")
    assert_one_line_error(invoke_with(tmp_path, two, cli, "record"),
                          "has declarations (UWSGICONF_MULES record) in section 'uwsgi', section 'other': name one "
                          "with --section")
    assert invoke_with(tmp_path, two, cli, "record", "--section", "other").stdout.startswith("v2;mules=0;")


def test_worker_refuses_farms_that_one_worker_cannot_serve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    assert_one_line_error(invoke_with(tmp_path, source("routed"), cli, "worker", "--burst"),
                          "farm 'mail' is routed to RQ queue 'mail' at $REDIS_URL, and environment variable REDIS_URL "
                          "is not set here")
    # 'reports' and 'mail' are on two Redis servers with two serializers: one worker reads one of each.
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    assert_one_line_error(invoke_with(tmp_path, source("routed"), cli, "worker", "--burst"),
                          "use several Redis servers or serializers", "start one worker per server with --farm")


def test_worker_command_is_rq_worker_with_the_declared_url_queues_and_serializer(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from uwsgiconf_mules.contrib.rq.sender import worker_command
    from uwsgiconf_mules.declarations.backends import parse_backend

    monkeypatch.setenv("PW", "p w/@")
    backends = [parse_backend("reports", "rq://h:6380/2?password_env=PW&serializer=pickle"),
                parse_backend("mail", "rq://h:6380/2?password_env=PW&serializer=pickle&queue=reports")]
    command, env = worker_command(backends, burst=True, worker_class="rq.worker.SimpleWorker")
    assert command == [sys.executable, "-m", "uwsgiconf_mules.contrib.rq.worker", "worker", "--serializer",
                       "rq.serializers.DefaultSerializer", "--job-class", "uwsgiconf_mules.remote.Job",
                       "--with-scheduler", "--burst", "--worker-class", "rq.worker.SimpleWorker", "reports"]
    assert env == {"RQ_REDIS_URL": "redis://:p%20w%2F%40@h:6380/2"}  # the password is not on the command line
    command, env = worker_command([parse_backend("mail", "rq://h")])
    assert command[-4:] == ["--job-class", "uwsgiconf_mules.remote.Job", "--with-scheduler", "mail"]  # RQ's scheduler
    assert command[5] == "rq.serializers.JSONSerializer"
    assert env == {"RQ_REDIS_URL": "redis://h:6379/0"}


def test_check_describes_routed_farms(tmp_path: Path) -> None:
    uwsgi = fake_uwsgi(tmp_path / "bin", PIP_CFLAGS)
    lines = invoke_with(tmp_path, source("routed"), cli, "check", "--uwsgi", str(uwsgi)).stdout.splitlines()
    assert ("  farm reports: routed to RQ queue 'reports' at redis.internal:6380/2, json arguments (no mules; "
            "workers: uwsgiconf-mules worker)") in lines
    assert "  farm mail: routed to RQ queue 'mail' at $REDIS_URL, pickle arguments (no mules; workers: " \
           "uwsgiconf-mules worker)" in lines


@pytest.mark.parametrize(("worker_class", "problem"), [
    ("nope.Nope", "cannot be imported (ModuleNotFoundError: No module named 'nope')"),
    ("rq.worker.Nope", "cannot be imported (AttributeError: "),
    ("rq.job.Job", "is not an RQ worker class"),
])
def test_worker_refuses_a_worker_class_it_cannot_use(tmp_path: Path, worker_class: str, problem: str) -> None:
    body = source("routed").replace("mail='rq://?url_env=REDIS_URL&queue=mail&serializer=pickle&connect_timeout=0.5'",
                                    "")
    assert_one_line_error(invoke_with(tmp_path, body, cli, "worker", "--worker-class", worker_class),
                          f"--worker-class {worker_class!r} {problem}")


@pytest.mark.parametrize("fmt", ["py", "ini", "yaml"])
def test_the_worker_gets_the_variables_the_config_sets(tmp_path: Path, fmt: str) -> None:
    from uwsgiconf_mules.cli.common import one as _one

    body = source("routed").replace("uwsgi_configuration =", "section.env('DJANGO_SETTINGS_MODULE', 'site.settings')\n"
                                    "section.env('EMPTY', '')\nuwsgi_configuration =")
    write_conf(tmp_path, body)
    conf = "uwsgicfg.py"
    if fmt != "py":
        compiled = invoke(tmp_path, cli, "compile", "--format", fmt, "--yaml-dialect", "embedded", conf)
        (tmp_path / f"app.{fmt}").write_text(compiled.stdout)
        conf = f"app.{fmt}"
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        declarations, env = _one(conf, None, routed=True)
    finally:
        os.chdir(cwd)
    assert [backend.farm for backend in declarations.backends] == ["reports", "mail"]
    assert env["DJANGO_SETTINGS_MODULE"] == "site.settings"
    assert env["EMPTY"] == ""


def test_spool_list_shows_files_it_ignores_and_check_an_unusable_spool(tmp_path: Path) -> None:
    from uwsgiconf_mules.protocol import spool as _spool

    kept = _spool.Spool(str(tmp_path / "spool"))
    kept.create()
    (Path(kept.part("queue")) / "1-1-1.call").symlink_to("/etc/passwd")
    body = SPOOLED.format(spool=kept.path)
    for size in (10, 20):
        kept.write("dead", b"", _spool.untrusted_note(b"x" * size, "not sent by this uWSGI instance"))
    listed = invoke_with(tmp_path, body, cli, "spool", "list")
    assert listed.stdout.splitlines()[-4:] == [
        "  dead letters: 2", "    2 x ? (untrusted: not sent by this uWSGI instance)",
        "  ignored in queue/, never run (not this user's regular files): 1", "    '1-1-1.call': a symbolic link"]
    assert not any("warning: spool" in line for line in invoke_with(tmp_path, body, cli, "check").stdout.splitlines())
    os.chmod(kept.path, 0o777)
    checked = invoke_with(tmp_path, body, cli, "check")
    assert (f"  warning: spool: {kept.path} can be written by others (mode 777): while it lasts, offloaded calls to "
            "dispatch mules are refused (DeliveryError)") in checked.stdout


@pytest.mark.parametrize(("options", "said"), [
    (("gevent",), "gevent"), (("async",), "async"), (("asyncio",), "asyncio"),
    (("asyncio", "greenlet"), "asyncio+greenlet"),
    (("async", "ugreen"), "ugreen" if sys.version_info < (3, 11) else "ugreen-unsafe"),
])
def test_check_says_what_a_waiting_sender_does_under_the_loop_engine(
        tmp_path: Path, options: tuple[str, ...], said: str) -> None:
    from uwsgiconf_mules.cli.check import LOOP_ENGINES

    body = ("from uwsgiconf_mules import Section\n"
            "section = Section()\n"
            "section.workers.set_mules_params(mules=1)\n"
            + "".join(f"section._set({option!r}, 10)\n" for option in options)
            + "uwsgi_configuration = section.as_configuration()\n")
    proc = invoke_with(tmp_path, body, cli, "check")
    assert proc.returncode == 0, proc.stderr
    assert [line for line in proc.stdout.splitlines() if line.startswith("  workers: ")] == [
        f"  workers: {LOOP_ENGINES[said]}"]
