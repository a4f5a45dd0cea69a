"""The Django example (examples/django) for tests: a migrated copy of it, started on a real uWSGI."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

from .harness import Server, compile_config, launch

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "django"
MODES = {"prefork": (), "lazy-apps": ("--lazy-apps",)}
DJANGO_APP = ("--module", "mysite.wsgi:application")


def site(tmp_path: Path, config_edit: tuple[str, str] = ("", "")) -> tuple[Path, Path]:
    """A copy of the example (its own spool, by the directory it is compiled in), migrated into a fresh
    sqlite database; returns (site directory, database)."""
    directory = tmp_path / "site"
    shutil.copytree(EXAMPLE, directory, ignore=shutil.ignore_patterns("__pycache__", "*.sqlite3"))
    if config_edit[0]:
        config = directory / "uwsgicfg.py"
        text = config.read_text()
        assert config_edit[0] in text
        config.write_text(text.replace(*config_edit))
    db = tmp_path / "db.sqlite3"
    proc = subprocess.run([sys.executable, "manage.py", "migrate", "--noinput"], cwd=directory, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL, env=env_of(db), check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return directory, db


def env_of(db: Path) -> dict[str, str]:
    """This process's environment for the example's management commands, with the database
    ``db`` and without a ``DJANGO_SETTINGS_MODULE`` (the config sets it)."""
    env = {key: value for key, value in os.environ.items() if key != "DJANGO_SETTINGS_MODULE"}
    env["EXAMPLE_DB"] = str(db)
    return env


def start(tmp_path: Path, mode: str, servers: list[Server], config_edit: tuple[str, str] = ("", ""),
          ) -> tuple[Server, Path]:
    """Start the example on a real uWSGI in ``mode`` (``prefork`` or ``lazy-apps``), appended to
    ``servers`` to be stopped; returns (server, database)."""
    directory, db = site(tmp_path, config_edit)
    config, compiled = compile_config(directory, "ini", out_dir=tmp_path)
    assert compiled.returncode == 0, compiled.stderr
    server = launch(config, directory, expect_mules=2, env={"EXAMPLE_DB": str(db)}, run_dir=tmp_path,
                    app=DJANGO_APP, extra_args=MODES[mode])
    servers.append(server)
    return server, db


def rows(db: Path) -> list[tuple[str, str, int]]:
    """The welcomes the example's tasks wrote: (email, via, mule id), sorted."""
    with closing(sqlite3.connect(db, timeout=10)) as connection:  # closed: Python 3.13 warns about an unclosed one
        return sorted(connection.execute("select email, via, mule from shop_welcome").fetchall())
