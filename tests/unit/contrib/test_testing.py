"""Test modes (``uwsgiconf_mules.testing``), the pytest plugin, and the project's declarations
loaded outside uWSGI from ``UWSGICONF_MULES_CONFIG``."""

from __future__ import annotations

import datetime
import subprocess
import sys
import textwrap
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from uwsgiconf_mules import errors
from uwsgiconf_mules.declarations import declare
from uwsgiconf_mules.runtime import Farm, Mule, instance as _instance, mule_offload
from uwsgiconf_mules.testing import Offload, Outbox, Sent, capture, eager

RAN: list[object] = []

CONFIG = """
from uwsgiconf_mules import Section

section = Section(name="{name}")
farms = [section.workers.mule_farm("mail", [1]), section.workers.mule_farm("inbox", [3])]
section.workers.set_mules_params(mules=[None, None, "inbox.py"], farms=farms)
uwsgi_configuration = section.as_configuration()
"""

TWO_SECTIONS = """
from uwsgiconf_mules import Section
from uwsgiconf.config import Configuration

web = Section(name="web")
web.workers.set_mules_params(farms=web.workers.mule_farm("mail", 1))
jobs = Section(name="jobs")
jobs.workers.set_mules_params(farms=jobs.workers.mule_farm("reports", 2))
uwsgi_configuration = [Configuration([web], alias="web"), Configuration([jobs], alias="jobs")]
"""


@mule_offload("mail")
def send_mail(user_id: int, *, subject: str = "") -> None:
    RAN.append(("mail", user_id, subject))


@mule_offload("emails")  # not declared: the config says 'mail'
def misnamed(user_id: int) -> None:
    RAN.append(("emails", user_id))


@mule_offload(7)  # not declared: three mules
def seventh() -> None:
    RAN.append("seventh")


@mule_offload(2)
def broken(reason: str) -> None:
    raise RuntimeError(reason)


@mule_offload(2)
def answers(question: str) -> int:
    return 42


