"""Which uWSGI the configuration is compiled for: where it is, its version, and how it was built.

uWSGI reads YAML with one of two parsers, chosen when it is built: its own embedded parser
(the default of ``pip install uwsgi``) or libyaml (Debian's and Ubuntu's ``uwsgi-core``). They
need different YAML (see :mod:`uwsgiconf_mules.config.formats`), so ``uwsgiconf-mules compile --format
yaml`` asks the uWSGI of this environment which one it has: ``uwsgi --cflags`` prints the flags
it was compiled with, ``-DUWSGI_YAML`` for YAML support and ``-DUWSGI_LIBYAML`` for libyaml.

The uWSGI is the ``uwsgi`` next to this Python (a virtualenv's ``bin/``), else the first on PATH.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import MulesConfigurationError
from .formats import YAML_DIALECTS

__all__ = [
    "OLDEST_SUPPORTED", "UwsgiBuild", "find_uwsgi", "inspect_uwsgi", "resolve_dialect",
]

OLDEST_SUPPORTED = (2, 0, 21)
"""The oldest uWSGI release tested (older 2.0.x releases do not build against Python 3.11)."""

TIMEOUT = 10.0

_VERSION_FLAG = re.compile(r'-DUWSGI_VERSION="\\"([^"\\]*)\\""')
_VERSION_NUMBERS = re.compile(r"(\d+)\.(\d+)\.(\d+)")


@dataclass(frozen=True)
class UwsgiBuild:
    """What ``uwsgi --cflags`` says about a uWSGI binary.

    :param path: The binary.
    :param version: Its version string, as ``uwsgi --version`` prints it (``2.0.21-debian``).
    :param yaml: Its YAML parser, ``embedded`` or ``libyaml``; None when built without YAML.
    :param python_builtin: Whether the python plugin is built in (else it is loaded with ``--plugin``).
    """

    path: str
    version: str
    yaml: str | None
    python_builtin: bool

    @property
    def version_numbers(self) -> tuple[int, int, int] | None:
        """(2, 0, 21) for ``2.0.21-debian``; None when the version does not start with three numbers."""
        match = _VERSION_NUMBERS.match(self.version)
        return (int(match[1]), int(match[2]), int(match[3])) if match else None

    @property
    def supported(self) -> bool:
        """A 2.0.x release from 2.0.21 on."""
        numbers = self.version_numbers
        return numbers is not None and numbers[:2] == OLDEST_SUPPORTED[:2] and numbers >= OLDEST_SUPPORTED

    def describe(self) -> list[str]:
        """Lines for ``uwsgiconf-mules check``: the binary, version and support, and the build."""
        oldest = ".".join(map(str, OLDEST_SUPPORTED))
        support = (f"supported ({oldest} or a later 2.0.x)" if self.supported
                   else f"not supported: uwsgiconf-mules supports uWSGI {oldest} to 2.0.x")
        yaml = {"embedded": "YAML read by uWSGI's embedded parser (as pip builds it)",
                "libyaml": "YAML read by libyaml (as Debian and Ubuntu build it)",
                None: "no YAML support (use --format ini)"}[self.yaml]
        python = ("python built in" if self.python_builtin
                  else "python as a plugin (start it with --plugin python3 and, for a virtualenv, --virtualenv)")
        return [f"uWSGI here: {self.path}, version {self.version}: {support}", f"  build: {yaml}; {python}"]


def find_uwsgi(given: str | None = None) -> str | None:
    """The uWSGI to ask: ``given`` (a path, or a name looked up on PATH), else the ``uwsgi`` next to this
    Python (a virtualenv's), else the first ``uwsgi`` on PATH, else None."""
    if given:
        return given if os.sep in given else shutil.which(given) or given
    beside = Path(sys.executable).parent / "uwsgi"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("uwsgi")


def inspect_uwsgi(path: str) -> UwsgiBuild:
    """Run ``path --cflags`` (and ``--version`` if the flags name no version) and read the build.

    :raises MulesConfigurationError: when the binary cannot be run or prints no flags.
    """
    cflags = _run(path, "--cflags")
    if "-DUWSGI_" not in cflags:
        raise MulesConfigurationError(f"{path} --cflags printed no uWSGI build flags: is it uWSGI?", culprit=path)
    tokens = cflags.split()
    match = _VERSION_FLAG.search(cflags)
    version = match[1] if match else _run(path, "--version").strip()
    yaml = None
    if "-DUWSGI_YAML" in tokens:
        yaml = "libyaml" if "-DUWSGI_LIBYAML" in tokens else "embedded"
    return UwsgiBuild(path=path, version=version, yaml=yaml, python_builtin="UDEP(python)" in cflags)


def _run(path: str, option: str) -> str:
    try:
        proc = subprocess.run([path, option], capture_output=True, text=True, timeout=TIMEOUT,
                              stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise MulesConfigurationError(f"cannot run {path} {option}: {exc}", culprit=path) from None
    if proc.returncode != 0:
        raise MulesConfigurationError(f"{path} {option} exited with {proc.returncode}: {proc.stderr.strip()[:200]}",
                                      culprit=path)
    return proc.stdout


def resolve_dialect(dialect: str, uwsgi: str | None = None) -> str:
    """The YAML dialect to write: ``dialect`` itself, or for ``auto`` the parser of the uWSGI found.

    :param dialect: ``auto``, ``embedded`` or ``libyaml``.
    :param uwsgi: The uWSGI binary to ask (default: :func:`find_uwsgi`).
    :raises MulesConfigurationError: when no uWSGI is found, or it was built without YAML.
    """
    if dialect in YAML_DIALECTS:
        return dialect
    if dialect != "auto":
        raise MulesConfigurationError(f"unknown YAML dialect {dialect!r}; use auto, {', '.join(YAML_DIALECTS)}",
                                      culprit=dialect)
    path = find_uwsgi(uwsgi)
    if path is None:
        raise MulesConfigurationError(
            f"no uwsgi next to {sys.executable} or on PATH to tell which YAML parser it has: compile where uWSGI "
            "runs, or pass --yaml-dialect embedded (pip's uWSGI) or --yaml-dialect libyaml (Debian's, Ubuntu's)")
    build = inspect_uwsgi(path)
    if build.yaml is None:
        raise MulesConfigurationError(
            f"{path} (uWSGI {build.version}) was built without YAML support: use --format ini", culprit=path)
    return build.yaml
