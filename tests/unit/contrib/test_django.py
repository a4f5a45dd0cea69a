"""The Django task backend outside uWSGI (``uwsgiconf_mules.django``), each case in a fresh Python
process: Django's settings are process-wide, and configuring them here would leak into other tests.

In uWSGI, with a real Django project: tests/integration/test_django.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from uwsgiconf_mules.declarations import RECORD_ENV, MuleFarm, declare

JOBS = '''
import asyncio
import json
import os

from django.db import connection

try:
    from django.tasks import task
except ImportError:
    from django_tasks import task

OUT = os.environ["JOBS_OUT"]


def note(**data):
    with open(OUT, "a") as handle:
        handle.write(json.dumps(data) + "\\n")


@task(queue_name="mail")
def touch_db(n):
    with connection.cursor() as cursor:
        cursor.execute("select 1")
    note(n=n, connected=connection.connection is not None)


@task(queue_name="mail")
async def later(n):
    await asyncio.sleep(0)
    note(n=n, coroutine=True)


@task(queue_name="mail")
def boom():
    raise RuntimeError("boom in a task")


@task(queue_name="mail", takes_context=True)
def with_context(context, n):
    note(n=n, result_id=context.task_result.id)


@task(queue_name="mail")
def bye(how):
    if how == "sys.exit":
        import sys

        sys.exit(3)
    exit(4)


@task(queue_name="mail")
def gives(kind):
    return (lambda: None) if kind == "lambda" else (1, {"a": b"x"})
'''

SETUP = '''
import json, sys
import django
from django.conf import settings

settings.configure(
    INSTALLED_APPS=["uwsgiconf_mules.django"],
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": "db.sqlite3"}},
    TASKS={"default": {"BACKEND": "uwsgiconf_mules.django.MulesBackend", "QUEUES": @QUEUES@}, @MORE_BACKENDS@},
    USE_TZ=True,
)
django.setup()
import logging
logging.basicConfig(level=logging.INFO, format="LOG %(name)s %(levelname)s %(message)s")
'''


def run_django(tmp_path: Path, code: str, queues: tuple[str, ...] = ("mail",), record: str | None = None,
               more_backends: str = "") -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
    """Run ``code`` in a new Python with Django configured (queues of the backend, declarations
    record or none, more entries of ``TASKS``); returns the process and the lines the jobs wrote."""
    (tmp_path / "jobs.py").write_text(JOBS)
    (tmp_path / "script.py").write_text(SETUP.replace("@QUEUES@", repr(list(queues))).replace(
        "@MORE_BACKENDS@", more_backends) + textwrap.dedent(code))
    out = tmp_path / "out.jsonl"
    env = {key: value for key, value in os.environ.items() if key not in (RECORD_ENV, "DJANGO_SETTINGS_MODULE")}
    env.update(JOBS_OUT=str(out), PYTHONPATH=str(tmp_path))
    if record is not None:
        env[RECORD_ENV] = record
    proc = subprocess.run([sys.executable, "script.py"], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, env=env, check=False)
    lines = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    return proc, lines


MAIL = declare(farms=[MuleFarm("mail", 2)]).record()


def test_outside_uwsgi_a_task_runs_at_once_and_its_connections_are_closed(tmp_path: Path) -> None:
    proc, lines = run_django(tmp_path, """
        from django.db import connection
        from django.tasks.signals import task_enqueued, task_finished, task_started
        import jobs
        seen = []
        for name, signal in (("enqueued", task_enqueued), ("started", task_started), ("finished", task_finished)):
            signal.connect(lambda sender, task_result, name=name, **kw: seen.append((name, task_result.status)),
                           weak=False)
        result = jobs.touch_db.enqueue(1)
        print(json.dumps({"status": result.status, "seen": seen, "open": connection.connection is not None}))
    """.replace("django.tasks.signals", "django.tasks.signals" if _django6() else "django_tasks.signals"))
    assert proc.returncode == 0, proc.stderr
    assert lines == [{"n": 1, "connected": True}]
    report = json.loads(proc.stdout)
    assert report == {"status": "READY", "seen": [["enqueued", "READY"], ["started", "RUNNING"],
                                                  ["finished", "SUCCESSFUL"]],
                      "open": False}


def test_async_and_context_tasks_run(tmp_path: Path) -> None:
    proc, lines = run_django(tmp_path, """
        import jobs
        jobs.later.enqueue(2)
        result = jobs.with_context.enqueue(3)
        print(result.id)
    """)
    assert proc.returncode == 0, proc.stderr
    assert lines == [{"n": 2, "coroutine": True}, {"n": 3, "result_id": proc.stdout.strip()}]


def test_a_failing_task_is_logged_with_its_path(tmp_path: Path) -> None:
    proc, _ = run_django(tmp_path, """
        import jobs
        print(jobs.boom.enqueue().status)
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "READY"
    assert "LOG uwsgiconf_mules ERROR uwsgiconf-mules: task jobs.boom failed" in proc.stderr
    assert "RuntimeError: boom in a task" in proc.stderr


