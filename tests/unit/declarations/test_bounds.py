"""What uWSGI cannot run is refused when the config is written, and ``check`` says what this host
would not run: counts past what one process can hold, values uWSGI reads as a C int, an endless send
timeout, programmed mules uWSGI would not find, more file descriptors than ``ulimit -n``."""

from __future__ import annotations

import re
import sys
import time
import types
from pathlib import Path

import pytest
from uwsgiconf.cli import base as uwsgiconf_cli

from support.helpers import assert_one_line_error, invoke
from uwsgiconf_mules import MuleFarm, MulesConfigurationError, Section, cli as cli_module
from uwsgiconf_mules.cli import cli, summary
from uwsgiconf_mules.cli.top import snapshot
from uwsgiconf_mules.declarations import ENV_MAX, MAX_MULES, Declarations, FarmSpec, declare, master_fds

PAST = "uWSGI cannot run more than 262140 mules and farms"


@pytest.mark.parametrize(("params", "message"), [
    ({"mules": 10**12}, f"mules: 1000000000000 mule(s) and 0 farm(s) need about 4000000000016 file descriptors in "
                        f"the uWSGI master (4 per mule and per farm), more than Linux lets one process have (1048576): "
                        f"{PAST}"),
    ({"mules": MAX_MULES, "farms": [MuleFarm("a", 1)]}, f"mules: {MAX_MULES} mule(s) and 1 farm(s) need about "
                                                        "1048580 file descriptors"),
    ({"farms": [MuleFarm("a", [10**12])]}, f"farms: 1000000000000 mule(s) and 1 farm(s) need about {4 * 10**12 + 20}"),
    ({"farms": [MuleFarm("a", 10**12)]}, f"farm 'a': 1000000000000 mule(s) and 1 farm(s) need about {4 * 10**12 + 20}"),
])
def test_counts_uwsgi_cannot_run_are_refused_before_anything_is_made(params: dict[str, object], message: str) -> None:
    began = time.perf_counter()
    with pytest.raises(MulesConfigurationError, match=re.escape(message)):
        declare(**params)  # type: ignore[arg-type]
    assert time.perf_counter() - began < 1  # nothing of that size was made


def test_the_record_s_separator_is_refused_in_every_field_in_one_place() -> None:
    from uwsgiconf_mules.declarations import Declarations, _checked

    with pytest.raises(MulesConfigurationError, match=re.escape(
            "spool_dir: '/srv/a;mules=9' contains ';', which separates the fields of the declarations record")):
        _checked(Declarations((None,), spool_dir="/srv/a;mules=9"))


def test_the_most_mules_uwsgi_can_run_follow_from_the_descriptors_of_one_process() -> None:
    assert MAX_MULES == (2**20 - 16) // 4 == 262140
    assert master_fds(1, 240) == 980  # uWSGI 2.0.31, measured: 979 descriptors in the master


@pytest.mark.parametrize(("params", "message"), [
    ({"send_timeout": float("inf")}, "send_timeout must be a positive number of seconds, and finite, not inf"),
    ({"send_timeout": float("nan")}, "send_timeout must be a positive number of seconds, and finite, not nan"),
    ({"send_timeout": 10**400}, "send_timeout must be a positive number of seconds, and finite, not 1000"),
    ({"msg_buffer": 2**40}, "msg_buffer 1099511627776 is more than uWSGI can read (2147483647, a C int"),
    ({"harakiri_timeout": 2**31}, "harakiri_timeout 2147483648 is more than uWSGI can read"),
    ({"reload_mercy": 2**63}, "reload_mercy 9223372036854775808 is more than uWSGI can read"),
])
def test_values_uwsgi_cannot_read_and_an_endless_send_timeout_are_refused(
        params: dict[str, object], message: str) -> None:
    with pytest.raises(MulesConfigurationError, match=re.escape(message)):
        declare(**{"mules": 1, **params})  # type: ignore[arg-type]
    declare(mules=1, msg_buffer=2**31 - 1, send_timeout=86400.0)


PROGRAMMED = ("from uwsgiconf_mules import Section\nsection = Section()\n"
              "section.workers.set_mules_params(mules=[{program!r}, None])\n"
              "uwsgi_configuration = section.as_configuration()\n")


@pytest.mark.parametrize(("program", "message"), [
    ("missing.py", "programmed mule 1: script 'missing.py' does not exist in {cwd} (uWSGI would respawn the mule "
                   "for ever)"),
    ("workers/feed.py", "programmed mule 1: script 'workers/feed.py' does not exist in {cwd}"),
    ("no_such_module_anywhere:run", "programmed mule 1: module 'no_such_module_anywhere' is not found in {cwd} or on "
                                    "sys.path (uWSGI would respawn the mule for ever); compile the config where its "
                                    "package is importable"),
    ("json.no_such_part:run", "module 'json.no_such_part' is not found"),
])
def test_programmed_mules_uwsgi_would_not_find_are_refused_when_compiled(
        tmp_path: Path, program: str, message: str) -> None:
    (tmp_path / "uwsgicfg.py").write_text(PROGRAMMED.format(program=program))  # not write_conf: no stub written
    for command in (uwsgiconf_cli, cli):
        assert_one_line_error(invoke(tmp_path, command, "compile", "uwsgicfg.py"), message.format(cwd=tmp_path))
    problems = invoke(tmp_path, cli, "check", "uwsgicfg.py")
    assert problems.returncode == 1
    [line] = problems.stderr.splitlines()
    assert line.startswith("section 'uwsgi': programmed mule 1: ") and message.format(cwd=tmp_path) in line


