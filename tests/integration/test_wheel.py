"""The built wheel, installed in a fresh venv: the package data is in it and both commands compile (YAML in
both dialects)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from support.helpers import EXPECTED, compile_with, expected, normalise, source


def test_wheel_in_a_fresh_venv_compiles_ini_and_yaml(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(root)],
                   check=True, capture_output=True, timeout=300)
    wheel = next(wheels.glob("uwsgiconf_mules-*.whl"))
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    assert {"uwsgiconf_mules/templates/yaml.j2", "uwsgiconf_mules/templates/yaml_libyaml.j2",
            "uwsgiconf_mules/templates/ini.j2",
            "uwsgiconf_mules/py.typed", "uwsgiconf_mules/dispatch_mule.py"} <= set(names)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)], check=True, capture_output=True,
                   timeout=300)
    work = tmp_path / "work"
    work.mkdir()
    installed = str(next(venv.glob("lib/python*/site-packages/uwsgiconf_mules/dispatch_mule.py")).resolve())
    for dialect in ("embedded", "libyaml"):
        proc = compile_with(work, source("design"), str(venv / "bin" / "uwsgiconf-mules"), "compile", "--format",
                            "yaml", "--yaml-dialect", dialect)
        assert proc.returncode == 0, proc.stderr
        assert normalise(proc.stdout.replace(installed, "<dispatch_mule>")) == expected("design", "yaml", dialect)
    # A plain install is enough for uwsgiconf's own command, too (uwsgiconf[cli] is a dependency).
    ini = compile_with(work, source("design"), str(venv / "bin" / "uwsgiconf"), "compile")
    assert ini.returncode == 0, ini.stderr
    assert normalise(ini.stdout.replace(installed, "<dispatch_mule>")) == (EXPECTED / "design.ini").read_text()