def test_a_task_that_cannot_be_imported_in_the_mule_is_reported_as_such(tmp_path: Path) -> None:
    proc, _ = run_django(tmp_path, """
        from uwsgiconf_mules.django import _run
        _run("shop.gone.welcome", "some-id", "default", [], {})
    """)
    assert proc.returncode == 0, proc.stderr
    assert ("uwsgiconf-mules: mule 0 cannot import the Django task shop.gone.welcome (ModuleNotFoundError: No module "
            "named 'shop')") in proc.stderr
    assert "failed" not in proc.stderr


def test_unsupported_features_are_refused_at_enqueue_and_run_after_is_honoured(tmp_path: Path) -> None:
    proc, _ = run_django(tmp_path, """
        import datetime
        import jobs
        from uwsgiconf_mules.django import MulesBackend
        print(MulesBackend.supports_defer, MulesBackend.supports_get_result, MulesBackend.supports_priority,
              MulesBackend.supports_async_task)
        try:
            jobs.touch_db.using(priority=5).enqueue(1)
        except Exception as exc:
            print(type(exc).__name__)
        later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
        print(jobs.touch_db.using(run_after=later).enqueue(2).status)  # a delayed call: here, at once
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "True", "False", "True", "InvalidTask" if _django6()
                                   else "InvalidTaskError", "READY"]


def test_a_naive_run_after_under_use_tz_false_is_taken_in_the_current_time_zone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.modules[__name__], "SETUP", SETUP.replace("USE_TZ=True", "USE_TZ=False"))
    proc, _ = run_django(tmp_path, """
        import datetime
        import jobs
        from django.utils import timezone
        from uwsgiconf_mules.contrib.django import _aware
        later = datetime.datetime.now() + datetime.timedelta(hours=1)  # naive: what Django makes with USE_TZ=False
        print(jobs.touch_db.using(run_after=later).enqueue(2).status)
        print(_aware(later) == timezone.make_aware(later), timezone.is_aware(_aware(later)))
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["READY", "True", "True"]


def test_a_queue_that_is_not_a_declared_farm_fails_at_enqueue(tmp_path: Path) -> None:
    proc, lines = run_django(tmp_path, """
        import jobs
        try:
            jobs.touch_db.enqueue(1)
        except Exception as exc:
            print(type(exc).__name__, exc)
    """, record=declare(farms=[MuleFarm("emails", 1)]).record())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("UnknownTargetError farm 'mail' is not declared; declared: mule 1; farms: "
                                  "'emails' (mule 1)")
    assert lines == []


SIGNALS = """
    from django.tasks.signals import task_enqueued, task_finished, task_started
    seen = []
    for name, signal in (("enqueued", task_enqueued), ("started", task_started), ("finished", task_finished)):
        signal.connect(lambda sender, task_result, name=name, **kw: seen.append(name), weak=False)
"""


def _signals(code: str) -> str:
    return textwrap.dedent(SIGNALS).replace("django.tasks.signals", "django.tasks.signals" if _django6()
                                            else "django_tasks.signals") + textwrap.dedent(code)


def test_eager_propagates_a_task_exception_and_the_outbox_selects_django_tasks(tmp_path: Path) -> None:
    proc, lines = run_django(tmp_path, _signals("""
        import jobs
        from uwsgiconf_mules.testing import capture, eager
        with eager() as outbox:
            try:
                jobs.boom.enqueue()
            except RuntimeError as exc:
                print("raised", exc)
            jobs.touch_db.enqueue(1)
        print("seen", seen)
        print("of", [call.args[3] for call in outbox.of(jobs.touch_db)], len(outbox.of(jobs.boom)))
        with capture() as outbox:
            jobs.touch_db.enqueue(2)
            jobs.boom.enqueue()
            jobs.touch_db.enqueue(3)
            print("captured", [call.args[3] for call in outbox.of(jobs.touch_db)], len(outbox.of(jobs.boom)))
            try:
                outbox.run()
            except RuntimeError as exc:
                print("run raised", exc, len(outbox))
    """), record=MAIL)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "raised boom in a task",
        "seen ['enqueued', 'started', 'finished', 'enqueued', 'started', 'finished']",
        "of [[1]] 1",
        "captured [[2], [3]] 1",
        "run raised boom in a task 2",  # touch_db(2) ran; boom and touch_db(3) stay recorded
    ]
    assert lines == [{"n": 1, "connected": True}, {"n": 2, "connected": True}]
    assert "uwsgiconf-mules: task jobs.boom failed" not in proc.stderr  # the test gets the exception instead


