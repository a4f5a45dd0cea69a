"""YAML for each of uWSGI's two YAML parsers, read by a real uWSGI built with that parser: compiled
for that binary (``--uwsgi``, the dialect found by asking it), the file is the expected one and uWSGI
reads back from it exactly the options it reads from the ini (``--show-config``, no server started).

The uWSGI with a parser is the harness's (``pip install uwsgi``: embedded; see tests/support/harness.py for a
distribution's) or the ``uwsgi`` on PATH (Debian's ``uwsgi-core``: libyaml); without one, the test
is skipped. ``make test-matrix`` runs both: pip's uWSGI, and Debian's as the harness's.
Which parser a binary has is read here from ``uwsgi --cflags`` directly, not through the code under test.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from support.harness import UWSGI, UWSGI_ARGS, compile_config, read_options
from support.helpers import CASES, expected, normalise, source, write_conf

DIALECTS = ["embedded", "libyaml"]


@functools.cache
def parsers() -> tuple[tuple[Path, tuple[str, ...], str | None], ...]:
    """(binary, arguments, YAML parser) of the harness's uWSGI and of the ``uwsgi`` on PATH, if another."""
    on_path = shutil.which("uwsgi")
    found = []
    seen = set()
    for path, args in ((UWSGI, UWSGI_ARGS), (Path(on_path) if on_path else None, ())):
        if path is None or not path.exists() or path.resolve() in seen:
            continue
        seen.add(path.resolve())
        flags = subprocess.run([str(path), "--cflags"], capture_output=True, text=True, timeout=30,
                               stdin=subprocess.DEVNULL, check=False).stdout.split()
        found.append((path, args, "libyaml" if "-DUWSGI_LIBYAML" in flags else
                      "embedded" if "-DUWSGI_YAML" in flags else None))
    return tuple(found)


def uwsgi_with(parser: str) -> tuple[Path, tuple[str, ...]] | None:
    """A uWSGI built with ``parser`` and the arguments it runs with: the harness's, else the one on PATH."""
    return next(((path, args) for path, args, has in parsers() if has == parser), None)


@pytest.fixture(params=DIALECTS)
def dialect(request: pytest.FixtureRequest) -> str:
    if uwsgi_with(request.param) is None:
        tried = ", ".join(f"{path} ({has or 'no YAML'})" for path, _, has in parsers()) or "no uwsgi"
        pytest.skip(f"no uWSGI built with the {request.param} YAML parser here (tried {tried}); pip's uWSGI has "
                    "the embedded one, Debian's uwsgi-core libyaml: `make test-matrix` runs both")
    return str(request.param)


def read_back(directory: Path, body: str, dialect: str) -> tuple[str, list[tuple[str, str]], list[tuple[str, str]]]:
    """Compile ``body`` as ini and as YAML for the uWSGI with ``dialect``'s parser; that uWSGI's reading of
    each, stamps normalised: (YAML text, options from the ini, options from the YAML)."""
    found = uwsgi_with(dialect)
    assert found is not None
    uwsgi, args = found
    directory.mkdir(parents=True, exist_ok=True)
    write_conf(directory, body)  # with the programmed mules it names
    ini, ini_proc = compile_config(directory, "ini")
    yaml, yaml_proc = compile_config(directory, "yaml", yaml_args=("--uwsgi", str(uwsgi)))
    assert ini_proc.returncode == yaml_proc.returncode == 0, ini_proc.stderr + yaml_proc.stderr
    ini_options, ini_log = read_options(ini, "ini", uwsgi, args)
    yaml_options, yaml_log = read_options(yaml, "yaml", uwsgi, args)
    assert ini_options, ini_log
    assert yaml_options, yaml_log

    def normalised(options: list[tuple[str, str]]) -> list[tuple[str, str]]:
        return [(key, normalise(value)) for key, value in options]

    return yaml_proc.stdout, normalised(ini_options), normalised(yaml_options)


@pytest.mark.parametrize("name", sorted(CASES))
def test_yaml_for_a_uwsgi_is_the_expected_file_and_reads_back_as_the_ini(
        tmp_path: Path, dialect: str, name: str) -> None:
    text, from_ini, from_yaml = read_back(tmp_path, source(name), dialect)
    assert normalise(text) == expected(name, "yaml", dialect)
    assert from_yaml == from_ini
    assert ("shared-import", "uwsgiconf_mules.runtime") in from_yaml


# Values both dialects carry, and values only libyaml carries (the embedded dialect refuses them).
VALUES = {
    "embedded": ["a: b", "x  y", "100%% done", "%k cores", "café ✓", ">   folded", "|literal", "&a *b !c @d `e`",
                 "? q", "true", "~", "it's", 'say "hi"', "a\tb", "C:\\dir\\n", "\x1b[31mred\x1b[0m", "%(var) x",
                 "a\x85b", "a\u2028b", "%[[1mbold%[[0m", "%%k"],
    "libyaml": ["#comment", "a # b", '"quoted"', "'single'", "[list]", "{flow: 1}", "- dash", "%%\"", "a\\\"b"],
}


def test_values_read_back_as_the_ini_gives_them(tmp_path: Path, dialect: str) -> None:
    values = VALUES["embedded"] + (VALUES["libyaml"] if dialect == "libyaml" else [])
    body = source("design").replace("uwsgi_configuration =", "".join(
        f"section.print_out({value!r}, indent='')\n" for value in values) + "uwsgi_configuration =")
    _, from_ini, from_yaml = read_back(tmp_path, body, dialect)
    assert from_yaml == from_ini
    printed = [value for key, value in from_ini if key == "print"][:len(values)]  # then the two stamp lines
    assert [read for read, value in zip(printed, values, strict=True) if "%" not in value] == [
        value for value in values if "%" not in value]  # uWSGI expanded only the %-variables
    assert printed[2:4] == ["100% done", f"{os.cpu_count()} cores"]


def test_yaml_for_the_other_parser_is_misread(tmp_path: Path, dialect: str) -> None:
    """Why the dialect matters: this uWSGI refuses, or reads quotes into, the other dialect's YAML."""
    found = uwsgi_with(dialect)
    assert found is not None
    other = "libyaml" if dialect == "embedded" else "embedded"
    (tmp_path / "uwsgicfg.py").write_text(source("design"))
    yaml, proc = compile_config(tmp_path, "yaml", yaml_args=("--yaml-dialect", other))
    assert proc.returncode == 0, proc.stderr
    options, log = read_options(yaml, "yaml", *found)
    if dialect == "libyaml":
        assert options == []
        assert "error parsing YAML file: did not find expected comment or line break" in log
    else:
        assert ("shared-import", '"uwsgiconf_mules.runtime"') in options
