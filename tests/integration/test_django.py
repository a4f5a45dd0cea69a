"""The Django example (examples/django) on a real uWSGI, loaded before the fork and with
``--lazy-apps``: views queue welcomes with the project's decorator and with ``django.tasks``
(sync and async), mules write the rows with the ORM into sqlite and log through the default
mule logging."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.django_site import MODES, rows, site, start
from support.harness import Server, compile_config, launch, stop_all
from uwsgiconf_mules.protocol import envelope as _protocol, spool as _spool


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    stop_all(started)


@pytest.mark.parametrize("mode", sorted(MODES))
def test_views_queue_tasks_that_mules_run_with_the_orm(tmp_path: Path, servers: list[Server], mode: str) -> None:
    server, db = start(tmp_path, mode, servers)
    for via in ("decorator", "task", "async"):
        assert server.get(f"/signup?email={via}@example.com&via={via}") == (200, {"queued": True})
    found = server.wait_for(lambda: len(rows(db)) == 3 and rows(db), what="3 rows written by the mules")
    assert [(email, via) for email, via, _ in found] == [
        ("async@example.com", "async"), ("decorator@example.com", "decorator"), ("task@example.com", "task")]
    assert {mule for _, _, mule in found} <= {1, 2}
    # Task logs reach uWSGI's log without any logging configuration, with the mule and the task.
    log = server.wait_for(lambda: server.log().count("welcomed ") >= 3 and server.log(), what="task log lines")
    assert re.search(r"mule [12] \[shop\.tasks:welcome\] INFO shop\.tasks: welcomed decorator@example\.com$",
                     log, re.M), log[-3000:]
    assert re.search(r"mule [12] \[shop\.tasks\.welcome_task\] INFO shop\.tasks: welcomed task@example\.com$",
                     log, re.M), log[-3000:]
    # asgiref runs an async task in a thread of its own, with a copy of the context that names the task.
    assert re.search(r"mule [12] \[shop\.tasks\.welcome_async\] INFO shop\.tasks: welcomed async@example\.com$",
                     log, re.M), log[-3000:]
    assert "Traceback" not in log


def test_lazy_apps_without_the_settings_in_the_config_says_why(tmp_path: Path, servers: list[Server]) -> None:
    # Django's own WSGI module sets DJANGO_SETTINGS_MODULE, but mules do not run it under --lazy-apps.
    line = 'section.env("DJANGO_SETTINGS_MODULE", "mysite.settings")'
    server, db = start(tmp_path, "lazy-apps", servers, (line, "pass"))
    assert server.get("/signup?email=lost@example.com") == (200, {"queued": True})
    assert server.get("/signup?email=lost@example.com&via=task") == (200, {"queued": True})
    log = server.wait_for(lambda: server.log().count("refused a") == 2 and server.log(), what="two refusals")
    assert "cannot import module 'shop.tasks' for task shop.tasks:welcome" in log
    assert "cannot import the Django task shop.tasks.welcome_task" in log
    assert log.count("Django is not set up in this mule: set DJANGO_SETTINGS_MODULE in the uWSGI config") == 4
    assert "unknown task" not in log
    assert rows(db) == []
    # Both are kept as dead letters, to replay once the config is fixed.
    listed = subprocess.run([str(Path(sys.executable).parent / "uwsgiconf-mules"), "spool", "list", "app.ini"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    assert "dead letters: 2" in listed.stdout, listed.stdout + listed.stderr
    # Listed under the Django task's own path, not the backend's runner (uwsgiconf_mules.django:_run).
    assert "1 x shop.tasks.welcome_task (cannot import the Django task shop.tasks.welcome_task" in listed.stdout


PROBE = '''
"""Tasks of a test, and a task_finished receiver that writes what each mule's TaskResult says."""

import json
import os
import sys

from uwsgiconf_mules.runtime import Farm, Mule

try:
    from django.tasks import signals, task
except ImportError:
    from django_tasks import signals, task


def note(**data):
    data.update(mule=Mule.get_current_id(), pid=os.getpid())
    with open(os.path.join(os.environ["TEST_RESULTS"], "probe"), "a") as out:
        out.write(json.dumps(data) + "\\n")


def finished(sender, task_result, **kwargs):
    note(id=task_result.id, status=str(task_result.status), errors=[e.exception_class_path for e in task_result.errors],
         enqueued_at=task_result.enqueued_at.isoformat(), queue=task_result.task.queue_name,
         backend=task_result.task.backend, result_backend=task_result.backend,
         value=task_result.return_value if str(task_result.status) == "SUCCESSFUL" else None)


signals.task_finished.connect(finished, weak=False)


@task(queue_name="mail")
def bye(how):
    if how == "sys.exit":
        sys.exit(3)
    exit(4)


@task(queue_name="mail")
def gives(kind):
    return (lambda: None) if kind == "lambda" else (1, {"a": b"x"})


@Farm("mail").offload()
def plain_exit(n, code=0):
    note(plain=n)
    sys.exit(code)
'''

PROBE_WSGI = '''
"""The example's Django app, and /probe?do=...: queues a task of probe.py, answers with its TaskResult."""

import json
from urllib.parse import parse_qsl

from mysite.wsgi import application as django_application

import probe