@mule_offload(2)
async def answers_later() -> str:
    return "later"


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A uwsgicfg-like module (a unique name: uwsgiconf imports configs by file name) declaring
    mules 1-3, farm 'mail' (mule 1) and farm 'inbox' (programmed mule 3); no record in the
    environment."""
    path = tmp_path / f"cfg_{uuid.uuid4().hex}.py"
    path.write_text(CONFIG.format(name="uwsgi"))
    monkeypatch.delenv("UWSGICONF_MULES", raising=False)
    monkeypatch.delenv("UWSGICONF_MULES_CONFIG", raising=False)
    RAN.clear()
    _instance.reset()
    yield path
    _instance.reset()


def use_config(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("UWSGICONF_MULES_CONFIG", value)
    _instance.reset()


def test_config_env_makes_undeclared_targets_fail_outside_uwsgi(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert misnamed(1) is True  # inline, unchecked: nothing is declared yet
    use_config(monkeypatch, str(config))
    with pytest.raises(errors.UnknownTargetError, match=r"farm 'emails' is not declared; .*'mail' \(mule 1\)"):
        Farm("emails")
    with pytest.raises(errors.UnknownTargetError, match="mule 7 is not declared") as info:
        Mule(7)
    assert str(info.value).endswith(
        f"(declarations of UWSGICONF_MULES_CONFIG={config}, as uWSGI reads them once the config is compiled)")
    with pytest.raises(errors.UnknownTargetError, match="farm 'emails' is not declared"):
        misnamed(2)  # decorated before: checked at its next call
    with pytest.raises(errors.UnknownTargetError, match="mule 7 is not declared"):
        seventh()
    assert Farm("mail").mules == (Mule(1),)
    assert send_mail(5) is True  # declared: runs inline, as before
    assert RAN == [("emails", 1), ("mail", 5, "")]


def test_a_fresh_process_with_the_config_env_refuses_an_undeclared_farm(config: Path, tmp_path: Path) -> None:
    # As a development server started with UWSGICONF_MULES_CONFIG=...: the tasks module fails to import.
    (tmp_path / "tasks.py").write_text(TASKS.replace('"mail"', '"emails"'))
    env = {"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1", "UWSGICONF_MULES_CONFIG": str(config)}
    proc = subprocess.run([sys.executable, "-c", "import tasks"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60, env=env, check=False)
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-1].startswith(
        "uwsgiconf_mules.errors.UnknownTargetError: farm 'emails' is not declared; declared: mules 1..3; farms: "
        "'mail' (mule 1), 'inbox' (mule 3) (declarations of UWSGICONF_MULES_CONFIG=")


def test_config_env_takes_a_module_name(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(config.parent))
    use_config(monkeypatch, config.stem)
    assert [farm.name for farm in Farm.get_farms()] == ["mail", "inbox"]


def test_config_env_chooses_a_section(tmp_path: Path, config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    two = tmp_path / f"cfg_{uuid.uuid4().hex}.py"
    two.write_text(TWO_SECTIONS)
    use_config(monkeypatch, str(two))
    with pytest.raises(errors.MulesConfigurationError,
                       match=r"several sections of .* declare mules \('web', 'jobs'\); name one: "
                             r"UWSGICONF_MULES_CONFIG=.*:SECTION"):
        Farm("mail")
    use_config(monkeypatch, f"{two}:jobs")
    assert [farm.name for farm in Farm.get_farms()] == ["reports"]
    use_config(monkeypatch, f"{two}:api")
    with pytest.raises(errors.MulesConfigurationError, match=r"no section 'api' declares mules .*'web', 'jobs'"):
        Farm.get_farms()


@pytest.mark.parametrize(("source", "message"), [
    ("raise ImportError('no module named shop')",
     "cannot load the configuration module .*: ImportError: no module named shop"),
    ("x = 1", "defines no uwsgi_configuration"),
    ("from uwsgiconf.config import Section\nuwsgi_configuration = Section().as_configuration()",
     "declares no mules"),
])
def test_a_config_env_that_cannot_work_says_why(tmp_path: Path, config: Path, monkeypatch: pytest.MonkeyPatch,
                                                source: str, message: str) -> None:
    bad = tmp_path / f"cfg_{uuid.uuid4().hex}.py"
    bad.write_text(source + "\n")
    use_config(monkeypatch, str(bad))
    with pytest.raises(errors.MulesConfigurationError, match=f"UWSGICONF_MULES_CONFIG={bad}: .*{message}"):
        Mule(1)


def test_the_record_wins_and_uwsgi_never_loads_the_config(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UWSGICONF_MULES", "v2;mules=1")
    use_config(monkeypatch, str(config))
    assert _instance.declarations() is not None and _instance.declarations().mule_count == 1  # type: ignore[union-attr]
    monkeypatch.delenv("UWSGICONF_MULES")
    monkeypatch.setattr(_instance, "uwsgi", object())  # as in a uWSGI process: only the record counts
    _instance.reset()
    assert _instance.declarations() is None


def test_capture_records_calls_and_does_not_run_them(config: Path) -> None:
    with capture(str(config)) as outbox:
        assert send_mail(7, subject="hi") is True
        assert Farm("inbox").send("ping") is True
        assert Mule(3).send(b"pong") is True
        mail, inbox = Farm("mail"), Farm("inbox")
    assert RAN == []
    assert [(c.key, c.target, c.args, c.kwargs) for c in outbox] == [
        (f"{__name__}:send_mail", mail, (7,), {"subject": "hi"})]
    assert outbox[0].func.__name__ == "send_mail"
    assert [(s.target, s.message) for s in outbox.sent] == [(inbox, b"ping"), (Mule(3), b"pong")]
    assert len(outbox.of(send_mail)) == 1 and outbox.of(f"{__name__}:seventh") == []
    assert outbox.run() == 1  # later, here
    assert RAN == [("mail", 7, "hi")] and len(outbox) == 0


def test_nowait_calls_are_recorded_and_run_alike(config: Path) -> None:
    with capture(str(config)) as outbox:
        assert send_mail.nowait(8) is True
    assert [call.args for call in outbox] == [(8,)] and RAN == []
    with eager(str(config)):
        send_mail.nowait(9)
        with pytest.raises(RuntimeError, match="at once"):
            broken.nowait("at once")
    assert send_mail.nowait(10) is True  # inline
    assert RAN == [("mail", 9, ""), ("mail", 10, "")]


def test_batches_are_recorded_and_run_call_by_call(config: Path) -> None:
    with capture(str(config)) as outbox:
        assert send_mail.map([1, 2, 3]) == 3
        assert send_mail.starmap([(4,), (5,)]) == 2
        with pytest.raises(errors.PayloadError, match=r"1 of 3 calls cannot be sent, so none was: call 1: ") as info:
            send_mail.starmap([(6,), (lambda: 0,), (7,)])
        assert info.value.failed == (1,)
    assert [call.args for call in outbox] == [(1,), (2,), (3,), (4,), (5,)] and RAN == []
    with eager(str(config)):
        assert send_mail.map(range(8, 10)) == 2
        with pytest.raises(RuntimeError, match="first"):  # runs the calls before it
            broken.starmap([("first",), ("second",)])
    assert send_mail.map([]) == 0
    assert RAN == [("mail", 8, ""), ("mail", 9, "")]


def test_capture_checks_targets_and_arguments_as_production(config: Path) -> None:
    payload = {"a": [1]}
    with capture(str(config)) as outbox:
        with pytest.raises(errors.UnknownTargetError, match=f"farm 'emails' is not declared; .* \\(declarations "
                                                            f"of config={config}, as uWSGI"):
            misnamed(1)
        with pytest.raises(errors.UnknownTargetError, match="mule 7 is not declared"):
            seventh()
        with pytest.raises(errors.PayloadError, match="cannot be pickled"):
            send_mail(lambda: None)  # type: ignore[arg-type]
        send_mail(payload)  # type: ignore[arg-type]
    assert outbox[0].args == (payload,) and outbox[0].args[0] is not payload  # a copy, as a mule gets


def test_after_a_mode_calls_run_inline_again(config: Path) -> None:
    with capture(str(config)):
        send_mail(1)
    assert RAN == []
    send_mail(2)
    misnamed(3)  # the mode's declarations are gone too
    assert RAN == [("mail", 2, ""), ("emails", 3)]


def test_a_mode_within_a_mode_gives_the_outer_one_back(config: Path) -> None:
    with capture(str(config)) as outer:
        with eager(str(config)) as inner:
            send_mail(1)
        send_mail(2)
        with pytest.raises(errors.UnknownTargetError):
            seventh()
    assert [call.args for call in inner] == [(1,)] and [call.args for call in outer] == [(2,)]
    assert RAN == [("mail", 1, "")]


def test_eager_runs_calls_and_propagates_their_exceptions(config: Path) -> None:
    with eager(str(config)) as outbox:
        assert send_mail(9) is True
        assert RAN == [("mail", 9, "")]
        with pytest.raises(RuntimeError, match="boom"):
            broken("boom")
        with pytest.raises(errors.UnknownTargetError):
            misnamed(1)
    assert [call.key.rpartition(":")[2] for call in outbox] == ["send_mail", "broken"]


def test_a_mode_without_declarations_refuses_to_start(config: Path) -> None:
    with pytest.raises(errors.DeclarationsMissingError, match="set UWSGICONF_MULES_CONFIG"), capture():
        pass


def test_modes_read_the_config_env_by_default(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use_config(monkeypatch, str(config))
    with eager(), pytest.raises(errors.UnknownTargetError):
        seventh()


def test_a_returned_value_is_warned_about_once_per_task(config: Path) -> None:
    with eager(str(config)), pytest.warns(errors.ReturnValueWarning) as caught:
        answers("?")
        answers("again")
        answers_later()
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2
    assert f"task {__name__}:answers returned a int, which is discarded: offloaded calls have no results" in \
        messages[0]
    assert "answers_later returned a str" in messages[1]


def test_inline_calls_warn_about_returned_values_too(config: Path) -> None:
    with eager(str(config)):  # starts a fresh once-per-task record
        pass
    with pytest.warns(errors.ReturnValueWarning, match="answers returned a int"):
        answers("?")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        answers("?")  # once per task


def test_recorded_objects_describe_themselves() -> None:
    call = Offload("m:f", Mule(1), print, (1,), {})
    assert repr(call) == "Offload('m:f', target=Mule(1), args=(1,), kwargs={})"
    assert repr(Sent(Mule(2), b"x")) == "Sent(target=Mule(2), message=b'x')"
    with pytest.raises(errors.UsageError, match="takes an offloaded function, a task key or a Django task"):
        Outbox().of(3)


PLUGIN_TEST = '''
import sys

import pytest

from uwsgiconf_mules import errors


def test_plugin_is_idle_until_a_fixture_is_used():
    assert "uwsgiconf_mules.runtime" not in sys.modules
    assert "uwsgiconf_mules.testing" not in sys.modules


def test_outbox(mules_outbox):
    import tasks
    tasks.welcome(3)
    assert [(c.key, c.args) for c in mules_outbox] == [("tasks:welcome", (3,))]
    with pytest.raises(errors.UnknownTargetError, match="farm 'emails' is not declared"):
        import misnamed


def test_eager(mules_eager):
    import tasks
    with pytest.raises(ValueError, match="no such user 4"):
        tasks.welcome(4)
'''

TASKS = '''
from uwsgiconf_mules.runtime import mule_offload


@mule_offload("mail")
def welcome(user_id):
    if user_id == 4:
        raise ValueError(f"no such user {user_id}")
'''


def test_pytest_plugin_provides_the_fixtures(tmp_path: Path) -> None:
    (tmp_path / "uwsgicfg.py").write_text(CONFIG.format(name="uwsgi"))
    (tmp_path / "tasks.py").write_text(textwrap.dedent(TASKS))
    (tmp_path / "misnamed.py").write_text(TASKS.replace('"mail"', '"emails"'))
    (tmp_path / "test_app.py").write_text(textwrap.dedent(PLUGIN_TEST))
    (tmp_path / "pytest.ini").write_text("[pytest]\nuwsgiconf_mules_config = uwsgicfg.py\npythonpath = .\n")
    env = {"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
                           "test_app.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 passed" in proc.stdout


def test_pytest_fixture_without_declarations_names_the_ini_option(tmp_path: Path) -> None:
    (tmp_path / "test_app.py").write_text("def test_outbox(mules_outbox):\n    pass\n")
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    env = {"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
                           "test_app.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env,
                          check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert ("DeclarationsMissingError: a test mode checks targets against the project's declarations, and none are "
            "known: set UWSGICONF_MULES_CONFIG") in proc.stdout
    assert ("for the pytest fixtures, the ini option uwsgiconf_mules_config names it: `uwsgiconf_mules_config = "
            "uwsgicfg.py` in pytest.ini's [pytest]") in proc.stdout


ROUTED = """
from uwsgiconf_mules import Section

