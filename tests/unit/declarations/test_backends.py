"""Farms routed to an offload backend, the declaration side: ``set_offload_backends`` validates
every part of the URL, a routed farm spends no mules, and the route travels in the record (and
only when declared; the whole rendered configs are compared in test_config/test_cli, case
``routed``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from uwsgiconf.cli import base as uwsgiconf_cli

from support.helpers import assert_one_line_error, invoke_with
from uwsgiconf_mules import MulesConfigurationError, Section
from uwsgiconf_mules.declarations import declare, parse_record
from uwsgiconf_mules.declarations.backends import parse_backend


def test_a_routed_farm_spends_no_mules_and_travels_in_the_record() -> None:
    section = Section()
    section.workers.set_offload_backends(reports="rq://redis.internal:6379/0?queue=reports")
    declarations = section.mules_declarations
    assert declarations is not None
    assert declarations.mule_count == 0
    assert declarations.farms == ()
    options = declarations.options()
    assert [key for key, _ in options] == ["shared-import", "env"]
    assert options[-1][1] == "UWSGICONF_MULES=v2;mules=0;send-timeout=5;route=reports:rq://redis.internal:6379/0?queue=reports"
    assert parse_record(declarations.record()) == declarations


def test_routes_and_mules_declared_in_either_order_give_one_declaration() -> None:
    first, second = Section(), Section()
    first.workers.set_mules_params(mules=2, farms=first.workers.mule_farm("fast", 1))
    first.workers.set_offload_backends(reports="rq://h/1")
    second.workers.set_offload_backends(reports="rq://h/1")
    second.workers.set_mules_params(mules=2, farms=second.workers.mule_farm("fast", 1))
    assert first.mules_declarations == second.mules_declarations
    assert first.mules_declarations is not None
    assert first.mules_declarations.describe() == (
        "mules 1..2; farms: 'fast' (mule 1), 'reports' (routed to RQ)")


def test_nothing_of_it_is_written_when_no_farm_is_routed() -> None:
    assert "route=" not in declare(mules=1).record()


def test_the_canonical_url_names_every_default() -> None:
    backend = parse_backend("reports", "rq://redis.internal")
    assert (backend.host, backend.port, backend.db, backend.queue, backend.serializer, backend.connect_timeout) == (
        "redis.internal", 6379, 0, "reports", "json", 1.0)
    assert backend.url() == "rq://redis.internal:6379/0?queue=reports"
    assert parse_backend("reports", backend.url()) == backend
    env = parse_backend("mail", "rq://?url_env=REDIS_URL&serializer=pickle&connect_timeout=2")
    assert (env.host, env.url_env, env.serializer, env.connect_timeout) == (None, "REDIS_URL", "pickle", 2.0)
    assert env.where() == "RQ queue 'mail' at $REDIS_URL"


BAD_URLS = {
    "not a string": (6379, "the URL must be a string, not int"),
    "no scheme": ("redis.internal:6379", "not a URL"),
    "scheme": ("celery://h/0", "unknown scheme 'celery'; supported: rq"),
    "no host": ("rq:///0", "no host"),
    "host": ("rq://red is/0", "host 'red is' may use letters"),
    "port": ("rq://h:99999/0", "port '99999' is not a number from 1 to 65535"),
    "port text": ("rq://h:abc", "port 'abc' is not a number"),
    "db": ("rq://h:6379/x", "database 'x' is not a number"),
    "queue": ("rq://h?queue=a;b", "queue 'a;b' may use letters"),
    "serializer": ("rq://h?serializer=yaml", "serializer 'yaml' is not one of json, pickle"),
    "unknown parameter": ("rq://h?job_timeout=5", "unknown parameter 'job_timeout'"),
    "empty parameter": ("rq://h?queue=", "parameter 'queue' has no value"),
    "twice": ("rq://h?queue=a&queue=b", "parameter 'queue' is given twice"),
    "credentials": ("rq://user:secret@h/0", "credentials do not go into the config"),
    "password env": ("rq://h?password_env=1X", "password_env '1X' is not an environment variable name"),
    "url env": ("rq://?url_env=REDIS-URL", "url_env 'REDIS-URL' is not an environment variable name"),
    "url env and host": ("rq://h?url_env=REDIS_URL", "write rq://?url_env=VAR, without host"),
    "url env and password": ("rq://?url_env=U&password_env=P", "drop password_env"),
    "connect timeout": ("rq://h?connect_timeout=0", "connect_timeout '0' is not a positive number"),
    "connect timeout nan": ("rq://h?connect_timeout=nan", "connect_timeout 'nan' is not a positive number"),
}


@pytest.mark.parametrize("case", sorted(BAD_URLS))
def test_a_bad_url_names_the_farm_and_the_part_at_fault(case: str) -> None:
    url, message = BAD_URLS[case]
    with pytest.raises(MulesConfigurationError) as info:
        Section().workers.set_offload_backends(reports=url)
    assert message in str(info.value)
    assert str(info.value).startswith("offload backend of farm 'reports'")
    assert info.value.culprit == "reports"


def test_a_farm_of_mules_cannot_also_be_routed() -> None:
    section = Section()
    section.workers.set_mules_params(farms=section.workers.mule_farm("reports", 1))
    with pytest.raises(MulesConfigurationError, match="farm 'reports' is declared with mules and routed"):
        section.workers.set_offload_backends(reports="rq://h/0")


def test_a_routed_farm_name_follows_the_farm_name_rules() -> None:
    with pytest.raises(MulesConfigurationError, match="farm name 'a:b' contains ':'"):
        declare(backends={"a:b": "rq://h/0"})


def test_a_bad_route_in_the_record_is_a_clear_error() -> None:
    with pytest.raises(MulesConfigurationError, match=r"malformed UWSGICONF_MULES record .*unknown scheme"):
        parse_record("v2;mules=0;route=reports:http://h/0")


def test_a_bad_url_is_one_line_from_uwsgiconf_compile(tmp_path: Path) -> None:
    body = ("from uwsgiconf_mules import Section\nsection = Section()\n"
            "section.workers.set_offload_backends(reports='rq://h:0/0')\n"
            "uwsgi_configuration = section.as_configuration()\n")
    assert_one_line_error(invoke_with(tmp_path, body, uwsgiconf_cli, "compile"),
                          "offload backend of farm 'reports'", "port '0'")


def test_a_second_call_replaces_the_routes_and_keeps_the_mules() -> None:
    section = Section()
    section.workers.set_mules_params(mules=1)
    section.workers.set_offload_backends(reports="rq://h/0", mail="rq://h/1")
    section.workers.set_offload_backends(mail="rq://h/2")
    declarations = section.mules_declarations
    assert declarations is not None
    assert declarations.mule_count == 1
    assert [backend.url() for backend in declarations.backends] == ["rq://h:6379/2?queue=mail"]
    envs = [value for key, value in section._opts.items() if str(key) == "env"]
    assert len(envs) == 1 and str(envs[0]).count("route=") == 1


def test_one_queue_of_one_server_has_one_serializer() -> None:
    section = Section()
    with pytest.raises(MulesConfigurationError) as info:
        section.workers.set_offload_backends(a="rq://h:6379/0?queue=q", b="rq://h/0?queue=q&serializer=pickle")
    assert str(info.value).startswith("farms 'a' (json) and 'b' (pickle) are routed to the same RQ queue 'q' at "
                                      "h:6379/0 with different serializers")
    with pytest.raises(MulesConfigurationError, match="farms 'a' .pickle. and 'b' .json. are routed to the same RQ "
                                                      r"queue 'q' at \$URL"):
        declare(backends={"a": "rq://?url_env=URL&queue=q&serializer=pickle", "b": "rq://?url_env=URL&queue=q"})
    with pytest.raises(MulesConfigurationError, match=r"malformed UWSGICONF_MULES record .*farms 'a' \(json\) and 'b'"):
        parse_record("v2;mules=0;route=a:rq://h:6379/0?queue=q;route=b:rq://h:6379/0?queue=q&serializer=pickle")
    # One serializer, or another queue, server or database: accepted.
    declare(backends={"a": "rq://h/0?queue=q", "b": "rq://h:6379/0?queue=q"})
    declare(backends={"a": "rq://h/0?queue=q", "b": "rq://h/0?queue=r&serializer=pickle"})
    declare(backends={"a": "rq://h/0?queue=q", "b": "rq://h/1?queue=q&serializer=pickle"})
    declare(backends={"a": "rq://h/0?queue=q", "b": "rq://?url_env=URL&queue=q&serializer=pickle"})
