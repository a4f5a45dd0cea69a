"""The project's uwsgiconf configuration module, loaded in Python (the command line, and outside
uWSGI the runtime).

The command line loads a ``uwsgicfg.py`` to compile or check it. Outside uWSGI (a development
server, a test run, a script) there is no compiled config and no declarations record; naming the
configuration module in :data:`~uwsgiconf_mules._declarations.CONFIG_ENV` makes the runtime load
it and use the declarations of one of its sections, so an undeclared farm or mule id raises there
as it does in production (:func:`load_declarations`). Under uWSGI the runtime never comes here:
it reads the record the compiled config carries. This module imports uwsgiconf (and, through the
project's config, jinja2) only when called.
"""

from __future__ import annotations

import os

from ._declarations import CONFIG_ENV, Declarations
from .errors import MulesConfigurationError

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the runtime imports this module on demand
if TYPE_CHECKING:
    from typing import Any


def configurations(conf: str) -> list[Any]:
    """The uwsgiconf configurations of a configuration module, as ``uwsgiconf compile`` loads them.

    :param conf: A path to the module (``uwsgicfg.py``, ``deploy/uwsgicfg.py``), or a module name
        importable here (``shop.uwsgicfg``).
    :raises MulesConfigurationError: when the module defines no ``uwsgi_configuration``.
    :raises Exception: whatever importing the module raises.
    """
    from uwsgiconf.utils import ConfModule, listify, output_capturing

    if conf.endswith(".py") or os.sep in conf:
        found = ConfModule(conf).configurations
    else:
        from importlib import import_module

        with output_capturing():
            found = listify(getattr(import_module(conf), "uwsgi_configuration", []))
    if not found:
        raise MulesConfigurationError(f"{conf} defines no uwsgi_configuration", culprit=conf)
    return list(found)


def load_declarations(value: str) -> Declarations:
    """The declarations of the section named by ``value``, the value of
    :data:`~uwsgiconf_mules._declarations.CONFIG_ENV`: ``CONF`` or ``CONF:SECTION``, where ``CONF``
    is a path or a module name (see :func:`configurations`) and ``SECTION`` the name of a section
    (needed only when several sections of ``CONF`` declare mules).

    :param value: ``CONF`` or ``CONF:SECTION``.
    :raises MulesConfigurationError: naming the variable and its value, when the module does not
        load, declares no mules, or names no single section.
    """
    conf, colon, wanted = value.rpartition(":")
    if not colon or os.sep in wanted:
        conf, wanted = value, ""
    where = f"{CONFIG_ENV}={value}"
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
            f"{where}: several sections of {conf} declare mules ({names}); name one: "
            f"{CONFIG_ENV}={conf}:SECTION", culprit=value)
    return declared[0][1]  # type: ignore[no-any-return]