section = Section(name="uwsgi")
section.workers.set_mules_params(mules=1, farms=section.workers.mule_farm("mail", [1]))
section.workers.set_offload_backends(reports="rq://127.0.0.1:1/0?queue=reports&connect_timeout=0.2")
uwsgi_configuration = section.as_configuration()
"""


@mule_offload("reports")
def report(day: str) -> None:
    RAN.append(("reports", day))


def test_test_modes_capture_and_run_calls_to_a_farm_routed_to_rq(config: Path) -> None:
    """A farm routed to RQ (here to a port where nothing listens) is recorded or run by the test
    modes like any other target: nothing is sent to Redis."""
    config.write_text(ROUTED)
    with capture(str(config)) as outbox:
        assert report("monday") is True
    assert [(c.key, c.args) for c in outbox] == [(f"{__name__}:report", ("monday",))]
    assert RAN == []
    with eager(str(config)):
        report("tuesday")
    assert RAN == [("reports", "tuesday")]


PICKLED = ROUTED.replace('queue=reports&', 'queue=reports&serializer=pickle&')


def test_test_modes_check_the_arguments_of_a_json_routed_farm_as_rq_would(config: Path) -> None:
    """A tuple or a date would fail in production (JSON): the modes refuse them at the call too."""
    config.write_text(ROUTED)
    for mode in (capture, eager):
        with mode(str(config)) as outbox:
            with pytest.raises(errors.PayloadError, match=r"report: argument 'day' is a tuple \(JSON would give "
                                                          r"the worker a list\); calls to farm 'reports'"):
                report((1, 2))  # type: ignore[arg-type]
            with pytest.raises(errors.PayloadError, match="argument 'day' is a date"):
                report(datetime.date(2026, 1, 1))  # type: ignore[arg-type]
            report(["monday", {"at": 9}])  # type: ignore[arg-type]
            send_mail((1, 2))  # type: ignore[arg-type]  # a farm of mules: pickled, a tuple is fine
        assert [call.args for call in outbox] == [(["monday", {"at": 9}],), ((1, 2),)]
    assert RAN == [("reports", ["monday", {"at": 9}]), ("mail", (1, 2), "")]
    config.write_text(PICKLED)
    with eager(str(config)):
        report((1, 2))  # type: ignore[arg-type]
    assert RAN[-1] == ("reports", (1, 2))


def test_with_the_config_env_a_routed_farm_runs_inline_after_the_json_check(
        config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Declarations of UWSGICONF_MULES_CONFIG (a development server, tests): calls to a farm routed
    to RQ never go to the Redis the config names (here a port where nothing listens)."""
    config.write_text(ROUTED)
    use_config(monkeypatch, str(config))
    assert report("monday") is True
    assert RAN == [("reports", "monday")]
    with pytest.raises(errors.PayloadError, match="argument 'day' is a tuple"):
        report((1, 2))  # type: ignore[arg-type]
    assert len(RAN) == 1


