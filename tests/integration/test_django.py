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

from django_site import MODES, rows, start
from harness import Server, stop_all


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
    assert "1 x uwsgiconf_mules.django:_run (cannot import the Django task shop.tasks.welcome_task" in listed.stdout
