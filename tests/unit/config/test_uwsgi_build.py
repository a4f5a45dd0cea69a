"""Which uWSGI is here and how it was built (``uwsgiconf_mules.config.uwsgi_build``), on stand-in binaries
that print what a pip and a Debian build print; the command's use of it is in test_cli.py, and the
real binaries in tests/integration/test_yaml_dialects.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from support.helpers import DEBIAN_CFLAGS, PIP_CFLAGS, fake_uwsgi
from uwsgiconf_mules.config.uwsgi_build import UwsgiBuild, find_uwsgi, inspect_uwsgi, resolve_dialect
from uwsgiconf_mules.errors import MulesConfigurationError


def test_a_pip_build_has_the_embedded_parser_and_python_built_in(tmp_path: Path) -> None:
    uwsgi = str(fake_uwsgi(tmp_path, PIP_CFLAGS))
    assert inspect_uwsgi(uwsgi) == UwsgiBuild(uwsgi, "2.0.31", "embedded", python_builtin=True)


def test_a_debian_build_has_libyaml_and_python_as_a_plugin(tmp_path: Path) -> None:
    uwsgi = str(fake_uwsgi(tmp_path, DEBIAN_CFLAGS))
    assert inspect_uwsgi(uwsgi) == UwsgiBuild(uwsgi, "2.0.21-debian", "libyaml", python_builtin=False)


@pytest.mark.parametrize(("version", "supported"), [
    ("2.0.20", False), ("2.0.21", True), ("2.0.21-debian", True), ("2.0.24-ubuntu", True), ("2.0.31", True),
    ("2.1.0", False), ("1.9.21", False), ("2.0", False), ("master", False),
])
def test_supported_versions_are_2_0_21_and_later_2_0_x(version: str, supported: bool) -> None:
    assert UwsgiBuild("uwsgi", version, "embedded", python_builtin=True).supported is supported


def test_the_uwsgi_beside_this_python_comes_before_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    beside = fake_uwsgi(tmp_path / "venv" / "bin")
    on_path = fake_uwsgi(tmp_path / "path")
    monkeypatch.setattr(sys, "executable", str(beside.parent / "python"))
    monkeypatch.setenv("PATH", str(on_path.parent))
    assert find_uwsgi() == str(beside)
    beside.unlink()
    assert find_uwsgi() == str(on_path)
    on_path.unlink()
    assert find_uwsgi() is None


def test_a_given_uwsgi_is_a_path_or_a_name_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    named = fake_uwsgi(tmp_path / "path").rename(tmp_path / "path" / "uwsgi_python311")
    monkeypatch.setenv("PATH", str(named.parent))
    assert find_uwsgi("uwsgi_python311") == str(named)
    assert find_uwsgi("./uwsgi") == "./uwsgi"
    assert find_uwsgi("missing") == "missing"


def test_an_explicit_dialect_asks_no_uwsgi() -> None:
    assert resolve_dialect("libyaml", "/nonexistent/uwsgi") == "libyaml"
    assert resolve_dialect("embedded", "/nonexistent/uwsgi") == "embedded"
    with pytest.raises(MulesConfigurationError, match="cannot run /nonexistent/uwsgi --cflags"):
        resolve_dialect("auto", "/nonexistent/uwsgi")
    with pytest.raises(MulesConfigurationError, match="unknown YAML dialect 'json'"):
        resolve_dialect("json")
