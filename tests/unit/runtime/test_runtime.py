"""The runtime API outside uWSGI: calls run inline after the production checks."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from uwsgiconf_mules import errors
from uwsgiconf_mules.runtime import Farm, Mule, mule_offload, socket_message_limit

CALLS: list[tuple[object, ...]] = []


@mule_offload()
def record_call(value: object, *, flag: bool = False) -> None:
    """Records its arguments."""
    CALLS.append((value, flag))


@mule_offload(1)
def record_many(*args: object, **kwargs: object) -> None:
    CALLS.append((args, kwargs))


@mule_offload(2)
def fails() -> None:
    raise RuntimeError("task failed")


@pytest.mark.parametrize(("args", "kwargs"), [
    ((), {}),  # no body
    ((7,), {}),  # marshal
    ((bytearray(b"x"),), {}),  # pickled positional arguments
    ((8,), {"flag": True}),  # pickled (args, kwargs)
])
def test_every_kind_of_call_runs_inline_with_its_arguments(args: tuple[object, ...], kwargs: dict[str, bool]) -> None:
    CALLS.clear()
    assert record_many(*args, **kwargs) is True
    assert CALLS == [(args, kwargs)]
    assert [type(a) for a in CALLS[0][0]] == [type(a) for a in args]  # type: ignore[attr-defined]


def test_offloaded_call_runs_inline_with_copied_arguments(declared: Callable[[str], None]) -> None:
    CALLS.clear()
    payload = {"a": [1, 2]}
    assert record_call(payload, flag=True) is True
    assert CALLS == [(payload, True)]
    assert CALLS[0][0] is not payload  # went through pickle, as in production


def test_metadata_is_kept() -> None:
    assert record_call.target == Mule(1)
    assert (record_call.__name__, record_call.__doc__, record_call.__module__) == (
        "record_call", "Records its arguments.", __name__)
    assert record_call.key == f"{__name__}:record_call"
    CALLS.clear()
    record_call.__wrapped__("direct")  # runs here, no serialisation
    assert CALLS == [("direct", False)]


def test_unpicklable_argument_raises_at_the_call() -> None:
    with pytest.raises(errors.PayloadError, match="arguments cannot be pickled"):
        record_call(lambda: None)


def test_oversize_payload_raises_at_the_call() -> None:
    limit = socket_message_limit(None)
    with pytest.raises(errors.PayloadError, match=f"exceeds the {limit}-byte limit of mule 1") as info:
        record_call(b"x" * (limit + 1))
    assert isinstance(info.value, ValueError) and info.value.limit == limit


def test_task_exception_is_logged_like_in_a_mule(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, "uwsgiconf_mules"):
        assert fails() is True
    assert f"task {__name__}:fails failed" in caplog.text
    assert "RuntimeError: task failed" in caplog.text


def test_local_functions_cannot_be_offloaded() -> None:
    def inner() -> None:
        pass

    with pytest.raises(errors.MulesRuntimeError, match="must be defined at module level"):
        mule_offload()(inner)


def test_mule_only_calls_raise_value_error_outside_mules() -> None:
    for call in (Mule.get_message, Farm.get_message):
        with pytest.raises(ValueError, match="can only be called in a uWSGI mule"):
            call()
    assert Mule.get_current_id() == 0 and Mule.get_current() is None


def test_raw_send_outside_uwsgi_is_refused(declared: Callable[[str], None]) -> None:
    with pytest.raises(errors.MulesRuntimeError, match="not running under uWSGI"):
        Mule(1).send("hello")


def test_declared_targets_are_checked_when_the_record_is_known(declared: Callable[[str], None]) -> None:
    declared("v2;mules=4;programmed=4;send-timeout=5;farm=fast:1,2;farm=slow:3,4")
    assert [(f.name, [m.id for m in f.mules]) for f in Farm.get_farms()] == [("fast", [1, 2]), ("slow", [3, 4])]
    assert Farm("slow") == Farm("slow", [4, 3]) and repr(Farm("slow")) == "Farm('slow', mules=[3, 4])"
    assert repr(Mule(2)) == "Mule(2)" and Mule(2) == Mule(2) and Mule(2) != Mule(3)
    assert Farm("fast").is_mine() is False
    for bad in (lambda: Mule(5), lambda: Mule(0), lambda: Mule(1000000), lambda: mule_offload("nope"),
                lambda: Farm("fast", [1, 3]), lambda: mule_offload(2.5)):  # type: ignore[arg-type]
        with pytest.raises(errors.UnknownTargetError) as info:
            bad()
        assert isinstance(info.value, ValueError)
    with pytest.raises(errors.UnknownTargetError, match=r"declared: mules 1\.\.4; farms: 'fast'"):
        Mule(5)
    # A programmed mule reads 64 KiB whole: a larger offload to it is refused.
    with pytest.raises(errors.PayloadError, match="65536-byte limit of mule 4"):
        mule_offload(4)(record_call.__wrapped__)(b"x" * 70000)


def test_routes_cached_by_decorated_functions_are_forgotten_on_reset(declared: Callable[[str], None]) -> None:
    declared("v2;mules=2;programmed=2;send-timeout=5")
    to_programmed = mule_offload(2)(record_many.__wrapped__)  # a programmed mule reads 64 KiB whole
    with pytest.raises(errors.PayloadError, match="65536-byte limit of mule 2"):
        to_programmed(b"x" * 70000)
    declared("v2;mules=2;send-timeout=5")  # mule 2 is a dispatch mule now
    CALLS.clear()
    assert to_programmed(b"x" * 70000) is True
    assert len(CALLS) == 1


def test_a_farm_takes_the_smallest_limit_of_its_mules(declared: Callable[[str], None]) -> None:
    declared("v2;mules=2;programmed=2;send-timeout=5;farm=mixed:1,2")  # mule 2 reads 64 KiB whole
    with pytest.raises(errors.PayloadError, match="65536-byte limit of farm 'mixed'"):
        mule_offload("mixed")(record_many.__wrapped__)(b"x" * 70000)


def test_a_message_of_exactly_the_limit_passes_the_size_check(declared: Callable[[str], None]) -> None:
    declared("v2;mules=2;programmed=2;send-timeout=5")
    with pytest.raises(errors.MulesRuntimeError, match="not running under uWSGI"):  # past the size check
        Mule(2).send(b"x" * 65536)
    with pytest.raises(errors.PayloadError, match="65536-byte limit of mule 2"):
        Mule(2).send(b"x" * 65537)


MISSING_SCRIPT = "/nonexistent/venv/uwsgiconf_mules/dispatch_mule.py"


def test_plain_sends_to_a_dispatch_mule_whose_script_is_missing_are_refused(declared: Callable[[str], None]) -> None:
    # A config compiled in another environment: its dispatch mules cannot start here.
    declared(f"v2;mules=1;send-timeout=5;dispatch={MISSING_SCRIPT}")
    with pytest.raises(errors.DeliveryError, match=f"nothing sent to mule 1: the config names the dispatch mule "
                                                   f"script {MISSING_SCRIPT}, which does not exist here"):
        Mule(1).send("hello")


def test_a_missing_dispatch_script_does_not_refuse_programmed_mules(declared: Callable[[str], None]) -> None:
    declared(f"v2;mules=2;programmed=2;send-timeout=5;farm=readers:2;dispatch={MISSING_SCRIPT}")
    for target in (Mule(2), Farm("readers")):
        with pytest.raises(errors.MulesRuntimeError, match="not running under uWSGI"):  # not refused
            target.send("hello")


def test_is_mine_is_a_method_and_the_property_spelling_fails_loudly(declared: Callable[[str], None]) -> None:
    declared("v2;mules=2;send-timeout=5;farm=fast:1,2")
    farm = Farm("fast")
    assert farm.is_mine() is False
    with pytest.raises(errors.UsageError, match=r"write Farm\('fast', mules=\[1, 2\]\)\.is_mine\(\)") as info:
        if farm.is_mine:  # the uwsgiconf 2.4 spelling
            pass
    assert isinstance(info.value, TypeError)


def test_no_farms_outside_uwsgi_without_a_record(declared: Callable[[str], None]) -> None:
    assert Farm.get_farms() == []


def imported_by(code: str) -> list[str]:
    """Modules a fresh interpreter loads for ``code`` (which sets ``before``), beyond ``before``."""
    script = f"import sys\n{code}\nprint(sorted(set(sys.modules) - before))"
    return eval(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,  # type: ignore[no-any-return]
                               check=True).stdout)


def test_importing_the_runtime_is_light_and_has_no_side_effects() -> None:
    code = ("import sys, uwsgiconf_mules.runtime as r; "
            "heavy = {'jinja2', 'click', 'uwsgiconf.config', 'uwsgiconf_mules.config', 'subprocess', "
            "'uwsgiconf_mules._project', 'uwsgiconf_mules.testing', 'pytest'}; "
            "r.Farm.get_farms(); "  # reads the declarations (none here): loads no config
            "print(sorted(heavy & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_mule_imports_nothing_the_master_did_not_load_before_the_fork() -> None:
    # The config's shared-imports load the runtime and the dispatch mules' script in the master; a
    # dispatch mule then runs that script and starts its loop: everything it needs must already be
    # loaded, and shared.
    assert imported_by("import uwsgiconf_mules.runtime, uwsgiconf_mules.dispatch_mule\nbefore = set(sys.modules)\n"
                       "import uwsgiconf_mules.mule.loop, uwsgiconf_mules.mule.queues, mmap, _socket") == []


def test_a_config_compiled_by_0_1_0_has_its_mules_import_only_the_mule_layer() -> None:
    # A config compiled by 0.1.0 shared-imports the runtime only: its dispatch mules import their
    # loop when they start, and nothing but the mule layer and the standard library.
    loaded = imported_by("import uwsgiconf_mules.runtime\nbefore = set(sys.modules)\n"
                         "import uwsgiconf_mules.dispatch_mule")
    assert {"uwsgiconf_mules.dispatch_mule", "uwsgiconf_mules.mule.loop", "uwsgiconf_mules.mule.queues"} <= set(loaded)
    assert {name for name in loaded if name.startswith("uwsgiconf_mules.")} <= {
        "uwsgiconf_mules._threads", "uwsgiconf_mules.dispatch_mule", "uwsgiconf_mules.mule",
        "uwsgiconf_mules.mule.batch", "uwsgiconf_mules.mule.loop",
        "uwsgiconf_mules.mule.queues", "uwsgiconf_mules.mule.signals", "uwsgiconf_mules.mule.startup",
        "uwsgiconf_mules.protocol.limits",
        "uwsgiconf_mules.protocol.spool.checks", "uwsgiconf_mules.protocol.spool.letters",
        "uwsgiconf_mules.protocol.spool.store", "uwsgiconf_mules.mule.running", "uwsgiconf_mules.mule.timer",
        "uwsgiconf_mules.protocol.spool.delayed", "uwsgiconf_mules.protocol.spool.claims"}
    # the last five: delayed calls, the record of the running call, claims of dead mules
    assert {name.partition(".")[0] for name in loaded} - {"uwsgiconf_mules"} <= set(sys.stdlib_module_names)


def test_the_configuration_side_does_not_import_the_worker_runtime() -> None:
    assert not {"uwsgiconf_mules.runtime", "uwsgiconf_mules.runtime.sending", "uwsgiconf_mules.mule.loop"} & set(
        imported_by("before = set()\nimport uwsgiconf_mules.cli"))
    loaded = imported_by("before = set()\nfrom uwsgiconf_mules import MuleFarm")
    assert not {"jinja2", "uwsgiconf.config", "uwsgiconf_mules.config"} & set(loaded)


def test_while_the_spool_cannot_keep_calls_sends_to_dispatch_mules_are_refused_naming_it(
        declared: Callable[[str], None], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from uwsgiconf_mules.declarations import DISPATCH_MULE
    from uwsgiconf_mules.protocol import spool as _spool
    from uwsgiconf_mules.runtime import instance as _instance, spool_watch as _spool_watch

    kept = _spool.Spool(str(tmp_path / "spool"))
    kept.create()
    monkeypatch.setattr(_spool_watch, "spool_problem", None)
    declared(f"v2;mules=2;programmed=2;send-timeout=5;dispatch={DISPATCH_MULE};spool={kept.path}")
    declarations = _instance.declarations()
    assert declarations is not None
    _spool_watch.check_spool(declarations)
    assert _spool_watch.spool_refusal(declarations, (1,)) is None  # a usable spool: sent
    os.chmod(kept.part("queue"), 0o777)
    _spool_watch.check_spool(declarations)
    refused = _spool_watch.spool_refusal(declarations, (1,))
    assert refused == (f"spool: {kept.part('queue')} can be written by others (mode 777); the mules could not keep "
                       "queued calls across a reload or stop, so none is sent (fix it, see `uwsgiconf-mules check`: "
                       "sending resumes within a second)")
    assert _spool_watch.spool_refusal(declarations, (2,)) is None  # a programmed mule keeps nothing in the spool
    assert _spool_watch.spool_refusal(None, (1,)) is None  # outside uWSGI, without a record
    os.chmod(kept.part("queue"), 0o700)
    _spool_watch.check_spool(declarations)
    assert _spool_watch.spool_refusal(declarations, (1,)) is None  # fixed: sending resumes