def test_a_refused_call_sends_no_task_enqueued_and_the_error_names_the_task(tmp_path: Path) -> None:
    proc, lines = run_django(tmp_path, _signals("""
        import jobs
        from uwsgiconf_mules.testing import capture
        with capture() as outbox:
            for value in ("x" * 300_000, 4):
                try:
                    jobs.touch_db.enqueue(value)
                except Exception as exc:
                    print(type(exc).__name__, str(exc)[:25], "uwsgiconf_mules.django" in str(exc))
            print("seen", seen, "recorded", len(outbox))
        try:
            jobs.touch_db.using(queue_name="emails").enqueue(5)
        except Exception as exc:
            print(type(exc).__name__, str(exc)[:29])
        print("seen", seen)
    """), queues=("mail", "emails"), record=MAIL)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "PayloadError jobs.touch_db: message of False",
        "seen ['enqueued'] recorded 1",  # only the call that was accepted (4)
        "UnknownTargetError farm 'emails' is not declared",
        "seen ['enqueued']",
    ]
    assert lines == []


RESULTS = """
    import json, sys, time
    from django.tasks import signals
    from django.tasks.base import TaskResultStatus
    import jobs

    finished = {}


    def on_finished(sender, task_result, **kwargs):
        successful = task_result.status == TaskResultStatus.SUCCESSFUL
        finished[task_result.id] = {
            "status": task_result.status, "errors": [error.exception_class_path for error in task_result.errors],
            "return": task_result.return_value if successful else None, "enqueued_at": task_result.enqueued_at,
            "queue": task_result.task.queue_name, "backend": task_result.task.backend == task_result.backend}


    signals.task_finished.connect(on_finished, weak=False)
    signals.task_enqueued.connect(lambda **kwargs: time.sleep(0.01), weak=False)  # enqueued, then started later
    calls = {"sys.exit": (jobs.bye, "sys.exit"), "exit": (jobs.bye, "exit"), "lambda": (jobs.gives, "lambda"),
             "tuple": (jobs.gives, "tuple"), "queue": (jobs.gives.using(queue_name="emails"), "tuple")}
    report = {}
    for name, (task, argument) in calls.items():
        for backend in ("default", "immediate"):
            result = task.using(backend=backend).enqueue(argument)
            seen = finished[result.id]
            seen["enqueued_at"] = seen["enqueued_at"] == result.enqueued_at  # the caller's
            report.setdefault(name, {})[backend] = seen
    print(json.dumps(report))
"""


def test_results_match_djangos_immediate_backend(tmp_path: Path) -> None:
    # What the mule reports through task_finished, next to what Django's immediate backend reports for
    # the same calls: SystemExit fails the task (the process goes on), a return value that is not JSON
    # fails it with TypeError, enqueued_at is the caller's, .using() overrides are kept.
    api = "django.tasks" if _django6() else "django_tasks"
    proc, _ = run_django(tmp_path, RESULTS.replace("django.tasks", api), queues=("mail", "emails"),
                         more_backends=f'"immediate": {{"BACKEND": "{api}.backends.immediate.ImmediateBackend", '
                                       '"QUEUES": ["mail", "emails"]}')
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    expected = {
        "sys.exit": ("FAILED", ["builtins.SystemExit"], None, "mail"),
        "exit": ("FAILED", ["builtins.SystemExit"], None, "mail"),
        "lambda": ("FAILED", ["builtins.TypeError"], None, "mail"),
        "tuple": ("SUCCESSFUL", [], [1, {"a": "x"}], "mail"),
        "queue": ("SUCCESSFUL", [], [1, {"a": "x"}], "emails"),
    }
    for name, (status, errors, value, queue) in expected.items():
        for backend in ("default", "immediate"):
            assert report[name][backend] == {"status": status, "errors": errors, "return": value,
                                             "enqueued_at": True, "queue": queue, "backend": True}, (name, backend)
    assert proc.stderr.count("uwsgiconf-mules: task jobs.bye failed") == 2
    assert "uwsgiconf-mules: task jobs.gives failed" in proc.stderr