def test_programmed_mules_are_found_where_the_config_is_compiled_without_importing_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "workers").mkdir()
    (tmp_path / "workers" / "feed.py").write_text("")
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "__init__.py").write_text("raise RuntimeError('imported')\n")
    (tmp_path / "jobs" / "consume.py").write_text("raise RuntimeError('imported')\n")
    monkeypatch.chdir(tmp_path)
    section = Section()
    section.workers.set_mules_params(mules=["workers/feed.py", "jobs.consume:run", "json.decoder:main",
                                            "/srv/elsewhere/mule.py", None])
    section._get_options()  # what compile writes: found, and nothing imported
    assert "jobs" not in sys.modules
    lines, problems = summary(section)
    assert problems == []
    assert lines[-1] == ("warning: programmed mule 4: script '/srv/elsewhere/mule.py' does not exist on this host "
                         "(uWSGI would respawn the mule for ever)")


def test_a_test_or_development_server_reads_the_declarations_without_looking_for_programs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    section = Section()
    section.workers.set_mules_params(mules=["missing.py", None])  # the runtime reads it: not compiled here
    assert section.mules_declarations is not None and section.mules_declarations.programmed == (1,)
    with pytest.raises(MulesConfigurationError, match=re.escape("script 'missing.py' does not exist")):
        section._get_options()


def test_check_is_linear_in_the_mules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "feed.py").write_text("")
    monkeypatch.chdir(tmp_path)
    mules = 40_000  # farms listing them all need a record declare() refuses: the check itself is what is timed
    half = tuple(range(1, mules // 2 + 1))
    declarations = Declarations(("feed.py",) * (mules // 2) + (None,) * (mules // 2),
                                farms=(FarmSpec("all", tuple(range(1, mules + 1))), FarmSpec("half", half)))
    section = types.SimpleNamespace(name="uwsgi", _opts={}, mules_declarations=declarations)
    monkeypatch.setattr(cli_module.check, "_open_files_limit", lambda: None)
    began = time.perf_counter()
    lines, problems = summary(section)
    assert time.perf_counter() - began < 5  # quadratic: minutes
    assert problems == [] and len([line for line in lines if "is in farms 'all', 'half'" in line]) == mules // 2
    assert len([line for line in lines if line.startswith("warning: farm 'all' includes")]) == 2


def test_the_view_of_top_is_linear_in_the_mules() -> None:
    mules = 40_000
    declarations = Declarations(("feed.py",) * (mules // 2) + (None,) * (mules // 2),
                                farms=(FarmSpec("all", tuple(range(1, mules + 1))),), stats="127.0.0.1:9191")
    began = time.perf_counter()
    view = snapshot(declarations, {"metrics": {}})
    assert time.perf_counter() - began < 5  # quadratic: minutes
    assert [mule["kind"] for mule in view["mules"]].count("dispatch") == mules // 2
    assert view["mules"][-1]["farms"] == ["all"]


def test_a_record_uwsgi_could_not_pass_on_when_it_reloads_is_refused() -> None:
    ids = list(range(1, 20_001))
    record = declare(farms=[MuleFarm("all", ids)]).record()
    assert 100_000 < len(f"UWSGICONF_MULES={record}") <= ENV_MAX
    with pytest.raises(MulesConfigurationError, match=r"^the declarations record would be 1[34]\d{4} bytes, more than "
                       r"the 131071 of an environment variable that Linux passes on: uWSGI would stop at its first "
                       r"reload \(it runs itself again with it, 'execvp\(\): Argument list too long'\); list fewer "
                       r"mules in the farms$"):
        declare(farms=[MuleFarm("all", ids), MuleFarm("more", ids[:5000])])


@pytest.mark.parametrize(("mules", "farms", "limit", "warned"), [
    (1, 260, 1024, True),  # uWSGI 2.0.31 under ulimit -n 1024: "socketpair(): Too many open files", exits
    (1, 240, 1024, False),  # it runs, with 979 descriptors in the master
    (300, 0, 1024, True),
    (300, 0, None, False),
])
def test_check_warns_when_the_mules_and_farms_need_more_descriptors_than_ulimit(
        monkeypatch: pytest.MonkeyPatch, mules: int, farms: int, limit: int | None, warned: bool) -> None:
    section = Section()
    section.workers.set_mules_params(mules=mules, farms=[section.workers.mule_farm(f"f{i}", [1]) for i in range(farms)])
    monkeypatch.setattr(cli_module.check, "_open_files_limit", lambda: limit)
    warning = (f"warning: {mules} mule(s) and {farms} farm(s) need about {master_fds(mules, farms)} file descriptors "
               f"in the uWSGI master, more than this process may open (ulimit -n {limit}): uWSGI started with this "
               "limit cannot make their queues; raise it (ulimit -n, LimitNOFILE= of a systemd unit) or declare "
               "fewer mules and farms")
    lines = summary(section)[0]
    assert (warning in lines) is warned
    assert not [line for line in lines if "file descriptors" in line and line != warning]


def test_the_open_files_limit_is_this_process_s() -> None:
    import resource

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert cli_module.check._open_files_limit() == (None if soft == resource.RLIM_INFINITY else soft)
