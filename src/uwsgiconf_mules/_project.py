"""The project's uwsgiconf configuration module, loaded in Python (the command line, and outside
uWSGI the runtime).

The command line loads a ``uwsgicfg.py`` to compile or check it. Outside uWSGI (a development
server, a test run, a script) there is no compiled config and no declarations record; naming the
configuration module in :data:`~uwsgiconf_mules.declarations.CONFIG_ENV` makes the runtime load
it and use the declarations of one of its sections, so an undeclared farm or mule id raises there
as it does in production (:func:`load_declarations`). Under uWSGI the runtime never comes here:
it reads the record the compiled config carries. This module imports uwsgiconf (and, through the
project's config, jinja2) only when called.
"""

from __future__ import annotations

import itertools
import os

from .declarations import CONFIG_ENV, Declarations
from .errors import MulesConfigurationError

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the runtime imports this module on demand
if TYPE_CHECKING:
    from typing import Any

_loads = itertools.count(1)  # a name of its own for every configuration module run from a path


def is_path(conf: str) -> bool:
    """Whether ``conf`` names a file (``uwsgicfg.py``, ``deploy/uwsgicfg.py``) rather than a module.

    :param conf: A path or a module name.
    """
    return conf.endswith(".py") or os.sep in conf


def split(value: str) -> tuple[str, str]:
    """``(CONF, SECTION)`` of ``CONF`` or ``CONF:SECTION`` (SECTION empty when not given).

    :param value: ``CONF`` or ``CONF:SECTION``.
    """
    conf, colon, wanted = value.rpartition(":")
    if not colon or os.sep in wanted:
        return value, ""
    return conf, wanted


def _load_file(path: str) -> Any:
    """Run the module at ``path`` under a name of its own, every time: never a module already
    imported (uwsgiconf imports by file name, so a second ``uwsgicfg.py``, or a ``settings.py``,
    would give an earlier or another module back), and not kept in ``sys.modules``."""
    import importlib.util
    import sys

    from uwsgiconf.utils import output_capturing

    name = f"_uwsgiconf_mules_config_{next(_loads)}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise MulesConfigurationError(f"{path}: not a Python module", culprit=path)
    module = importlib.util.module_from_spec(spec)
    directory = os.path.dirname(os.path.abspath(path))
    sys.path.insert(0, directory)  # as uwsgiconf does: the module may import its neighbours
    sys.modules[name] = module  # while it runs (dataclasses and pickle look their module up)
    try:
        with output_capturing():
            spec.loader.exec_module(module)
    finally:
        sys.modules.pop(name, None)
        if directory in sys.path:
            sys.path.remove(directory)
    return module


def configurations(conf: str) -> list[Any]:
    """The uwsgiconf configurations of a configuration module, as ``uwsgiconf compile`` loads them.

    :param conf: A path to the module (``uwsgicfg.py``, ``deploy/uwsgicfg.py``), or a module name
        importable here (``shop.uwsgicfg``). A path is run afresh on every call.
    :raises MulesConfigurationError: when the module defines no ``uwsgi_configuration``, or the
        path is not a file.
    :raises Exception: whatever importing the module raises.
    """
    from uwsgiconf.utils import listify, output_capturing

    if is_path(conf):
        if not os.path.isfile(conf):
            relative = "" if os.path.isabs(conf) else f" (relative to {os.getcwd()})"
            raise MulesConfigurationError(f"{conf}: file not found{relative}", culprit=conf)
        module = _load_file(conf)
    else:
        from importlib import import_module

        with output_capturing():
            module = import_module(conf)
    found = listify(getattr(module, "uwsgi_configuration", []))
    if not found:
        raise MulesConfigurationError(f"{conf} defines no uwsgi_configuration", culprit=conf)
    return list(found)


def load_declarations(value: str, where: str | None = None) -> Declarations:
    """The declarations of the section named by ``value``, the value of
    :data:`~uwsgiconf_mules.declarations.CONFIG_ENV`: ``CONF`` or ``CONF:SECTION``, where ``CONF``
    is a path or a module name (see :func:`configurations`) and ``SECTION`` the name of a section
    (needed only when several sections of ``CONF`` declare mules).

    :param value: ``CONF`` or ``CONF:SECTION``.
    :param where: Where ``value`` comes from, for error messages (default: the variable and its value).
    :raises MulesConfigurationError: naming where the value comes from, when the module does not
        load, declares no mules, or names no single section.
    """
    conf, wanted = split(value)
    one = f"{conf}:SECTION"
    if where is None:
        where, one = f"{CONFIG_ENV}={value}", f"{CONFIG_ENV}={one}"
    try:
        loaded = configurations(conf)
    except MulesConfigurationError as exc:
        raise MulesConfigurationError(f"{where}: {exc}", culprit=value) from exc
    except Exception as exc:
        raise MulesConfigurationError(
            f"{where}: cannot load the configuration module {conf!r}: {type(exc).__name__}: {exc}",
            culprit=value) from exc
    declared = [(str(section.name), section.mules_declarations) for configuration in loaded
                for section in configuration.sections if getattr(section, "mules_declarations", None) is not None]
    names = ", ".join(repr(name) for name, _ in declared)
    if wanted:
        declared = [(name, found) for name, found in declared if name == wanted]
        if not declared:
            raise MulesConfigurationError(
                f"{where}: no section {wanted!r} declares mules in {conf} (sections that do: {names or 'none'})",
                culprit=value)
    if not declared:
        raise MulesConfigurationError(
            f"{where}: {conf} declares no mules (declare them with uwsgiconf_mules.Section)", culprit=value)
    if len(declared) > 1:
        raise MulesConfigurationError(
            f"{where}: several sections of {conf} declare mules ({names}); name one: {one}", culprit=value)
    return declared[0][1]  # type: ignore[no-any-return]