CHECK = """
    from django.core import checks
    for message in checks.run_checks():
        print(message.id, message.msg)
"""


@pytest.mark.parametrize("queues, record, expected", [
    (("mail",), MAIL, []),
    (("mail", "emails"), MAIL, ["uwsgiconf_mules.E001 task backend 'default': queue 'emails' is not a farm declared "
                                "in the uWSGI config; declared: mules 1..2; farms: 'mail' (mules 1, 2)"]),
    (("mail",), declare(mules=["feed.py", None], farms=[MuleFarm("mail", [1])]).record(),
     ["uwsgiconf_mules.E002 task backend 'default': farm 'mail' has only programmed mules (1), which do not run "
      "tasks"]),
    (("mail",), None, []),  # every manage.py command runs the checks: nothing to say there
    (("mail", "reports"), declare(farms=[MuleFarm("mail", 1)], backends={"reports": "rq://127.0.0.1:1/0"}).record(),
     []),
], ids=["declared", "undeclared", "programmed", "no-declarations", "routed"])
def test_system_check_compares_queues_with_declared_farms(
        tmp_path: Path, queues: tuple[str, ...], record: str | None, expected: list[str]) -> None:
    proc, _ = run_django(tmp_path, CHECK, queues, record)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == expected


CHECK_DEPLOY = """
    from django.core import checks
    for message in checks.run_checks(include_deployment_checks=True):
        if message.id.startswith("uwsgiconf_mules"):
            print(message.id, message.msg)
            print(message.hint)
"""


@pytest.mark.parametrize("record", [None, MAIL], ids=["no-declarations", "declared"])
def test_deploy_check_says_when_queues_cannot_be_checked_and_how_to(tmp_path: Path, record: str | None) -> None:
    proc, _ = run_django(tmp_path, CHECK_DEPLOY, ("mail",), record)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ([] if record else [
        "uwsgiconf_mules.I001 task backend 'default': no uwsgiconf-mules declarations are known in this process, so "
        "its queues ['mail'] cannot be checked against the farms of the uWSGI config",
        "Name the uWSGI config module to check them: UWSGICONF_MULES_CONFIG=uwsgicfg.py manage.py check (a path, or "
        "a module name). Outside uWSGI tasks run at once in the caller."])


def test_a_task_outside_the_queues_says_what_to_declare(tmp_path: Path) -> None:
    proc, _ = run_django(tmp_path, """
        try:
            from django.tasks import task
        except ImportError:
            from django_tasks import task

        def send():
            pass

        for queue in (None, "emails"):
            try:
                (task(send) if queue is None else task(queue_name=queue)(send)).enqueue()
            except Exception as exc:
                print(type(exc).__name__.startswith("InvalidTask"), exc)
    """, ("mail",), MAIL)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "True task __main__.send: queue 'default' is not one of the QUEUES of task backend 'default' (['mail']): "
        "give the task a queue, @task(queue_name='mail'), or declare a farm 'default' "
        "(section.workers.mule_farm('default', N)) and add it to QUEUES",
        "True task __main__.send: queue 'emails' is not one of the QUEUES of task backend 'default' (['mail']): use "
        "one of them, or declare a farm 'emails' (section.workers.mule_farm('emails', N)) and add it to QUEUES"]


def test_a_task_for_a_routed_queue_is_sent_to_its_engine(tmp_path: Path) -> None:
    # With the record (a worker host, a script), a queue routed to RQ is sent there: here nothing
    # listens, so the call is refused, named after the task, and announced to nobody.
    proc, lines = run_django(tmp_path, """
        import jobs
        try:
            jobs.touch_db.using(queue_name="reports").enqueue(1)
        except Exception as exc:
            print(type(exc).__name__, exc)
    """, queues=("mail", "reports"),
        record=declare(mules=1, backends={"reports": "rq://127.0.0.1:1/0?connect_timeout=0.2"}).record())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("DeliveryError jobs.touch_db to farm 'reports' (RQ queue 'reports' at 127.0.0.1:1/0)")
    assert lines == []


