"""Every line the project writes stays one line of printable text: what the spool, a failed call's
exception, a task name or a stats server holds never reaches a terminal or a log as escape sequences
or as a forged line (``uwsgiconf_mules._text``)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest

from support.helpers import invoke_with
from uwsgiconf_mules import MuleFarm, errors, logs
from uwsgiconf_mules._text import escape
from uwsgiconf_mules.cli import cli
from uwsgiconf_mules.cli.top import render, snapshot
from uwsgiconf_mules.declarations import declare
from uwsgiconf_mules.protocol import spool as _spool
from uwsgiconf_mules.runtime import failures as _failures, mule_offload

HOSTILE = "tasks:x\x1b]0;owned\x07\x1b[2J\n2026-12-03 07:00:00,000 mule 1 [-] INFO app: forged"
SHOWN = "tasks:x\\x1b]0;owned\\x07\\x1b[2J\\n2026-12-03 07:00:00,000 mule 1 [-] INFO app: forged"


@pytest.mark.parametrize(("text", "shown"), [
    ("plain text: é, 日本, ok", "plain text: é, 日本, ok"),  # printable text is kept readable
    (HOSTILE, SHOWN),
    ("a\r\tb\x00c\x7f\x85d\u2028e\u202ef", "a\\r\\tb\\x00c\\x7f\\x85d\\u2028e\\u202ef"),
    (b"key\xff\n", "key\ufffd\\n"),
    (ValueError("x\ny"), "x\\ny"),
])
def test_escape_keeps_printable_text_and_writes_the_rest_as_escapes(text: object, shown: str) -> None:
    assert escape(text) == shown


def test_spool_list_escapes_what_the_spool_files_hold(tmp_path: Path) -> None:
    kept = _spool.Spool(str(tmp_path / "spool"))
    kept.create()
    kept.write("dead", b"a" + HOSTILE.encode() + b"\x00body",
               _spool.UNTRUSTED + "bad \x1b[31mtoken\nforged")
    listed = invoke_with(tmp_path, "from uwsgiconf_mules import Section\nsection = Section()\n"
                                   f"section.workers.set_mules_params(mules=1, spool_dir={kept.path!r})\n"
                                   "uwsgi_configuration = section.as_configuration()\n", cli, "spool", "list")
    assert listed.returncode == 0
    assert "\x1b" not in listed.stdout and "\x07" not in listed.stdout
    assert listed.stdout.splitlines()[-1] == (
        f"    1 x {SHOWN} (untrusted: bad \\x1b[31mtoken forged)")


def _failure_record(caplog: pytest.LogCaptureFixture, exc: BaseException) -> logging.LogRecord:
    _failures.reset()
    with caplog.at_level(logging.ERROR, logger="uwsgiconf_mules"):
        _failures.report("app:task", ("\x1b[2J",), None, exc, None)
    _failures.reset()
    return next(record for record in caplog.records if "failed in mule" in record.getMessage())


def test_the_failure_record_writes_the_exception_on_one_line(caplog: pytest.LogCaptureFixture) -> None:
    try:
        raise ValueError(f"bad input {HOSTILE}")
    except ValueError as exc:
        record = _failure_record(caplog, exc)
    assert record.getMessage() == (f"uwsgiconf-mules: task app:task failed in mule 0: ValueError: bad input {SHOWN}; "
                                   "arguments ('\\x1b[2J')")


def test_the_mule_formatter_writes_each_exception_message_of_a_traceback_on_one_line(
        caplog: pytest.LogCaptureFixture) -> None:
    try:
        try:
            raise KeyError("first\nforged")
        except KeyError as cause:
            raise ValueError(f"bad input {HOSTILE}") from cause
    except ValueError as exc:
        record = _failure_record(caplog, exc)
    text = logs.MuleFormatter().format(record)
    assert "\x1b" not in text and "\x07" not in text
    lines = text.splitlines()
    assert lines[-1] == f"ValueError: bad input {SHOWN}"
    assert "KeyError: 'first\\nforged'" in lines
    assert "The above exception was the direct cause of the following exception:" in lines
    assert not [line for line in lines if line.startswith(("2026-12-03 07:00:00", "forged"))]  # nothing forged


@pytest.mark.parametrize("qualname", ["task\nforged", "task\x1b[2J", "a b", "task.", "1task"])
def test_task_names_that_are_not_dotted_identifiers_are_refused(qualname: str) -> None:
    def task() -> None:
        pass

    task.__qualname__ = qualname
    with pytest.raises(errors.MulesRuntimeError, match="a task is named module:qualname, both dotted identifiers"):
        mule_offload()(task)


def test_top_escapes_what_the_stats_server_and_status_files_hold(tmp_path: Path) -> None:
    decl = declare(mules=1, farms=[MuleFarm("f", [1])], stats="127.0.0.1:9191", spool_dir=str(tmp_path))
    (tmp_path / "status").mkdir()
    (tmp_path / "status" / "1.json").write_text(json.dumps({
        "pid": 101, "time": time.time(), "running": HOSTILE, "tasks": {HOSTILE: {"started": 1}}}))
    text = render(snapshot(decl, {"version": "2.0\x1b[2J", "pid": 100,
                                  "metrics": {"mule.1.pid": {"value": 101}}}))
    assert "\x1b" not in text and "\x07" not in text
    lines = text.splitlines()
    assert lines[0].startswith("uWSGI 2.0\\x1b[2J (master pid 100)")
    assert not [line for line in lines if line.startswith("2026-12-03")]
    assert lines[-1].startswith(SHOWN)
