"""Declarations and builders: pure logic, no uWSGI."""

from __future__ import annotations

import re

import pytest
from uwsgiconf.exceptions import ConfigurationError
from uwsgiconf.options.workers import MuleFarm as UwsgiconfMuleFarm

from uwsgiconf_mules import MuleFarm, MulesConfigurationError, MulesError, Section
from uwsgiconf_mules.declarations import (
    DISPATCH_MULE,
    RECORD_ENV,
    Declarations,
    FarmSpec,
    declare,
    default_spool_dir,
    parse_record,
)


def options(section: Section) -> list[tuple[str, str]]:
    return [(str(key), str(value)) for key, value in section._get_options()]


def test_farms_by_count_are_numbered_one_after_the_other() -> None:
    decl = declare(farms=[MuleFarm("a", 2), MuleFarm("b", 3), MuleFarm("c", [1, 5])])
    assert decl.farms == (FarmSpec("a", (1, 2)), FarmSpec("b", (3, 4, 5)), FarmSpec("c", (1, 5)))
    assert decl.mule_count == 5


def test_explicit_count_may_exceed_what_farms_need() -> None:
    decl = declare(mules=6, farms=MuleFarm("a", 2))
    assert decl.mule_count == 6 and decl.dispatchers == (1, 2, 3, 4, 5, 6)


def test_programmed_and_dispatch_mules_in_order() -> None:
    decl = declare(mules=["feeder.py", None, "pkg.mod:main"])
    assert decl.programmed == (1, 3) and decl.dispatchers == (2,)
    assert [value for key, value in decl.options() if key == "mule"] == ["feeder.py", DISPATCH_MULE,
                                                                          "pkg.mod:main"]


def test_a_mule_may_belong_to_two_farms() -> None:
    decl = declare(farms=[MuleFarm("a", [1, 2]), MuleFarm("b", [2])])
    assert [farm.name for farm in decl.farms_of(2)] == ["a", "b"]


def test_record_round_trips_and_is_safe_for_ini_and_yaml() -> None:
    decl = declare(mules=["x.py", None, None], farms=[MuleFarm("f-1.x", [2, 3])], msg_buffer=4096,
                   harakiri_timeout=9, send_timeout=0.5, reload_mercy=20, spool_dir="/srv/app/spool/")
    record = decl.record()
    assert record == ("v2;mules=3;programmed=1;msg-size=4096;harakiri=9;reload-mercy=20;send-timeout=0.5;"
                      f"farm=f-1.x:2,3;dispatch={DISPATCH_MULE};spool=/srv/app/spool")
    assert not any(c in record for c in "#%'\"\n") and record[0] not in "-[{"
    back = parse_record(record)
    assert (back.mule_count, back.programmed, back.farms, back.msg_size, back.harakiri, back.reload_mercy,
            back.send_timeout, back.dispatch_script, back.spool_dir) == (
        3, (1,), decl.farms, 4096, 9, 20, 0.5, DISPATCH_MULE, "/srv/app/spool")
    assert parse_record(declare(mules=["x.py"]).record()).dispatch_script is None  # no dispatch mules
    assert ("env", f"{RECORD_ENV}={record}") == decl.options()[-1]


def test_mule_init_is_recorded_only_when_declared_and_read_back() -> None:
    assert "init=" not in declare(mules=1).record()
    decl = declare(mules=1, mule_init="shop.startup:prepare")
    assert decl.record().endswith(";init=shop.startup:prepare")
    assert parse_record(decl.record()) == decl
    assert parse_record(decl.record()).mule_init == "shop.startup:prepare"


@pytest.mark.parametrize("record, message", [
    ("v9;mules=1", "record version 'v9' is not 'v2'"),
    ("v1;mules=1", "compiled by another uwsgiconf-mules version; compile it again"),
    ("v2;mules=x", "malformed UWSGICONF_MULES record"),
    ("v2;colour=blue", "unknown field 'colour'"),
])
def test_bad_record_is_a_clear_error(record: str, message: str) -> None:
    with pytest.raises(MulesConfigurationError, match=re.escape(message)):
        parse_record(record)


