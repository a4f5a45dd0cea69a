"""``uwsgiconf compile`` on declarations: whole outputs against expected files, and errors."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from declarations_cases import CASES, source
from harness import BIN
from uwsgiconf_mules._declarations import DISPATCH_MULE

EXPECTED = Path(__file__).parent / "expected"
STAMP = re.compile(r"(uwsgiconf v)\S+ on .*")


def normalise(text: str) -> str:
    """Replace the generation stamp and this installation's dispatch mule path with fixed texts."""
    return STAMP.sub(r"\1<version> on <date>", text).replace(DISPATCH_MULE, "<dispatch_mule>")


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *parts: str) -> None:
    """Exit 1, nothing on stdout, one line on stderr that contains every part, no traceback."""
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    for part in parts:
        assert part in proc.stderr


def compile_with(tmp_path: Path, body: str, *command: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "uwsgicfg.py").write_text(body)
    return subprocess.run([*command, "uwsgicfg.py"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL, check=False)


@pytest.mark.parametrize("name", sorted(CASES))
def test_ini_matches_expected_file(tmp_path: Path, name: str) -> None:
    proc = compile_with(tmp_path, source(name), str(BIN / "uwsgiconf"), "compile")
    assert proc.returncode == 0, proc.stderr
    assert normalise(proc.stdout) == (EXPECTED / f"{name}.ini").read_text()


def test_design_example_emits_farms_mules_and_record(tmp_path: Path) -> None:
    proc = compile_with(tmp_path, source("design"), str(BIN / "uwsgiconf"), "compile")
    lines = proc.stdout.splitlines()
    assert "farm = fast:1,2" in lines
    assert "farm = slow:3,4" in lines
    assert lines.count(f"mule = {DISPATCH_MULE}") == 4
    assert "shared-import = uwsgiconf_mules.runtime" in lines
    record = f"v2;mules=4;send-timeout=5;farm=fast:1,2;farm=slow:3,4;dispatch={DISPATCH_MULE}"
    assert f"env = UWSGICONF_MULES={record}" in lines


INVALID = {
    "duplicate farm": ("farms=[workers.mule_farm('a', 1), workers.mule_farm('a', 2)]", "farm 'a' is declared twice"),
    "empty name": ("farms=[workers.mule_farm('', 1)]", "farm name is empty"),
    "colon": ("farms=[workers.mule_farm('a:b', 1)]", "farm name 'a:b' contains ':'"),
    "comma": ("farms=[workers.mule_farm('a,b', 1)]", "farm name 'a,b' contains ','"),
    "whitespace": ("farms=[workers.mule_farm('a b', 1)]", "farm name 'a b' contains whitespace"),
    "hash": ("farms=[workers.mule_farm('a#b', 1)]", "farm name 'a#b' contains '#'"),
    "quote": ("farms=[workers.mule_farm('\"a', 1)]", "farm name '\"a' contains a quote"),
    "id zero": ("farms=[workers.mule_farm('a', [0, 1])]", "farm 'a': mule id 0 is out of range"),
    "id above total": ("mules=2, farms=[workers.mule_farm('a', [1, 3])]",
                       "mules declares 2 mule(s) but farm 'a' uses mule 3"),
    "count below 1": ("farms=[workers.mule_farm('a', 0)]", "farm 'a' needs at least 1 mule, got a count of 0"),
    "mules too few": ("mules=3, farms=[workers.mule_farm('a', 2), workers.mule_farm('b', 2)]",
                      "mules declares 3 mule(s) but farm 'b' uses mule 4"),
    "buffer zero": ("mules=1, msg_buffer=0", "msg_buffer must be a positive integer, not 0"),
    "buffer negative": ("mules=1, msg_buffer=-5", "msg_buffer must be a positive integer, not -5"),
    "recv buffer": ("mules=1, msg_buffer_recv=65536", "msg_buffer_recv is not supported"),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_declaration_is_one_line_exit_1(tmp_path: Path, case: str) -> None:
    args, message = INVALID[case]
    body = source("design").replace(CASES["design"], f"workers.set_mules_params({args})\n")
    assert_one_line_error(compile_with(tmp_path, body, str(BIN / "uwsgiconf"), "compile"), message)