def test_a_development_server_with_the_config_env_runs_routed_calls_without_rq(tmp_path: Path) -> None:
    """A fresh process, as ``UWSGICONF_MULES_CONFIG=uwsgicfg.py manage.py runserver``: the call
    runs here, and neither RQ nor redis-py is imported."""
    (tmp_path / "uwsgicfg.py").write_text(ROUTED)
    (tmp_path / "reports.py").write_text(textwrap.dedent('''
        from uwsgiconf_mules.runtime import Farm

        @Farm("reports").offload()
        def build(day):
            print("built", day)
    '''))
    code = "import sys, reports\nprint(reports.build('monday'))\nprint(sorted({'rq', 'redis'} & set(sys.modules)))"
    env = {"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1", "UWSGICONF_MULES_CONFIG": "uwsgicfg.py"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["built monday", "True", "[]"]


def test_with_a_record_a_routed_farm_is_sent_to_its_engine(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An explicit record (a script, a worker host) keeps routing outside uWSGI."""
    monkeypatch.setenv("UWSGICONF_MULES", declare(
        mules=1, backends={"reports": "rq://127.0.0.1:1/0?queue=reports&connect_timeout=0.2"}).record())
    _instance.reset()
    with pytest.raises(errors.DeliveryError, match="Redis did not accept the job"):
        report("monday")
    assert RAN == []


def test_a_config_given_by_path_is_that_file_every_time(tmp_path: Path, config: Path) -> None:
    """Two configs with one file name, and one named after a module already imported (string.py):
    each path gives its own declarations, and nothing is left in sys.modules."""
    first, second, third = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for directory, farm in ((first, "mail"), (second, "reports"), (third, "thumbs")):
        directory.mkdir()
        (directory / ("string.py" if directory is third else "uwsgicfg.py")).write_text(
            ONE_FARM.format(farm=farm))
    modules = set(sys.modules)
    for path, farm in ((first / "uwsgicfg.py", "mail"), (second / "uwsgicfg.py", "reports"),
                       (third / "string.py", "thumbs"), (first / "uwsgicfg.py", "mail")):
        with capture(str(path)):
            assert [found.name for found in Farm.get_farms()] == [farm]
    assert set(sys.modules) - modules == set()


ONE_FARM = """
from uwsgiconf_mules import Section

section = Section()
section.workers.set_mules_params(farms=[section.workers.mule_farm("{farm}", 1)])
uwsgi_configuration = section.as_configuration()
"""


def test_a_config_path_that_is_not_a_file_says_so(tmp_path: Path, config: Path, monkeypatch: pytest.MonkeyPatch,
                                                  ) -> None:
    monkeypatch.chdir(tmp_path)
    use_config(monkeypatch, "nope.py")
    with pytest.raises(errors.MulesConfigurationError) as info:
        Mule(1)
    assert str(info.value) == f"UWSGICONF_MULES_CONFIG=nope.py: nope.py: file not found (relative to {tmp_path})"
    with pytest.raises(errors.MulesConfigurationError, match=r"^config=nope\.py: nope\.py: file not found"), \
            capture("nope.py"):
        pass


def test_the_ini_option_is_taken_from_the_ini_files_directory(tmp_path: Path) -> None:
    """pytest run from a subdirectory (tests/): the config path of pytest.ini is found next to it;
    a path that is not there names the ini option and the file."""
    (tmp_path / "uwsgicfg.py").write_text(CONFIG.format(name="uwsgi"))
    (tmp_path / "tasks.py").write_text(textwrap.dedent(TASKS))
    (tmp_path / "misnamed.py").write_text(TASKS.replace('"mail"', '"emails"'))
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_app.py").write_text(textwrap.dedent(PLUGIN_TEST))
    ini = tmp_path / "pytest.ini"
    ini.write_text("[pytest]\nuwsgiconf_mules_config = uwsgicfg.py\npythonpath = .\n")
    env = {"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", "test_app.py"]
    proc = subprocess.run(command, cwd=tmp_path / "tests", capture_output=True, text=True, timeout=120, env=env,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 passed" in proc.stdout
    ini.write_text("[pytest]\nuwsgiconf_mules_config = deploy/uwsgicfg.py\npythonpath = .\n")
    proc = subprocess.run([*command, "-k", "outbox"], cwd=tmp_path / "tests", capture_output=True, text=True,
                          timeout=120, env=env, check=False)
    assert proc.returncode == 1
    assert (f"MulesConfigurationError: uwsgiconf_mules_config = deploy/uwsgicfg.py (in {ini}): "
            f"{tmp_path / 'deploy' / 'uwsgicfg.py'}: file not found") in proc.stdout