@pytest.mark.parametrize("kwargs, message", [
    ({"mules": True}, "mules must be a count or a list"),
    ({"mules": -1}, "must not be negative"),
    ({"mules": [3]}, "mules list item 3 is not a programmed mule"),
    ({"mules": ["script"]}, "neither a 'script.py' path nor 'package.module:callable'"),
    ({"mules": [" "]}, "programmed mule is empty"),
    ({"mules": ["a#b.py"]}, "contains a newline or '#'"),
    ({"farms": "fast"}, "farms must be a mule_farm"),
    ({"mules": 1, "harakiri_timeout": 0}, "harakiri_timeout must be a positive integer, not 0"),
    ({"mules": 1, "reload_mercy": "10"}, "reload_mercy must be a positive integer, not '10'"),
    ({"mules": 1, "send_timeout": 0}, "send_timeout must be a positive number"),
    ({"mules": 1, "touch_reload": [""]}, "touch_reload path '' must be"),
    ({"mules": 1, "spooler": 1}, "unknown argument 'spooler'"),
])
def test_bad_arguments_are_named(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(MulesConfigurationError, match=re.escape(message)):
        declare(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("name, message", [
    ("a%b", "'%' (uWSGI expands magic variables there)"),
    ("-a", "start with a letter, digit or '_'"),
    ("é", "contains 'é'"),
    ("x" * 255, "uWSGI keeps at most 254"),
    (3, "must be a string"),
])
def test_farm_name_rules(name: object, message: str) -> None:
    with pytest.raises(MulesConfigurationError, match=re.escape(message)):
        MuleFarm(name, 1)  # type: ignore[arg-type]


def test_farm_errors_carry_the_culprit_and_subclass_uwsgiconf_error() -> None:
    with pytest.raises(MulesConfigurationError) as info:
        declare(farms=[MuleFarm("a", 1), MuleFarm("a", 1)])
    assert info.value.culprit == "a"
    assert isinstance(info.value, ConfigurationError) and isinstance(info.value, MulesError)


@pytest.mark.parametrize("numbers, message", [
    ([], "empty list of mules"), ([1, 1], "lists mule 1 twice"), (["1"], "mule id '1' is not an integer"),
    (1.5, "must be a count or a list"),
])
def test_farm_mule_numbers_rules(numbers: object, message: str) -> None:
    with pytest.raises(MulesConfigurationError, match=re.escape(message)):
        MuleFarm("a", numbers)  # type: ignore[arg-type]


def test_builder_keeps_uwsgiconf_signature_and_chains() -> None:
    section = Section()
    farm = section.workers.mule_farm("fast", "2")  # uwsgiconf accepts digit strings
    assert section.workers.set_mules_params(farms=farm) is section
    assert ("farm", "fast:1,2") in options(section)


def test_builder_never_mutates_the_callers_farms() -> None:
    section = Section()
    ours, theirs = MuleFarm("a", 2), UwsgiconfMuleFarm("b", 2)
    farms = [ours, theirs]
    section.workers.set_mules_params(farms=farms)
    assert (ours.mule_numbers, theirs.mule_numbers, farms) == (2, 2, [ours, theirs])
    assert ("farm", "b:3,4") in options(section)


def test_second_call_updates_the_declaration_without_duplicating_options() -> None:
    section = Section()
    section.env("OTHER", "1")
    section.workers.set_mules_params(mules=2, farms=MuleFarm("a", 2))
    section.workers.set_mules_params(harakiri_timeout=5)
    section.workers.set_mules_params(mules=3)
    opts = options(section)
    assert [value for key, value in opts if key == "mule"] == [DISPATCH_MULE] * 3
    assert [value for key, value in opts if key == "farm"] == ["a:1,2"]
    assert [value for key, value in opts if key == "env"] == [
        "OTHER=1", f"UWSGICONF_MULES=v2;mules=3;harakiri=5;send-timeout=5;farm=a:1,2;dispatch={DISPATCH_MULE};"
        f"spool={default_spool_dir()}"]
    assert [value for key, value in opts if key == "shared-import"] == [
        "uwsgiconf_mules.runtime", "uwsgiconf_mules.dispatch_mule"]
    assert section.mules_declarations == declare(mules=3, farms=MuleFarm("a", 2), harakiri_timeout=5)


def test_a_rejected_call_leaves_the_section_as_it_was() -> None:
    section = Section()
    section.workers.set_mules_params(mules=2)
    before = options(section)
    with pytest.raises(MulesConfigurationError):
        section.workers.set_mules_params(farms=MuleFarm("a", 3))
    assert options(section) == before


def test_describe_lists_what_is_declared() -> None:
    assert Declarations().describe() == "no mules; farms: none"
    assert declare(farms=MuleFarm("a", 2)).describe() == "mules 1..2; farms: 'a' (mules 1, 2)"


def test_deploy_touch_emits_the_reload_for_the_mode_and_keeps_options_set_elsewhere() -> None:
    section = Section()
    section.main_process.set_basic_params(touch_reload="/srv/app/settings.py")
    section.workers.set_mules_params(mules=1, deploy_touch="/srv/app/deploy")
    assert [(k, v) for k, v in options(section) if k.startswith("touch")] == [
        ("touch-reload", "/srv/app/settings.py"), ("touch-reload", "/srv/app/deploy")]
    section.workers.set_mules_params(deploy_mode="chain")  # for --lazy-apps
    assert [(k, v) for k, v in options(section) if k.startswith("touch")] == [
        ("touch-reload", "/srv/app/settings.py"), ("touch-chain-reload", "/srv/app/deploy"),
        ("touch-mules-reload", "/srv/app/deploy")]


@pytest.mark.parametrize(("params", "message"), [
    ({"deploy_touch": "/d", "deploy_mode": "soon"}, "deploy_mode must be 'reload' or 'chain', not 'soon'"),
    ({"deploy_mode": "chain"}, "deploy_mode needs deploy_touch, the file to touch"),
    ({"spool_dir": "relative/spool"}, "spool_dir must be an absolute path, not 'relative/spool'"),
    ({"spool_dir": "/srv/a;b"}, "spool_dir '/srv/a;b' contains"),
])
def test_bad_deploy_and_spool_declarations_name_the_argument(params: dict[str, str], message: str) -> None:
    with pytest.raises(MulesConfigurationError, match=re.escape(message)):
        declare(mules=1, **params)


@pytest.mark.parametrize(("params", "message"), [
    ({"stats": "0.0.0.0:9191"}, "'0.0.0.0' is not loopback (the stats server answers anyone who connects)"),
    ({"stats": "example.com:9191"}, "'example.com' is not loopback"),
    ({"stats": "127.0.0.1"}, "'127.0.0.1' has no valid port"),
    ({"stats": "127.0.0.1:99999"}, "has no valid port"),
    ({"stats": "stats.sock"}, "stats must be 'host:port' on a loopback address"),
    ({"stats": ""}, "stats must be 'host:port'"),
    ({"stats": 9191}, "stats must be 'host:port'"),
    ({"stats": "/run/a;b.sock"}, "stats '/run/a;b.sock' contains"),
    ({"on_failure": "report"}, "on_failure must be 'package.module:function' (a dotted module path, ':', a function "
                                "name in that module), not 'report'"),
    ({"on_failure": "pkg.mod:"}, "on_failure must be 'package.module:function'"),
    ({"on_failure": "pkg mod:f"}, "on_failure must be 'package.module:function'"),
    ({"on_failure": print}, "on_failure must be a 'package.module:function' string"),
])
def test_bad_stats_and_failure_hook_declarations_name_the_argument(params: dict[str, object], message: str) -> None:
    with pytest.raises(MulesConfigurationError, match=re.escape(message)):
        declare(mules=1, **params)  # type: ignore[arg-type]


@pytest.mark.parametrize("address", ["127.0.0.1:9191", "127.0.0.2:1", "localhost:9191", "[::1]:9191",
                                     "/run/app/stats.sock"])
def test_stats_on_loopback_or_a_unix_socket_round_trips_in_the_record(address: str) -> None:
    decl = declare(mules=[None, "x.py"], farms=[MuleFarm("f", [1])], stats=address, on_failure="app.hooks:report")
    assert decl.record().endswith(f";stats={address};on-failure=app.hooks:report")
    back = parse_record(decl.record())
    assert (back.stats, back.on_failure) == (address, "app.hooks:report")


@pytest.mark.parametrize(("stats", "message"), [
    # a second option, and the record split:
    ("127.0.0.1:9191\nhttp-socket=0.0.0.0:8000", "'127.0.0.1:9191\\nhttp-socket=0.0.0.0' is not loopback"),
    ("127.0.0.1:9191,0.0.0.0:9192", "'127.0.0.1:9191,0.0.0.0' is not loopback"),  # uWSGI bound 255.255.255.255
    ("127.evil.example:9191", "'127.evil.example' is not loopback"),
    ("127.0.0.1.evil.example:9191", "is not loopback"),
    ("0177.0.0.1:9191", "'0177.0.0.1' is not loopback"),  # octal, as inet_aton reads it
    ("127.1:9191", "'127.1' is not loopback"),
    ("localhost.evil.example:9191", "is not loopback"),
    ("[::1%eth0]:9191", "is not loopback"),
    ("[::ffff:0.0.0.0]:9191", "is not loopback"),
    ("127.0.0.1:\uff19\uff11\uff19\uff11", "has no valid port"),  # digits, but not ASCII ones
    ("127.0.0.1:0", "has no valid port"),
    ("127.0.0.1:9191 ", "has no valid port"),
    ("/run/app/stats sock", "stats '/run/app/stats sock' contains whitespace"),
    ("/run/app/stats\x1b.sock", "stats '/run/app/stats\\x1b.sock' contains '\\x1b'"),
    # uWSGI reads a stats value with a ':' as host:port: this one listened on 255.255.255.255:9191
    ("/run/app/0.0.0.0:9191", "stats '/run/app/0.0.0.0:9191' contains ':'"),
])
def test_stats_is_a_loopback_ip_or_localhost_and_a_port_or_a_unix_socket_and_nothing_more(
        stats: str, message: str) -> None:
    with pytest.raises(MulesConfigurationError, match=re.escape(message)):
        declare(mules=1, stats=stats)


def test_a_unix_stats_socket_is_made_reachable_by_its_user_only() -> None:
    opts = declare(mules=1, stats="/run/app/stats.sock").options()
    assert opts[opts.index(("stats", "/run/app/stats.sock")) + 1] == ("hook-master-start",
                                                                    "chmod:/run/app/stats.sock 600")
    assert "hook-master-start" not in dict(declare(mules=1, stats="127.0.0.1:9191").options())


@pytest.mark.parametrize(("params", "message"), [
    ({"mules": ["feed\x00.py"]}, "mules: the value of option 'mule', 'feed\\x00.py', contains a NUL character"),
    ({"mules": ["feed\x1b[2J.py"]}, "mules: the value of option 'mule', 'feed\\x1b[2J.py', contains a control"),
    ({"mules": ["feed\u2028.py"]}, "option 'mule', 'feed\\u2028.py', contains a line break"),
    ({"touch_reload": "/srv/reload\x00"}, "touch_reload or deploy_touch: the value of option 'touch-mules-reload', "
                                           "'/srv/reload\\x00', contains a NUL character"),
    ({"touch_reload": "/srv/reload\x85x"}, "option 'touch-mules-reload', '/srv/reload\\x85x', contains a line"),
    ({"deploy_touch": "/srv/deploy\x0bx"}, "deploy_touch: the value of option 'touch-reload', '/srv/deploy\\x0bx', "
                                            "contains a line break"),
    ({"deploy_touch": "/srv/deploy%"}, "option 'touch-reload', '/srv/deploy%', ends with a lone '%'"),
    ({"spool_dir": "/srv/spool\x0c"}, "the value of option 'env', 'UWSGICONF_MULES=v2;"),
    ({"spool_dir": "/srv/spool\u2029"}, "contains a line break ('\\u2029')"),
])
def test_every_value_the_builders_emit_is_one_config_line(params: dict[str, object], message: str) -> None:
    with pytest.raises(MulesConfigurationError, match=re.escape(message)):
        declare(**{"mules": 1, **params})  # type: ignore[arg-type]


def test_counters_are_declared_as_uwsgi_metrics_only_with_stats() -> None:
    assert declare(mules=2).metric_names() == []
    assert not {key for key, _ in declare(mules=2, on_failure="a:b").options()} & {"metric", "stats", "enable-metrics"}
    decl = declare(mules=[None, "x.py"], farms=[MuleFarm("f", [1, 2])], stats="127.0.0.1:9191")
    dispatch = ["queued", "started", "succeeded", "failed", "spooled", "dead", "run_ms"]
    assert decl.metric_names() == [
        *((f"mule.1.{name}", "counter") for name in dispatch),
        *((f"mule.1.{name}", "gauge") for name in ("queue_bytes", "running_ms", "pid")),
        ("mule.2.queued", "counter"), ("farm.f.queued", "counter"), ("farm.f.queue_bytes", "gauge"),
        ("spool.unusable", "gauge")]
    opts = decl.options()
    assert opts[opts.index(("enable-metrics", "true")) + 1] == ("stats", "127.0.0.1:9191")
    assert [value for key, value in opts if key == "metric"] == [
        f"name={name},type={kind}" for name, kind in decl.metric_names()]
    programmed_only = declare(mules=["x.py"], stats="/run/stats.sock").options()
    assert ("enable-threads", "true") in programmed_only  # senders flush their counts in a thread


def test_a_second_call_keeps_metrics_declared_elsewhere() -> None:
    section = Section()
    section.workers.set_mules_params(mules=1, stats="127.0.0.1:9191")
    section._set("metric", "name=app.custom", multi=True)
    section.workers.set_mules_params(mules=2)
    metrics = [value for key, value in options(section) if key == "metric"]
    assert "name=app.custom" in metrics
    assert "name=mule.2.started,type=counter" in metrics
    assert len(metrics) == len(set(metrics))


def test_the_dispatch_mule_script_keeps_the_path_compiled_configs_name() -> None:
    # Configs compiled by 0.1.0 run ``mule = .../uwsgiconf_mules/dispatch_mule.py``.
    import os

    import uwsgiconf_mules
    from uwsgiconf_mules.declarations import DISPATCH_MULE

    package = os.path.dirname(os.path.realpath(uwsgiconf_mules.__file__))
    assert DISPATCH_MULE == os.path.join(package, "dispatch_mule.py")
    assert os.path.isfile(DISPATCH_MULE)


def test_every_field_is_declared_once_and_the_record_carries_every_recorded_one() -> None:
    from uwsgiconf_mules.declarations import FIELDS

    attrs = [field.attr for field in FIELDS]
    assert sorted(attrs) == sorted(Declarations.__annotations__)  # a type for each field, nothing more
    doc = Declarations.__doc__ or ""
    assert all(f":param {attr}:" in doc for attr in attrs)
    assert set(Declarations.__slots__) == {*attrs, "_backends_by_name", "_farms_by_name"}
    declarations = declare(["feed.py", None, None], farms=[MuleFarm("a", [2, 3])], harakiri_timeout=5,
                           reload_mercy=7, msg_buffer=65536, send_timeout=2.5, spool_dir="/srv/spool",
                           mule_init="app.hooks:start", stats="127.0.0.1:9191", on_failure="app.hooks:failed",
                           backends={"reports": "rq://127.0.0.1:6379/0"}, touch_reload="/srv/reload",
                           deploy_touch="/srv/deploy")
    again = parse_record(declarations.record())
    for field in FIELDS:
        if field.codec is not None and field.attr != "programs":
            assert getattr(again, field.attr) == getattr(declarations, field.attr), field.attr
        elif field.codec is None:
            assert getattr(again, field.attr) == field.default, field.attr  # uWSGI acts on it, the record leaves it out
    assert again.programs == ("", None, None)  # the record says which mules are programmed, not their programs
    assert again.record() == declarations.record()
    assert repr(again).startswith("Declarations(programs=('', None, None), msg_size=65536, harakiri=5,")
    with pytest.raises(TypeError, match="unknown or repeated fields: spool"):
        Declarations(spool="/srv")
