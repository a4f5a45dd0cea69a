"""Django's ``run_after`` on a real uWSGI: the task runs no earlier than asked, once, in a mule."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.django_site import DJANGO_APP, rows, site
from support.harness import Server, compile_config, launch, stop_all

LATER = '''
    elif via == "later":
        import datetime

        when = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=2)
        queued = tasks.welcome_task.using(run_after=when).enqueue(email).status == "READY"
    elif via == "alater":
        import datetime

        from asgiref.sync import async_to_sync  # as Django runs async code under WSGI (asyncio.run would
        # take the worker's SIGINT for its own)

        when = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=2)
        queued = async_to_sync(tasks.welcome_task.using(run_after=when).aenqueue)(email).status == "READY"
    else:'''


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    stop_all(started)


@pytest.mark.parametrize("via", ["later", "alater"])
def test_run_after_is_honoured(tmp_path: Path, servers: list[Server], via: str) -> None:
    directory, db = site(tmp_path)
    views = directory / "shop" / "views.py"
    text = views.read_text()
    assert "\n    else:" in text
    views.write_text(text.replace("\n    else:", LATER, 1))
    config, compiled = compile_config(directory, "ini", out_dir=tmp_path)
    assert compiled.returncode == 0, compiled.stderr
    server = launch(config, directory, expect_mules=2, env={"EXAMPLE_DB": str(db)}, run_dir=tmp_path,
                    app=DJANGO_APP)
    servers.append(server)
    sent = time.monotonic()
    assert server.get(f"/signup?email=later@example.com&via={via}") == (200, {"queued": True})
    time.sleep(1.0)
    assert rows(db) == []  # not yet
    found = server.wait_for(lambda: rows(db), 20, "the delayed welcome")
    assert time.monotonic() - sent >= 2.0
    time.sleep(0.5)
    assert [(email, via) for email, via, _ in rows(db)] == [("later@example.com", "task")]
    assert found[0][2] in (1, 2)


FAILS = '''
    elif via == "fails":
        queued = tasks.count_welcomes.enqueue("").status == "READY"  # raises ValueError("no email") in the mule
    else:'''


def test_a_failed_django_task_is_a_dead_letter_listed_under_its_own_path(tmp_path: Path, servers: list[Server]) -> None:
    import subprocess

    from support.harness import BIN

    directory, db = site(tmp_path)
    views = directory / "shop" / "views.py"
    views.write_text(views.read_text().replace("\n    else:", FAILS, 1))
    config, compiled = compile_config(directory, "ini", out_dir=tmp_path)
    assert compiled.returncode == 0, compiled.stderr
    server = launch(config, directory, expect_mules=2, env={"EXAMPLE_DB": str(db)}, run_dir=tmp_path,
                    app=DJANGO_APP)
    servers.append(server)
    assert server.get("/signup?email=x&via=fails") == (200, {"queued": True})

    def listed() -> str:
        found = subprocess.run([str(BIN / "uwsgiconf-mules"), "spool", "list", str(config)], capture_output=True,
                               text=True, cwd=directory, check=False).stdout
        return found if "failed: shop.tasks.count_welcomes" in found else ""

    text = server.wait_for(listed, 20, "the failed dead letter")
    # Under the task's own path, not the backend's runner (uwsgiconf_mules.django:_run).
    assert "1 x shop.tasks.count_welcomes (failed: shop.tasks.count_welcomes)" in text, text
    assert "uwsgiconf_mules.django:_run" not in text