CALLS = {
    "sys.exit": lambda: probe.bye.enqueue("sys.exit"),
    "exit": lambda: probe.bye.enqueue("exit"),
    "lambda": lambda: probe.gives.enqueue("lambda"),
    "tuple": lambda: probe.gives.enqueue("tuple"),
    "using": lambda: probe.gives.using(queue_name="alerts", backend="second").enqueue("tuple"),
    "plain": lambda: probe.plain_exit(1),  # positional: the mule loop's fast path
    "plain kwargs": lambda: probe.plain_exit(2, code=5),  # keywords: the path that reads the key
}


def application(environ, start_response):
    if environ["PATH_INFO"] != "/probe":
        return django_application(environ, start_response)
    result = CALLS[dict(parse_qsl(environ["QUERY_STRING"]))["do"]]()
    body = {"queued": result} if result is True else {"id": result.id, "enqueued_at": result.enqueued_at.isoformat()}
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps(body).encode()]
'''


LOOPS = {"fast": "", "counted": ", stats={stats!r}", "harakiri": ", harakiri_timeout=30"}
"""How the mule loop runs calls: its fast path, its counted fast path (counters on), or every call by key
(a declared harakiri)."""


@pytest.mark.parametrize(("mode", "loop"), [("prefork", "fast"), ("lazy-apps", "fast"), ("prefork", "counted"),
                                            ("prefork", "harakiri")])
def test_mules_report_results_as_djangos_immediate_backend(tmp_path: Path, servers: list[Server], mode: str,
                                                           loop: str) -> None:
    # Farm "mail" (mule 1) and farm "alerts" (mule 2); a second backend. Each call's TaskResult as the mule
    # reports it through task_finished: a task that exits fails (the mule goes on), a return value that is
    # not JSON fails with TypeError, enqueued_at is the caller's, .using(queue_name=, backend=) is kept.
    # Plain offloaded functions that exit are failed calls too, on both paths of the mule loop.
    farms = 'section.workers.set_mules_params(farms=section.workers.mule_farm("mail", 2))'
    spool = tmp_path / "spool"
    directory, db = site(tmp_path, (farms, 'section.workers.set_mules_params(farms=[section.workers.mule_farm('
                                           '"mail", [1]), section.workers.mule_farm("alerts", [2])], '
                                           f'spool_dir={str(spool)!r}'
                                           f'{LOOPS[loop].format(stats=str(tmp_path / "stats.sock"))})'))
    # A call kept in the spool by the previous version, which sent _run five arguments.
    kept = _spool.Spool(str(spool))
    kept.create()
    old = _protocol.encoder("uwsgiconf_mules.django:_run")(("probe.gives", "kept-by-0.1", "default", ["tuple"], {}),
                                                           {})
    kept.write("queue", _protocol.stored(old), "farm:mail")
    (directory / "probe.py").write_text(PROBE)
    (directory / "probe_wsgi.py").write_text(PROBE_WSGI)
    with open(directory / "mysite" / "settings.py", "a") as settings:
        settings.write('\nTASKS["default"]["QUEUES"] = ["mail", "alerts"]\nTASKS["second"] = TASKS["default"]\n')
    config, compiled = compile_config(directory, "ini", out_dir=tmp_path)
    assert compiled.returncode == 0, compiled.stderr
    server = launch(config, directory, expect_mules=2, env={"EXAMPLE_DB": str(db)}, run_dir=tmp_path,
                    app=("--module", "probe_wsgi:application"), extra_args=MODES[mode])
    servers.append(server)
    mules = server.mule_pids()
    queued = {}
    for do in ("sys.exit", "exit", "lambda", "tuple", "using", "plain", "plain kwargs"):
        status, body = server.get(f"/probe?do={do.replace(' ', '+')}")
        assert status == 200, body
        queued[do] = body
    lines = server.wait_lines("probe", 8)
    by_id = {line["id"]: line for line in lines if "id" in line}
    expected = {
        "sys.exit": ("FAILED", ["builtins.SystemExit"], None, "mail", "default", 1),
        "exit": ("FAILED", ["builtins.SystemExit"], None, "mail", "default", 1),
        "lambda": ("FAILED", ["builtins.TypeError"], None, "mail", "default", 1),
        "tuple": ("SUCCESSFUL", [], [1, {"a": "x"}], "mail", "default", 1),
        "using": ("SUCCESSFUL", [], [1, {"a": "x"}], "alerts", "second", 2),
    }
    kept_by_previous = by_id["kept-by-0.1"]
    assert (kept_by_previous["status"], kept_by_previous["value"], kept_by_previous["queue"],
            kept_by_previous["mule"]) == ("SUCCESSFUL", [1, {"a": "x"}], "mail", 1)
    for do, (status, errors, value, queue, backend, mule) in expected.items():
        seen = by_id[queued[do]["id"]]
        assert (seen["status"], seen["errors"], seen["value"], seen["queue"], seen["backend"], seen["result_backend"],
                seen["mule"], seen["enqueued_at"]) == (status, errors, value, queue, backend, backend, mule,
                                                       queued[do]["enqueued_at"]), do
    assert sorted(line["plain"] for line in lines if "plain" in line) == [1, 2]
    assert queued["plain"] == queued["plain kwargs"] == {"queued": True}
    failed = "uwsgiconf-mules: task probe:plain_exit failed in mule 1"  # logged once the call has ended
    log = server.wait_for(lambda: server.log().count(failed) >= 2 and server.log(), what="two failures logged")
    assert log.count(failed) == 2
    assert "SystemExit: 5" in log
    assert server.mule_pids() == mules  # no mule exited: none was respawned
    assert {line["pid"] for line in lines} <= set(mules.values())
