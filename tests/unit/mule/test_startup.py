"""A dispatch mule's start-up steps (``_startup``) and the task logging context (``logs``), as pure
logic; on a real uWSGI: tests/integration/test_startup.py and tests/integration/test_django.py."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
from collections.abc import Iterator

import pytest

from uwsgiconf_mules import logs
from uwsgiconf_mules.mule import startup as _startup
from uwsgiconf_mules.protocol import envelope as _protocol
from uwsgiconf_mules.runtime import tasks as _tasks


def run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          check=True).stdout.strip()


def test_logging_is_installed_only_when_nobody_configured_it() -> None:
    code = ("import logging, sys; from uwsgiconf_mules.mule import startup as _startup\n"
            "{setup}\n"
            "print(_startup.install_logging(), len(logging.getLogger().handlers), logging.getLogger().level)")
    assert run(code.format(setup="")) == "True 1 20"  # one handler, INFO
    assert run(code.format(setup="logging.basicConfig(level=logging.DEBUG)")) == "False 1 10"  # kept as it was
    assert run(code.format(setup="logging.getLogger().setLevel(logging.ERROR)")) == "True 1 40"  # its level kept


def test_starting_a_mule_imports_only_the_standard_library_and_never_django() -> None:
    loaded = run("import sys, uwsgiconf_mules.runtime\nbefore = set(sys.modules)\n"
                 "from uwsgiconf_mules.mule import startup as _startup\n_startup.start(1, None)\n"
                 "print(sorted(set(sys.modules) - before))")
    modules = set(eval(loaded))
    # logging once something imports it; gc is built in (and the dispatch script's first import)
    assert modules == {"uwsgiconf_mules.mule", "uwsgiconf_mules.mule.startup", "gc"}


def test_logging_is_installed_as_soon_as_anything_imports_it() -> None:
    start = ("import sys, uwsgiconf_mules.runtime\nfrom uwsgiconf_mules.mule import startup as _startup\n"
             "{before}_startup.start(1, None)\nloaded = 'logging' in sys.modules\n")
    report = ("import logging; root = logging.getLogger()\n"
              "print(loaded, [type(h.formatter).__name__ for h in root.handlers], root.level)")
    assert run(start.format(before="") + report) == "False ['MuleFormatter'] 20"  # installed at its import
    assert run(start.format(before="import logging\n") + report) == "True ['MuleFormatter'] 20"  # at once
    assert run(start.format(before="import logging; logging.basicConfig()\n") + report) == "True ['Formatter'] 30"
    said = run(start.format(before="") + "from uwsgiconf_mules.runtime import tasks\ntasks.log().info('said')\n"
               "import logging; print(loaded, [type(h.formatter).__name__ for h in logging.getLogger().handlers])")
    assert said == "False ['MuleFormatter']"  # the runtime's own lines get the handler too
    assert run(start.format(before="") + "import sys; from uwsgiconf_mules.mule import startup as s\n"
               "import logging\nprint(any(isinstance(f, s.LoggingWatch) for f in sys.meta_path))") == "False"
    loaded = run("import sys, uwsgiconf_mules.runtime\nbefore = set(sys.modules)\n"
                 "from uwsgiconf_mules.mule import startup as _startup\n_startup.start(1, None)\nimport logging\n"
                 "print(sorted(set(sys.modules) - before))")
    modules = set(eval(loaded))
    assert {"uwsgiconf_mules.mule.startup", "uwsgiconf_mules.runtime.logs", "logging"} <= modules
    others = {name.partition(".")[0] for name in modules} - {"uwsgiconf_mules"}
    assert others <= set(sys.stdlib_module_names), others - set(sys.stdlib_module_names)


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.MuleFormatter())
    logger = logging.getLogger("startup-test")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    yield stream
    logger.removeHandler(handler)


def logged_in_a_task(text: str) -> None:
    logging.getLogger("startup-test").info("in the task: %s", text)


def test_records_carry_the_running_task_only_while_it_runs(captured: io.StringIO) -> None:
    key = f"{__name__}:logged_in_a_task"
    _tasks.register(key, logged_in_a_task)
    try:
        _tasks.run(_protocol.encoder(key)(("hi",), {}))
    finally:
        _tasks.REGISTRY.pop(key.encode())
    logging.getLogger("startup-test").info("after it")
    lines = captured.getvalue().splitlines()
    assert lines[0].endswith(f" mule 0 [{key}] INFO startup-test: in the task: hi")
    assert lines[1].endswith(" mule 0 [-] INFO startup-test: after it")


def test_a_failing_hook_is_one_line_naming_it_and_start_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, "uwsgiconf_mules"):
        assert _startup.run_hook("json:no_such_function", 3) is False
        assert _startup.run_hook("json:dumps", 3) is False  # called without arguments: a TypeError
    first = caplog.records[0]
    assert first.getMessage().startswith("uwsgiconf-mules: mule 3: the mule_init hook json:no_such_function failed "
                                         "(AttributeError: ")
    assert first.exc_info is not None
    assert _startup.run_hook("gc:collect", 3) is True


def test_django_is_set_up_only_when_its_settings_are_named_and_it_is_not_ready(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(_startup.DJANGO_SETTINGS, raising=False)
    assert _startup.django_needs_setup() is False
    monkeypatch.setenv(_startup.DJANGO_SETTINGS, "mysite.settings")
    monkeypatch.delitem(sys.modules, "django.apps", raising=False)
    assert _startup.django_needs_setup() is True


def test_the_projects_lines_name_it_once() -> None:
    import logging

    from uwsgiconf_mules import logs

    record = logging.LogRecord("uwsgiconf_mules", logging.INFO, __file__, 1, "uwsgiconf-mules: mule %d stopped",
                               (1,), None)
    assert logs.MuleFormatter("%(levelname)s %(name)s: %(message)s").format(record) == (
        "INFO uwsgiconf-mules: mule 1 stopped")
    other = logging.LogRecord("shop.tasks", logging.INFO, __file__, 1, "uwsgiconf-mules: quoted", (), None)
    assert logs.MuleFormatter("%(name)s: %(message)s").format(other) == "shop.tasks: uwsgiconf-mules: quoted"


FAKE_UWSGI = '''
import gc, sys, types
from uwsgiconf_mules.mule import startup
from uwsgiconf_mules.runtime import instance

class Fake:
    mule, worker = 0, 0
    def mule_id(self): return self.mule
    def worker_id(self): return self.worker

fake = instance.uwsgi = Fake()
instance.declarations = lambda: types.SimpleNamespace(programs=(None, "own.py", None))
'''


def test_a_dispatch_mule_freezes_the_masters_objects_at_its_first_collection_only() -> None:
    code = FAKE_UWSGI + '''
base = gc.get_freeze_count()  # 0, or what Python froze itself (3.12 starts with objects frozen)
assert startup.freeze_at_first_collection() and not startup.freeze_at_first_collection()  # added once
young = [[] for _ in range(100)]
gc.collect()
seen = [gc.get_freeze_count() - base]  # the master: nothing frozen, still waiting
fake.mule = {mule}
gc.collect()  # the mule's first collection
seen.append(gc.get_freeze_count() - base >= 100)
frozen = gc.get_freeze_count()
more = [[] for _ in range(100)]
gc.collect()
seen.append(gc.get_freeze_count() == frozen)  # only the first: what the mule makes is collected as usual
print(seen)
'''
    assert run(code.format(mule=1)) == "[0, True, True]"  # a dispatch mule
    assert run(code.format(mule=3)) == "[0, True, True]"
    assert run(code.format(mule=2)) == "[0, False, True]"  # a programmed mule: left alone


def test_a_worker_or_a_mule_whose_script_froze_first_is_left_alone() -> None:
    worker = FAKE_UWSGI + '''
startup.freeze_at_first_collection()
fake.worker = 1
gc.collect()
fake.worker, fake.mule = 0, 1  # (not possible: the callback was done at the worker's first collection)
gc.collect()
print(gc.get_freeze_count() - base, startup._first)
'''
    assert run(worker.replace("startup.freeze_at", "base = gc.get_freeze_count()\nstartup.freeze_at", 1)) == "0 []"
    script = FAKE_UWSGI + '''
startup.freeze_at_first_collection()
fake.mule = 1
startup.frozen()  # the dispatch script froze the master's objects itself
young = [[] for _ in range(100)]
gc.collect()
print(gc.get_freeze_count() - base)
'''
    assert run(script.replace("startup.freeze_at", "base = gc.get_freeze_count()\nstartup.freeze_at", 1)) == "0"
    outside = ("import gc; from uwsgiconf_mules.mule import startup\n"
               "print(startup.freeze_at_first_collection(), startup._at_first_collection in gc.callbacks)")
    assert run(outside) == "False False"  # outside uWSGI: nothing added


def test_the_master_loads_and_builds_what_a_mule_needs_at_start() -> None:
    code = FAKE_UWSGI + '''
before = set(sys.modules)
startup.in_master()
from uwsgiconf_mules.mule import timer
from uwsgiconf_mules.protocol import envelope
print(sorted(name for name in set(sys.modules) - before if name in ("logging", "json", "fcntl", "random",
      "uwsgiconf_mules.runtime.logs")), type(startup._handler[0].formatter).__name__,
      timer._wake[0] == envelope.encoder(timer.RUN_DUE_KEY)((), {}), startup._at_first_collection in gc.callbacks)
'''
    assert run(code) == "['fcntl', 'json', 'logging', 'random', 'uwsgiconf_mules.runtime.logs'] MuleFormatter True True"


def test_the_handler_made_in_the_master_is_the_one_a_mule_adds() -> None:
    code = FAKE_UWSGI + '''
import io, logging
startup.in_master()
made = startup._handler[0]
sys.stderr = io.StringIO()  # replaced since (a hook): the handler writes where a new one would
print(startup.install_logging(), logging.getLogger().handlers == [made], made.stream is sys.stderr,
      startup._handler, logging.getLogger().level)
'''
    assert run(code) == "True True True [] 20"


def test_a_start_with_no_stop_record_takes_no_lock_and_lists_nothing(tmp_path: object,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from uwsgiconf_mules.protocol import spool as _spool

    spool = _spool.Spool(str(tmp_path))
    spool.create()
    calls: list[int] = []
    original = _spool.Spool.check_stops
    monkeypatch.setattr(_spool.Spool, "check_stops", lambda self: calls.append(1) or original(self))
    errors: list[str] = []

    class Log:
        def error(self, text: str, *args: object) -> None:
            errors.append(text % args)

    monkeypatch.setattr(_tasks, "log", Log)
    _startup.check_stops(spool)
    assert calls == []  # nothing recorded: not called
    spool.record_stop(1, ["gone.call"], {"the disk is full": 2})
    _startup.check_stops(spool)
    assert calls == [1]
    assert errors == [f"uwsgiconf-mules: the spool {spool.path} lost calls since the last stop of mule 1: expected 1 "
                      "kept call(s), found 0 (someone removed them, or replaced the spool)",
                      "uwsgiconf-mules: the last stop of mule 1 could not keep 2 queued call(s): the disk is full"]
