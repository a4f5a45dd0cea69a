"""The test modes with a Flask app made by an app factory: a task's exception propagates to the view
that offloaded it, and Flask turns an exception of a view into a 500 response unless the app is in
testing mode (``TESTING=True``); in testing mode it reaches the test. Without a mode (``flask run``,
the test client outside uWSGI) offloaded calls run inline, in the request."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

flask = pytest.importorskip("flask")

from uwsgiconf_mules.runtime import Farm, instance as _instance  # noqa: E402
from uwsgiconf_mules.testing import eager  # noqa: E402

CONFIG = """
from uwsgiconf_mules import Section

section = Section()
section.workers.set_mules_params(farms=section.workers.mule_farm("mail", 1))
uwsgi_configuration = section.as_configuration()
"""

SENT: list[int] = []


@Farm("mail").offload()
def welcome(user_id: int) -> None:
    if user_id < 0:
        raise ValueError(f"no such user {user_id}")
    SENT.append(user_id)


def create_app(config: dict[str, Any] | None = None) -> Any:
    app = flask.Flask(__name__)
    app.config.update(config or {})

    @app.route("/signup/<int:user_id>")
    def signup(user_id: int) -> str:
        welcome(user_id if user_id != 13 else -13)
        return "ok"

    return app


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    path = tmp_path / f"cfg_{uuid.uuid4().hex}.py"
    path.write_text(CONFIG)
    monkeypatch.delenv("UWSGICONF_MULES", raising=False)
    monkeypatch.delenv("UWSGICONF_MULES_CONFIG", raising=False)
    SENT.clear()
    yield str(path)
    _instance.reset()


def test_eager_task_exception_reaches_the_test_in_testing_mode(config: str) -> None:
    client = create_app({"TESTING": True}).test_client()
    with eager(config) as outbox:
        assert client.get("/signup/4").status_code == 200
        with pytest.raises(ValueError, match="no such user -13"):
            client.get("/signup/13")
    assert SENT == [4]
    assert [call.args for call in outbox.calls] == [(4,), (-13,)]


def test_without_testing_mode_flask_answers_500(config: str) -> None:
    client = create_app().test_client()
    with eager(config):
        assert client.get("/signup/13").status_code == 500  # Flask handled it: assert the status


def test_without_a_mode_calls_run_inline(config: str) -> None:
    client = create_app().test_client()  # as under `flask run`: no mules, the task runs in the request
    assert client.get("/signup/5").status_code == 200
    assert SENT == [5]
