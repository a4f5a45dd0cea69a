"""Mules and farms declarations: pure data, validated once, rendered two ways.

This module never imports ``uwsgi``; the builders (``uwsgiconf_mules.config``) and the runtime
(``uwsgiconf_mules.runtime``) both use it, which is what keeps them in agreement.

A declaration renders as:

* uWSGI options (``mule``, ``farm``, ``mule-msg-size``, ...), the ones uWSGI acts on;
* a compact, single-valued *record* of the whole declaration, written into the config as
  ``env = UWSGICONF_MULES=<record>``. uWSGI keeps only the last value of a repeated option in
  ``uwsgi.opt``, so the ``farm`` lines cannot be read back at run time; the record can, from the
  environment of every worker and mule (uWSGI sets it in the master before forking). It is one
  line with no ``#``, ``%`` or quote, so it survives both the ini format and uWSGI's embedded
  YAML parser.

Mule ids are positional, as in uWSGI: mule *n* is the *n*-th ``mule`` line. A mule is either a
*dispatch* mule, which runs the project's own message loop (``mule =
.../uwsgiconf_mules/dispatch_mule.py``) and executes offloaded calls, or a *programmed* mule, which
runs the user's own script (``script.py``) or callable (``package.module:callable``).
"""

from __future__ import annotations

from ..errors import MulesConfigurationError
from .backends import Backend
from .farms import FarmSpec, MuleFarm, validate_farm_name
from .model import FIELDS, Declarations, parse_record
from .names import (
    BASE_FDS,
    C_INT_MAX,
    CONFIG_ENV,
    DEFAULT_SEND_TIMEOUT,
    DISPATCH_MULE,
    ENV_MAX,
    FD_CEILING,
    MAX_MULES,
    MULE_COUNTERS,
    MULE_GAUGES,
    MULE_MODULE,
    QUEUE_FDS,
    RECORD_ENV,
    RECORD_VERSION,
    RUNTIME_MODULE,
    SPOOL_GAUGE,
    master_fds,
)
from .results import ResultsStore, results_store

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: workers and mules import this package, keep it cheap
if TYPE_CHECKING:
    from typing import Any

    from .validate import (
        check_programs as check_programs,
        default_spool_dir as default_spool_dir,
        program_problem as program_problem,
        validate_callable_path as validate_callable_path,
        validate_mule_init as validate_mule_init,
        value_problem as value_problem,
    )

_BUILD_TIME = frozenset(("check_programs", "default_spool_dir", "program_problem", "validate_callable_path",
                         "validate_mule_init", "value_problem"))
"""What :mod:`.validate` gives: the builders' checks, loaded when first asked for (workers and mules
read records, they never validate arguments)."""


def __getattr__(name: str) -> Any:
    if name in _BUILD_TIME:
        from . import validate

        return getattr(validate, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "BASE_FDS",
    "CONFIG_ENV",
    "C_INT_MAX",
    "DEFAULT_SEND_TIMEOUT",
    "DISPATCH_MULE",
    "ENV_MAX",
    "FD_CEILING",
    "FIELDS",
    "MAX_MULES",
    "MULE_COUNTERS",
    "MULE_GAUGES",
    "MULE_MODULE",
    "QUEUE_FDS",
    "RECORD_ENV",
    "RECORD_VERSION",
    "RUNTIME_MODULE",
    "SPOOL_GAUGE",
    "Backend",
    "Declarations",
    "FarmSpec",
    "MuleFarm",
    "ResultsStore",
    "check_programs",
    "declare",
    "default_spool_dir",
    "master_fds",
    "parse_record",
    "program_problem",
    "validate_callable_path",
    "validate_farm_name",
    "validate_mule_init",
    "value_problem",
]


_UNSUPPORTED = {
    "msg_buffer_recv": "mule-msg-recv-size",
}


