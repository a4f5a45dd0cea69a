"""What a dispatch mule does when it starts, on a real uWSGI: the ``mule_init`` hook (before any call,
calls kept in the spool included; a failing hook is logged and the mule runs on) and logging (a
handler only when nobody configured logging; the app's own configuration is kept)."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

from support.harness import APP_PRELUDE, QUEUED_WORK_APP, Server, compile_config, declaration, launch

HOOKS = '''
import json
import logging
import os

from uwsgiconf_mules.logs import MuleFilter


def ready():
    """Writes a line, as the work does, so that the order of both shows."""
    with open(os.path.join(os.environ["TEST_RESULTS"], "work"), "a") as handle:
        handle.write(json.dumps({"i": -2, "pid": os.getpid()}) + "\\n")


def broken():
    raise RuntimeError("no settings here")


def configure_logging():
    handler = logging.StreamHandler()
    handler.addFilter(MuleFilter())
    handler.setFormatter(logging.Formatter("APP mule=%(mule)s task=%(task)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)
'''

LOGGED_APP = '''
import logging

log = logging.getLogger("shop")


@mule_offload()
def logged(text):
    log.info("task says %s", text)
    record("logged", text=text)


@route("/logged")
def run_logged(query):
    return logged(query)
'''


def pids_in_order(server: Server) -> list[tuple[int, int]]:
    return [(line["pid"], line["i"]) for line in server.lines("work")]


def test_the_hook_runs_before_any_call_also_before_calls_kept_in_the_spool(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    (tmp_path / "uwsgicfg.py").write_text(declaration(f"mules=1, spool_dir={str(spool)!r}, mule_init='hooks:ready'"))
    (tmp_path / "app.py").write_text(APP_PRELUDE + QUEUED_WORK_APP)
    (tmp_path / "hooks.py").write_text(HOOKS)
    path, compiled = compile_config(tmp_path)
    assert compiled.returncode == 0, compiled.stderr
    server = launch(path, tmp_path, expect_mules=1, extra_args=("--lazy-apps",))
    try:
        assert server.get("/fill?200") == (200, 200)
        time.sleep(0.2)  # a few calls run, the rest are queued
        server.proc.send_signal(signal.SIGINT)
        server.proc.wait(30)
        assert "queued call(s) kept in the spool" in server.log()
        server = launch(path, tmp_path, expect_mules=1, extra_args=("--lazy-apps",))
        server.wait_for(lambda: len({i for _, i in pids_in_order(server) if i >= 0}) >= 200, 60, "200 calls run")
    finally:
        server.stop()
    lines = pids_in_order(server)
    first_mule, second_mule = dict.fromkeys(pid for pid, _ in lines)  # in order of their first line
    for pid in (first_mule, second_mule):
        assert next(i for p, i in lines if p == pid) == -2  # the hook, before the mule's first call
    assert [i for p, i in lines if p == second_mule].count(-2) == 1
    assert any(i >= 0 for p, i in lines if p == second_mule)  # the calls kept in the spool, run after the hook


def test_a_failing_hook_is_logged_by_name_and_the_mule_runs_on(uwsgi_server: Callable[..., Server]) -> None:
    server = uwsgi_server(declaration("mules=1, mule_init='hooks:broken'"), QUEUED_WORK_APP,
                          modules={"hooks": HOOKS}, extra_args=("--lazy-apps",))
    assert server.get("/ping-mule") == (200, True)
    server.wait_lines("work", 1)
    log = server.log()
    assert ("uwsgiconf-mules: mule 1: the mule_init hook hooks:broken failed (RuntimeError: no settings here); "
            "the mule runs on without it") in log
    assert log.count("RuntimeError: no settings here") == 2  # the line, and the last line of its traceback


def test_task_logs_reach_the_uwsgi_log_with_mule_and_task(uwsgi_server: Callable[..., Server]) -> None:
    server = uwsgi_server(declaration("mules=1"), LOGGED_APP, extra_args=("--lazy-apps",))
    assert server.get("/logged?hi") == (200, True)
    server.wait_lines("logged", 1)
    log = server.wait_for(lambda: "task says hi" in server.log() and server.log(), what="the task's log line")
    assert " mule 1 [app:logged] INFO shop: task says hi\n" in log


def test_an_apps_own_logging_config_is_kept(uwsgi_server: Callable[..., Server]) -> None:
    # Pre-fork: the app configures logging in the master, the mule inherits it.
    configured = "import hooks\nhooks.configure_logging()\n"
    server = uwsgi_server(declaration("mules=1"), LOGGED_APP, modules={"hooks": HOOKS}, app_first=configured)
    # --lazy-apps: the app's configuration runs in workers only; mule_init runs it in mules.
    lazy = uwsgi_server(declaration("mules=1, mule_init='hooks:configure_logging'"), LOGGED_APP,
                        modules={"hooks": HOOKS}, app_first=configured, extra_args=("--lazy-apps",))
    for each in (server, lazy):
        assert each.get("/logged?there") == (200, True)
        each.wait_lines("logged", 1)
        log = each.wait_for(lambda each=each: "task says there" in each.log() and each.log(), what="the log line")
        assert "APP mule=1 task=app:logged shop: task says there\n" in log
        assert "[app:logged]" not in log  # the default handler was not added


def test_a_config_compiled_by_0_1_0_still_runs_calls_and_names_their_task(tmp_path: Path) -> None:
    # 0.1.0 compiled configs shared-import the runtime only (no uwsgiconf_mules.dispatch_mule): the
    # mule imports its loop when it starts; calls run, and their log lines name the task (the fast
    # path's cell, logs.current_task), also in a call that logs from the slow path (keyword arguments).
    (tmp_path / "uwsgicfg.py").write_text(declaration("mules=1"))
    (tmp_path / "app.py").write_text(APP_PRELUDE + LOGGED_APP + '''

@route("/logged_kw")
def run_logged_kw(query):
    return logged(text=query)
''')
    path, compiled = compile_config(tmp_path)
    assert compiled.returncode == 0, compiled.stderr
    text = path.read_text()
    assert "shared-import = uwsgiconf_mules.dispatch_mule\n" in text
    path.write_text(text.replace("shared-import = uwsgiconf_mules.dispatch_mule\n", ""))
    server = launch(path, tmp_path, expect_mules=1)
    try:
        assert server.get("/logged?hi") == (200, True)
        assert server.get("/logged_kw?there") == (200, True)
        server.wait_lines("logged", 2)
        log = server.wait_for(lambda: "task says there" in server.log() and server.log(), what="the task's log lines")
        assert " mule 1 [app:logged] INFO shop: task says hi\n" in log
        assert " mule 1 [app:logged] INFO shop: task says there\n" in log
    finally:
        server.stop()


FORK_APP = '''
import gc
import sys

MASTER_MODULES = set(sys.modules)
FIRST = []
BEFORE = gc.get_freeze_count()  # 0, or what Python froze itself (3.12 starts with objects frozen)


def _first_collection(phase, info):  # runs after the runtime's own callback (added at its shared-import)
    import uwsgi
    if phase == "start" and not FIRST and uwsgi.mule_id():
        FIRST.append(gc.get_freeze_count() - BEFORE)


gc.callbacks.append(_first_collection)


@mule_offload()
def report():
    record("mule", frozen_at_first=FIRST[0] if FIRST else None, imported=sorted(set(sys.modules) - MASTER_MODULES))


@route("/report")
def run_report(query):
    return report()


gc.collect()
gc.set_threshold(1)  # the next allocation collects: in a mule, in uWSGI's post-fork step, before its script runs
'''


def test_a_mule_shares_what_the_master_made_even_when_it_collects_before_its_script(
        uwsgi_server: Callable[..., Server]) -> None:
    # A new spool: the mule logs a line at start. The master loaded logging, fcntl and json for it,
    # and random (uWSGI's post-fork step); the mule's first collection found the master's objects frozen.
    server = uwsgi_server(declaration("mules=1"), FORK_APP, workers=1)
    assert server.get("/report") == (200, True)
    (found,) = server.wait_lines("mule", 1)
    assert "made a new, empty spool" in server.log()
    assert found["imported"] == []  # nothing imported after the fork
    assert found["frozen_at_first"] > 1000  # frozen before its first collection ran
