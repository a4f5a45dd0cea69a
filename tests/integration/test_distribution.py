"""A distribution's uWSGI as the docs page "Your distribution's uWSGI" runs it, with Python as a plugin
(`.ci/matrix debian-uwsgi` points the harness at Debian's: ``/usr/bin/uwsgi --plugin python3 --virtualenv VENV``,
from a venv without pip's uwsgi).
Skipped with pip's uWSGI, which has Python built in."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from support.harness import BIN, UWSGI, UWSGI_ARGS, compile_config, declaration, free_port
from support.helpers import normalise

pytestmark = pytest.mark.skipif(
    "--plugin" not in UWSGI_ARGS, reason=f"the harness's uWSGI ({UWSGI}) runs without --plugin: Python is built in "
    "(pip's); `.ci/matrix debian-uwsgi` runs these on Debian's uwsgi-core")


def test_the_plugin_comes_before_python_options(tmp_path: Path) -> None:
    (tmp_path / "uwsgicfg.py").write_text(declaration("mules=1"))
    (tmp_path / "app.py").write_text("def application(environ, start_response):\n    return []\n")
    config, proc = compile_config(tmp_path, "yaml")
    assert proc.returncode == 0, proc.stderr
    late = subprocess.run([str(UWSGI), "--yaml", str(config), "--strict", "--master", "--die-on-term",
                           "--http-socket", f"127.0.0.1:{free_port()}", "--module", "app:application", *UWSGI_ARGS],
                          cwd=tmp_path, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
                          check=False)
    assert late.returncode != 0
    assert "unrecognized option '--module'" in late.stdout + late.stderr


def test_compile_in_a_venv_without_uwsgi_writes_for_the_uwsgi_on_path(tmp_path: Path) -> None:
    if (BIN / "uwsgi").exists():
        pytest.skip(f"{BIN} has a uwsgi of its own")
    (tmp_path / "uwsgicfg.py").write_text(declaration("mules=1"))
    _, found = compile_config(tmp_path, "yaml", yaml_args=("--yaml-dialect", "auto"))
    _, asked = compile_config(tmp_path, "yaml")  # --uwsgi UWSGI
    assert found.returncode == asked.returncode == 0, found.stderr + asked.stderr
    assert normalise(found.stdout) == normalise(asked.stdout)
    assert '  workers: "%k"' in found.stdout.splitlines()  # libyaml's dialect
    check = subprocess.run([str(BIN / "uwsgiconf-mules"), "check"], cwd=tmp_path, capture_output=True, text=True,
                           timeout=60, stdin=subprocess.DEVNULL, check=False)
    assert "uWSGI here: /usr/bin/uwsgi, version " in check.stdout
    assert "YAML read by libyaml" in check.stdout and "python as a plugin" in check.stdout
