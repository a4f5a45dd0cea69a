"""The uwsgiconf side (``uwsgiconf_mules.config``): what ``Section`` emits, compiled by uwsgiconf's own
``uwsgiconf compile`` (uwsgiconf's ini formatter, not ours): whole outputs against expected files,
and invalid declarations as one-line errors.

The command runs in this process through click's ``CliRunner``; the design example also through
the installed ``uwsgiconf`` console script, as a subprocess."""

from __future__ import annotations

from pathlib import Path

import pytest
from uwsgiconf.cli import base as uwsgiconf_cli

from support.harness import BIN
from support.helpers import CASES, EXPECTED, assert_one_line_error, compile_with, invoke_with, normalise, source
from uwsgiconf_mules.declarations import DISPATCH_MULE


@pytest.mark.parametrize("name", sorted(CASES))
def test_ini_matches_expected_file(tmp_path: Path, name: str) -> None:
    proc = invoke_with(tmp_path, source(name), uwsgiconf_cli, "compile")
    assert proc.returncode == 0, proc.stderr
    assert normalise(proc.stdout) == (EXPECTED / f"{name}.ini").read_text()


def test_design_example_emits_farms_mules_and_record(tmp_path: Path) -> None:
    proc = compile_with(tmp_path, source("design"), str(BIN / "uwsgiconf"), "compile")
    lines = proc.stdout.splitlines()
    assert "farm = fast:1,2" in lines
    assert "farm = slow:3,4" in lines
    assert lines.count(f"mule = {DISPATCH_MULE}") == 4
    assert "shared-import = uwsgiconf_mules.runtime" in lines
    record = "v2;mules=4;send-timeout=5;farm=fast:1,2;farm=slow:3,4;dispatch=<dispatch_mule>;spool=<default_spool>"
    assert f"env = UWSGICONF_MULES={record}" in normalise(proc.stdout).splitlines()


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
    "init without function": ("mules=1, mule_init='shop.startup'",
                              "mule_init must be 'package.module:function' (a dotted module path, ':', a "
                              "function name in that module), not 'shop.startup'"),
    "init with a space": ("mules=1, mule_init='shop.start up:go'", "not 'shop.start up:go'"),
    "init not a string": ("mules=1, mule_init=print", "mule_init must be a 'package.module:function' string"),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_declaration_is_one_line_exit_1(tmp_path: Path, case: str) -> None:
    args, message = INVALID[case]
    body = source("design").replace(CASES["design"], f"workers.set_mules_params({args})\n")
    assert_one_line_error(invoke_with(tmp_path, body, uwsgiconf_cli, "compile"), message)