def test_the_runtime_never_imports_django(tmp_path: Path) -> None:
    code = "import sys, uwsgiconf_mules.runtime, uwsgiconf_mules.logs\nprint(any('django' in m for m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert proc.stdout.strip() == "False", proc.stderr


def _django6() -> bool:
    import django

    return django.VERSION >= (6,)


def test_aenqueue_sends_with_aoffload_and_announces_as_enqueue_does(tmp_path: Path) -> None:
    proc, lines = run_django(tmp_path, _signals("""
        import asyncio
        import jobs
        from uwsgiconf_mules.django import MulesBackend
        from uwsgiconf_mules.testing import capture

        MulesBackend.enqueue = None  # aenqueue must not hand the call to a thread running enqueue

        async def main():
            result = await jobs.with_context.aenqueue(1)  # outside uWSGI it runs here (no database in a loop)
            print("ran", result.status, seen, result.id)
            with capture() as outbox:
                for value in ("x" * 300_000, 4):
                    try:
                        await jobs.touch_db.aenqueue(value)
                    except Exception as exc:
                        print(type(exc).__name__, str(exc)[:25])
                print("recorded", len(outbox), seen)

        asyncio.run(main())
    """), record=MAIL)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    result_id = out[0].rsplit(" ", 1)[-1]
    assert out == [
        f"ran READY ['enqueued', 'started', 'finished'] {result_id}",
        "PayloadError jobs.touch_db: message of",
        "recorded 1 ['enqueued', 'started', 'finished', 'enqueued']",
    ]
    assert lines == [{"n": 1, "result_id": result_id}]


def test_results_get_result_refresh_errors_and_signals_agree_with_the_store(tmp_path: Path) -> None:
    proc, _ = run_django(tmp_path, """
        from django.tasks.signals import task_finished, task_started
        from django.tasks import default_task_backend
        from django.tasks.exceptions import TaskResultDoesNotExist
        import jobs
        seen = []
        for name, signal in (("started", task_started), ("finished", task_finished)):
            signal.connect(lambda sender, task_result, name=name, **kw: seen.append(
                (name, task_result.status, default_task_backend.get_result(task_result.id).status)), weak=False)
        ok = jobs.gives.enqueue("tuple")
        assert ok.status == "READY"  # as enqueue returns it: the call ran (outside uWSGI), refresh() reads it
        ok.refresh()
        failed = default_task_backend.get_result(jobs.boom.enqueue().id)
        try:
            default_task_backend.get_result("nope")
        except TaskResultDoesNotExist as exc:
            missing = str(exc)
        from uwsgiconf_mules.runtime import results
        unknown = results.new_id(60)  # well formed, unexpired, never enqueued: the backend wrote no record
        try:
            default_task_backend.get_result(unknown)
        except TaskResultDoesNotExist as exc:
            missing += " | " + str(exc).replace(unknown, "ID")
        print(json.dumps({"supports": default_task_backend.supports_get_result, "status": ok.status,
                          "value": ok.return_value, "task": ok.task.module_path, "args": ok.args,
                          "times": ok.enqueued_at <= ok.started_at <= ok.finished_at,
                          "failed": [failed.status, failed.errors[0].exception_class_path,
                                     "boom in a task" in failed.errors[0].traceback], "seen": seen,
                          "missing": missing}))
    """.replace("django.tasks.signals", "django.tasks.signals" if _django6() else "django_tasks.signals").replace(
        "from django.tasks ", "from django.tasks " if _django6() else "from django_tasks ").replace(
        "django.tasks.exceptions", "django.tasks.exceptions" if _django6() else "django_tasks.exceptions"))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report == {
        "supports": True, "status": "SUCCESSFUL", "value": [1, {"a": "x"}],
        "task": "jobs.gives", "args": ["tuple"], "times": True,
        "failed": ["FAILED", "builtins.RuntimeError", True],
        "seen": [["started", "RUNNING", "RUNNING"], ["finished", "SUCCESSFUL", "SUCCESSFUL"],
                 ["started", "RUNNING", "RUNNING"], ["finished", "FAILED", "FAILED"]],
        "missing": "no result 'nope': not an id of this backend | no result ID: no record in the results store "
                   "(never enqueued here, or evicted from a full store: the least recently used go first)"}
