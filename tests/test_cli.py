"""The ``uwsgiconf-mules`` command: compile (ini, yaml) and check.

In this process through click's ``CliRunner`` (``helpers.invoke_with``), and a few smoke tests of
the installed console script as a subprocess (``main()``, real exit codes).
"""

from __future__ import annotations

import subprocess
from importlib.metadata import version
from pathlib import Path

import pytest
from uwsgiconf.cli import base as uwsgiconf_cli

from harness import BIN
from helpers import CASES, EXPECTED, assert_one_line_error, compile_with, invoke, invoke_with, normalise, source
from uwsgiconf_mules.cli import cli

CLI = str(BIN / "uwsgiconf-mules")


@pytest.mark.parametrize("name", sorted(CASES))
def test_yaml_matches_expected_file(tmp_path: Path, name: str) -> None:
    proc = invoke_with(tmp_path, source(name), cli, "compile", "--format", "yaml")
    assert proc.returncode == 0, proc.stderr
    assert normalise(proc.stdout) == (EXPECTED / f"{name}.yaml").read_text()


@pytest.mark.parametrize("name", sorted(CASES))
def test_ini_is_identical_to_uwsgiconf_compile(tmp_path: Path, name: str) -> None:
    ours = invoke_with(tmp_path, source(name), cli, "compile")
    theirs = invoke_with(tmp_path, source(name), uwsgiconf_cli, "compile")
    assert ours.returncode == theirs.returncode == 0
    assert normalise(ours.stdout) == normalise(theirs.stdout) == (EXPECTED / f"{name}.ini").read_text()


def test_all_sections_of_a_module_are_rendered(tmp_path: Path) -> None:
    body = (
        "from uwsgiconf.config import Configuration\nfrom uwsgiconf_mules import Section\n"
        "a = Section()\na.workers.set_mules_params(mules=1)\n"
        "b = Section(name='other')\nb.workers.set_mules_params(farms=b.workers.mule_farm('x', 1))\n"
        "uwsgi_configuration = Configuration([a, b])\n"
    )
    proc = invoke_with(tmp_path, body, cli, "compile", "--format", "yaml")
    assert normalise(proc.stdout) == (EXPECTED / "two_sections.yaml").read_text()


BAD_VALUES = {
    "hash": ("'a#b'", "contains '#'"),
    "newline": ("'a\\nb'", "contains a newline"),
    "quote": ("'\"a'", "starts with a quote"),
    "single quote": ("\"'a\"", "starts with a quote"),
    "bracket": ("'[a'", "starts with '['"),
    "brace": ("'{a'", "starts with '{'"),
    "dash": ("'-a'", "starts with '-'"),
    "empty": ("''", "is empty"),
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_yaml_refuses_values_the_embedded_parser_would_mangle(tmp_path: Path, case: str) -> None:
    value, problem = BAD_VALUES[case]
    body = source("design").replace(
        "uwsgi_configuration =", f"section.main_process.set_naming_params(name={value})\nuwsgi_configuration =")
    assert_one_line_error(invoke_with(tmp_path, body, cli, "compile", "--format", "yaml"),
                          "option 'procname' of section 'uwsgi' cannot be written as uWSGI YAML", problem)


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


def test_check_prints_a_summary(tmp_path: Path) -> None:
    proc = invoke_with(tmp_path, source("design"), cli, "check")
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
    assert lines[7:] == ["  send timeout: 5 s; harakiri: none"]


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


def test_command_compiles_yaml(tmp_path: Path) -> None:
    proc = compile_with(tmp_path, source("design"), CLI, "compile", "--format", "yaml")
    assert proc.returncode == 0, proc.stderr
    assert normalise(proc.stdout) == (EXPECTED / "design.yaml").read_text()


def test_command_check_exits_1_with_one_line_per_problem(tmp_path: Path) -> None:
    proc = compile_with(tmp_path, CHECK_PROBLEMS, CLI, "check")
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == CHECK_PROBLEM_LINES


SPOOLED = ("from uwsgiconf_mules import Section\nsection = Section()\n"
           "section.workers.set_mules_params(mules=2, spool_dir={spool!r})\n"
           "uwsgi_configuration = section.as_configuration()\n")


def test_spool_lists_replays_and_purges(tmp_path: Path) -> None:
    from uwsgiconf_mules import _spool

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
        "  replayed 2 dead letter(s): they run when the dispatch mules next start",
        "  kept 1 untrusted message(s): never replayed (purge them)"]
    assert len(kept.files("queue")) == 3 and len(kept.files("dead")) == 1
    purged = invoke_with(tmp_path, body, cli, "spool", "purge")
    assert purged.stdout.splitlines()[1] == "  purged 1 file(s) from dead"
    purged = invoke_with(tmp_path, body, cli, "spool", "purge", "--all")
    assert purged.stdout.splitlines()[1] == "  purged 3 file(s) from queue, claimed, dead"
    assert kept.files("queue") == kept.files("dead") == []


def test_spool_reads_a_compiled_config_and_says_what_it_cannot_read(tmp_path: Path) -> None:
    from uwsgiconf_mules import _spool

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