def declare(
    mules: object = None,
    *,
    farms: object = None,
    touch_reload: object = None,
    harakiri_timeout: object = None,
    reload_mercy: object = None,
    msg_buffer: object = None,
    send_timeout: object = None,
    spool_dir: object = None,
    deploy_touch: object = None,
    deploy_mode: object = None,
    mule_init: object = None,
    backends: object = None,
    stats: object = None, on_failure: object = None, results: object = None, schedules: object = None,
    **unsupported: object,
) -> Declarations:
    """Validate builder arguments and return the declaration they describe.

    The arguments are those of :meth:`uwsgiconf_mules.config.Workers.set_mules_params`, where each
    is documented (once: the docs render that docstring), and ``backends``, the farm name -> URL
    mapping of :meth:`~uwsgiconf_mules.config.Workers.set_offload_backends`. Each is checked by its
    function in :mod:`.validate`; ``schedules`` is what ``section.workers.schedule`` collected
    (:mod:`.schedules`), whose targets :func:`_checked` checks.

    :raises MulesConfigurationError: naming what is wrong; also for an argument uWSGI 2.0.x does not
        know (``msg_buffer_recv``) or an unknown one.
    """
    from . import validate as _v

    for key, value in unsupported.items():
        if key in _UNSUPPORTED:
            if value is not None:
                raise MulesConfigurationError(
                    f"{key} is not supported: it emits '{_UNSUPPORTED[key]}', an option uWSGI 2.0.x "
                    "does not know (--strict rejects it); use msg_buffer, which sets both socket "
                    "buffers", culprit=key)
        else:
            raise MulesConfigurationError(f"set_mules_params() got an unknown argument {key!r}", culprit=key)

    specs = _v.farm_specs(farms)
    seen = {spec.name for spec in specs}
    needed = max((max(spec.mules) for spec in specs), default=0)
    _v.check_count(needed, len(specs), "farms")
    programs = _v.expand_mules(mules, len(specs))
    if programs is None:
        programs = (None,) * needed
    elif len(programs) < needed:
        culprit = max(specs, key=lambda spec: max(spec.mules))
        raise MulesConfigurationError(
            f"mules declares {len(programs)} mule(s) but farm {culprit.name!r} uses mule "
            f"{max(culprit.mules)}; mule ids run from 1 to the number of mules", culprit=culprit.name)

    paths = _v.touch_paths(touch_reload)
    return _checked(Declarations(
        backends=_v.backends(backends, seen),
        dispatch_script=_v.dispatch_script() if None in programs else None,
        spool_dir=_v.spool_dir(spool_dir) if None in programs else None,
        deploy=_v.deploy(deploy_touch, deploy_mode),
        mule_init=None if mule_init is None else _v.validate_mule_init(mule_init),
        programs=programs,
        farms=tuple(specs),
        msg_size=None if msg_buffer is None else _v.positive_int(msg_buffer, "msg_buffer"),
        harakiri=None if harakiri_timeout is None else _v.positive_int(harakiri_timeout, "harakiri_timeout"),
        reload_mercy=None if reload_mercy is None else _v.positive_int(reload_mercy, "reload_mercy"),
        touch_reload=paths, schedules=schedules if isinstance(schedules, tuple) else (schedules or ()),
        send_timeout=_v.send_timeout(send_timeout),
        stats=None if stats is None else _v.stats_address(stats),
        on_failure=None if on_failure is None else _v.validate_callable_path(on_failure, "on_failure"),
        results=results_store(results, _v.record_path),
    ))


_ARGUMENTS = {"mule": "mules", "farm": "farms", "touch-mules-reload": "touch_reload or deploy_touch",
              "touch-reload": "deploy_touch", "cache2": "results", "touch-chain-reload": "deploy_touch",
              "stats": "stats",
              "hook-master-start": "stats", "metric": "farms", "env": "the declarations record"}


_RECORD_ARGUMENTS = {key: "this installation's path" if field.attr == "dispatch_script" else field.attr
                     for field in FIELDS if field.codec is not None for key in field.codec.keys}
"""Record key -> the argument its value came from, for the errors of :func:`_checked`."""


def _checked(declarations: Declarations) -> Declarations:
    """``declarations``, once every value it emits is fit for a config line (:func:`value_problem`)
    and every field of its record is free of the record's separator: the one check of what the
    builders write, whichever argument a value came from."""
    from .schedules import check_targets
    from .validate import value_problem

    check_targets(declarations)
    for key, value in declarations.record_fields():
        if ";" in value:
            raise MulesConfigurationError(
                f"{_RECORD_ARGUMENTS.get(key, key)}: {value!r} contains ';', which separates the fields of the "
                "declarations record", culprit=value)
    record = f"{RECORD_ENV}={declarations.record()}"
    if len(record.encode()) > ENV_MAX:
        raise MulesConfigurationError(
            f"the declarations record would be {len(record.encode())} bytes, more than the {ENV_MAX} of an environment "
            "variable that Linux passes on: uWSGI would stop at its first reload (it runs itself again with it, "
            "'execvp(): Argument list too long'); list fewer mules in the farms", culprit=record[:80])
    for option, value in declarations.options():
        problem = value_problem(value)
        if problem:
            raise MulesConfigurationError(
                f"{_ARGUMENTS.get(option, option)}: the value of option '{option}', {value!r}, {problem}",
                culprit=value)
    return declarations
