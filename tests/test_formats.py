"""Rendering (``uwsgiconf_mules._formats``) through uwsgiconf's own API; the templates against expected
files and YAML's refusals are checked through ``uwsgiconf-mules compile`` in test_cli.py."""

from __future__ import annotations

from uwsgiconf.config import Configuration

from uwsgiconf_mules import Section
from uwsgiconf_mules._declarations import DISPATCH_MULE, default_spool_dir


def test_yaml_formatter_is_registered_with_uwsgiconf() -> None:
    section = Section()
    section.workers.set_mules_params(mules=1)
    text = Configuration([section]).format(formatter="yaml", stamp=False)
    assert text.splitlines()[0] == "uwsgi:"
    record = f"v2;mules=1;send-timeout=5;dispatch={DISPATCH_MULE};spool={default_spool_dir()}"
    assert f"  env: UWSGICONF_MULES={record}" in text.splitlines()
