"""Rendering (``uwsgiconf_mules.config.formats``) through uwsgiconf's own API, and the libyaml dialect's quoting
read back by libyaml; the templates against expected files and YAML's refusals are checked through
``uwsgiconf-mules compile`` in test_cli.py."""

from __future__ import annotations

import random

import pytest
import yaml
from uwsgiconf.config import Configuration

from uwsgiconf_mules import Section
from uwsgiconf_mules.config.formats import double_quoted
from uwsgiconf_mules.declarations import DISPATCH_MULE, default_spool_dir


def test_yaml_formatter_is_registered_with_uwsgiconf() -> None:
    section = Section()
    section.workers.set_mules_params(mules=1)
    text = Configuration([section]).format(formatter="yaml", stamp=False)
    assert text.splitlines()[0] == "uwsgi:"
    record = f"v2;mules=1;send-timeout=5;dispatch={DISPATCH_MULE};spool={default_spool_dir()}"
    assert f"  env: UWSGICONF_MULES={record}" in text.splitlines()


def test_libyaml_formatter_is_registered_with_uwsgiconf() -> None:
    section = Section()
    section.workers.set_mules_params(mules=1)
    text = Configuration([section]).format(formatter="yaml-libyaml", stamp=False)
    assert text.splitlines()[:2] == ["uwsgi:", '  workers: "%k"']
    record = f"v2;mules=1;send-timeout=5;dispatch={DISPATCH_MULE};spool={default_spool_dir()}"
    assert f'  env: "UWSGICONF_MULES={record}"' in text.splitlines()


# Every character libyaml might read otherwise than meant, and characters YAML only takes escaped.
TRICKY = ['"', "\\", "#", "%", ":", ": ", " #", "-", "[", "{", "'", "&", "*", "!", "|", ">", "@", "`", "?", ",",
          "\t", "\x01", "\x1b", "\x7f", "\x85", "\xa0", "\u2028", "\u2029", "\ufeff", "\ufffe", "é", "\U0001f600",
          " ", "a", "\\n", "\\x41", "%k", "true", "~", "null", "---", "..."]


def libyaml_reads(values: list[str]) -> list[str]:
    if not yaml.__with_libyaml__:
        pytest.skip("PyYAML was installed without libyaml")
    text = "".join(f"k{i}: {double_quoted(value)}\n" for i, value in enumerate(values))
    return list(yaml.load(text, Loader=yaml.CSafeLoader).values())


def test_double_quoted_values_read_back_exactly_through_libyaml() -> None:
    """libyaml itself (PyYAML's C loader) reads every double-quoted value back as it was."""
    rng = random.Random(16)
    values = TRICKY + ["".join(rng.choice(TRICKY) for _ in range(rng.randrange(1, 12))) for _ in range(3000)]
    values = [value for value in values if "%" not in value]  # uWSGI's %-pairs: below
    assert libyaml_reads(values) == values


def test_percent_pairs_are_left_to_uwsgi_but_its_escape_is_written_for_libyaml() -> None:
    """uWSGI expands %-pairs in the text before libyaml reads it; ``%[`` (ESC) would be a raw control character."""
    values = ["%k", "%%", "%%[", "100%% %(var)", "%[[31mred%[[0m"]
    assert [double_quoted(value) for value in values] == [
        '"%k"', '"%%"', '"%%["', '"100%% %(var)"', '"\\e[31mred\\e[0m"']
    assert libyaml_reads(values) == ["%k", "%%", "%%[", "100%% %(var)", "\x1b[31mred\x1b[0m"]
