"""The uwsgiconf side: sections whose ``workers`` group declares mules and farms.

Switching existing uwsgiconf code over takes one import::

    from uwsgiconf_mules import Section        # was: from uwsgiconf.config import Section
    from uwsgiconf_mules import PythonSection  # was: from uwsgiconf.presets.nice import PythonSection

Both are uwsgiconf's class with :class:`MulesMixin` in front; any other ``Section`` subclass (a
preset of one's own) gets mules the same way::

    class MySection(MulesMixin, MyPresetSection): ...

Everything else (``bootstrap(...)``, the preset's defaults, ``configure_uwsgi``, ``uwsgiconf run``,
uwsgify's ``manage.py uwsgi_run``) is uwsgiconf's own and works unchanged.

``section.workers.set_mules_params(...)`` and ``section.workers.mule_farm(...)`` keep
uwsgiconf's signatures; every declaration is validated (errors are
:class:`~uwsgiconf_mules.errors.MulesConfigurationError`, which ``uwsgiconf compile`` prints as
one line) and emitted together with the record the runtime reads back.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from uwsgiconf.base import Options
from uwsgiconf.config import Section as _BaseSection
from uwsgiconf.options.workers import Workers as _BaseWorkers
from uwsgiconf.presets.nice import PythonSection as _BasePythonSection

from ..declarations import Declarations, MuleFarm, check_programs, declare, default_spool_dir
from . import formats as formats

__all__ = ["MuleFarm", "MulesMixin", "PythonSection", "Section", "Workers"]

# Configuration-time only (workers and mules never import this module): lets
# ``Configuration.format(formatter='yaml')`` render uWSGI YAML.
formats.register()

_DECLARATION_KEYS = ("mule", "mules", "farm", "mule-msg-size", "mule-harakiri", "mule-reload-mercy",
                     "touch-mules-reload")


class Workers(_BaseWorkers):  # type: ignore[misc]
    """uwsgiconf's workers options group, with validated mules and farms."""

    mule_farm = MuleFarm

    def set_mules_params(
        self,
        mules: int | Sequence[str | None] | None = None,
        *,
        touch_reload: str | Sequence[str] | None = None,
        harakiri_timeout: int | None = None,
        farms: MuleFarm | Sequence[MuleFarm] | None = None,
        reload_mercy: int | None = None,
        msg_buffer: int | None = None,
        msg_buffer_recv: int | None = None,
        send_timeout: float | None = None,
        spool_dir: str | None = None,
        deploy_touch: str | None = None,
        deploy_mode: str | None = None,
        mule_init: str | None = None,
        stats: str | None = None,
        on_failure: str | None = None,
        results: bool | dict[str, object] | None = None,
    ) -> MulesMixin:
        """Declare mules and mule farms.

        http://uwsgi.readthedocs.io/en/latest/Mules.html

        Calling it again updates the declaration: arguments given replace the earlier ones,
        the others are kept. Objects passed in are never modified.

        :param mules: A count of dispatch mules (they run offloaded calls), or a list with one
            item per mule: a programmed mule (``'script.py'`` or ``'package.module:callable'``)
            or ``None`` for a dispatch mule. When not given, the farms decide the count.
        :param touch_reload: Path or paths; touching one reloads the mules.
        :param harakiri_timeout: Seconds a mule task may run before the mule is killed and
            respawned; applied to every offloaded call.
        :param farms: ``section.workers.mule_farm(name, mule_numbers)`` or a list of them. Farms
            given as a count take consecutive ids from mule 1, one farm after the other. A mule
            may belong to several farms (uWSGI allows it).
        :param reload_mercy: Seconds a mule may take to reload or shut down (uWSGI default 60).
        :param msg_buffer: Size in bytes of the mule message queue socket buffers
            (``mule-msg-size``); larger buffers queue more messages and allow larger ones.
        :param msg_buffer_recv: Not supported: uWSGI 2.0.x has no ``mule-msg-recv-size``
            option; passing it raises ``MulesConfigurationError``. Use ``msg_buffer``.
        :param send_timeout: Seconds a sender retries while a mule queue is full before raising
            ``DeliveryError`` (default 5).
        :param spool_dir: Absolute path of the directory where calls still queued when uWSGI
            reloads or stops are kept until the next mules run them, and calls that could not
            run are set aside. Default: a directory under ``/var/tmp`` named after the user, the
            directory the config is compiled in and the section.
        :param deploy_touch: A file to touch after a deploy: workers and mules then run the new
            code, and calls queued meanwhile are kept (see ``deploy_mode``).
        :param deploy_mode: ``'reload'`` (default): a graceful reload of the whole instance
            (``touch-reload``), needed when the app is loaded before the fork, since mules are
            forked from the master; ``'chain'``: with ``--lazy-apps``, a chain reload of the
            workers (``touch-chain-reload``) and a reload of the mules (``touch-mules-reload``),
            whose dispatch mules import the tasks afresh.
        :param mule_init: ``'package.module:function'``: every dispatch mule calls it once when it
            starts, before it runs any call (calls kept in the spool included) and before it
            imports any task module; for what the app does at start that mules need under
            ``--lazy-apps`` (which loads the app in workers only). With ``DJANGO_SETTINGS_MODULE``
            set and Django not set up yet (``--lazy-apps``), dispatch mules then call
            ``django.setup()``.
        :param stats: Where uWSGI's stats server listens: ``'127.0.0.1:9191'`` (a loopback
            address) or an absolute unix socket path. Turns the counters on: every mule and farm
            gets its uWSGI metrics (``mule.1.started``, ``farm.fast.queued``, ...; see "Watching
            your mules" in the docs), shown by the stats server, pushed by ``stats-push`` /
            ``carbon``, and read by ``uwsgiconf-mules top``. Without it nothing is counted.
        :param on_failure: ``'package.module:function'``, called in the mule with every
            offloaded call that raised: ``function(key, args, kwargs, exception, mule_id)``.
            An exception it raises is logged, never fatal to the mule.
        :param results: The results store of the tasks that declare ``result_ttl``
            (``@mule_offload('fast', result_ttl=600)``, see "Results" in the docs): ``True`` for
            the defaults, or a mapping of ``items`` (how many results it holds, default 1000),
            ``item_size`` (the largest encoded result in bytes, default 16384; a larger one is
            stored as a ``failed`` outcome saying so), ``store`` (an absolute file path: results
            then survive reloads and restarts) and ``name`` (the uWSGI cache's name, default
            ``uwsgiconf_mules_results``). Emits a ``cache2`` option: shared memory of about
            ``items x item_size`` bytes that every worker and mule reads; when it is full, the
            least recently used result is evicted.
        :raises MulesConfigurationError: naming the farm, mule id or option at fault.
        """
        given = dict(locals())  # the arguments, by name (the first statement: nothing else is local yet)
        del given["self"]
        section: MulesMixin = self._section
        if section._mules_declarations is None and all(value is None for value in given.values()):
            return section  # a preset's own call with nothing to declare (``nice.Section(mules=None)``)
        params = dict(section._mules_params)
        params.update({key: value for key, value in given.items() if value is not None})
        return self._declare(params)

    def set_offload_backends(self, **farms: str) -> MulesMixin:
        """Route farms to a distributed task engine (RQ) instead of mules: offloaded calls to
        such a farm become jobs that the engine's workers run, on this machine or others.

        .. code-block:: python

            section.workers.set_offload_backends(reports='rq://redis.internal:6379/0?queue=reports')

        Application code is unchanged: ``@Farm('reports').offload()`` and
        ``@mule_offload('reports')`` enqueue jobs. A routed farm spends no mules; start its
        workers with ``uwsgiconf-mules worker``. Calling it again replaces the routes given
        before. Credentials never go into the config: the URL names environment variables.

        :param farms: Farm name -> URL, ``rq://HOST[:PORT][/DB][?queue=NAME]`` with optional
            ``serializer=json|pickle`` (default ``json``), ``password_env=VAR``,
            ``connect_timeout=SECONDS``; or ``rq://?url_env=VAR`` where environment variable
            ``VAR`` holds the whole Redis URL, read at run time.
        :raises MulesConfigurationError: naming the farm and the part of the URL at fault.
        """
        params = dict(self._section._mules_params)
        params["backends"] = dict(farms)
        return self._declare(params)

    def schedule(
        self,
        func: str,
        *,
        cron: str | None = None,
        every: timedelta | float | None = None,
        farm: str | None = None,
        mule: int | None = None,
        tz: str | None = None,
        args: Sequence[object] = (),
        kwargs: dict[str, object] | None = None,
        overlap: bool = False,
        missed: str = "skip",
        grace: float = 60.0,
        name: str | None = None,
        host_env: str | None = None,
    ) -> MulesMixin:
        """Call a task periodically, or on a cron expression, in one mule of a farm (or in one mule):
        once per tick for the whole instance, whatever the number of workers and mules, across
        reloads; see "Schedules" in the docs.

        .. code-block:: python

            section.workers.schedule('app.tasks:nightly_report', cron='0 3 * * *', farm='reports')
            section.workers.schedule('app.tasks:poll', every=timedelta(minutes=5), farm='fast')

        Declare the mules and farms first (``set_mules_params``); each call adds one schedule.

        :param func: The task, ``'package.module:function'``: a function decorated with
            ``mule_offload`` (or offloaded with ``Farm(...).offload()``); a mule refuses to run
            anything else, as it refuses a call of an unknown task.
        :param cron: A cron expression of 5 fields (minute hour day-of-month month day-of-week;
            ranges, steps, lists, names such as ``MON`` and ``JAN``), in ``tz``.
        :param every: An interval instead (a ``timedelta`` or seconds, at least 1 s, whole
            milliseconds), aligned to the epoch: ``every=300`` ticks at :00, :05, ... of each hour.
        :param farm: The farm that runs it (a farm of mules, or one routed to RQ: then each tick is
            enqueued once for the whole cluster, see the docs).
        :param mule: Or the id of the dispatch mule that runs it.
        :param tz: An IANA time zone name for ``cron`` (``'Europe/Paris'``, ``'UTC'``); default: the
            server's local time zone (``TZ``, else ``/etc/localtime``) where uWSGI runs.
        :param args: Positional arguments of every call (JSON values: they are kept in the config).
        :param kwargs: Keyword arguments of every call (JSON values).
        :param overlap: ``False`` (default): a tick that comes while the previous run of this
            schedule still runs (or waits to run) is skipped, and counted; ``True`` to run it anyway.
        :param missed: What happens to ticks missed while the instance was down (longer ago than
            ``grace``): ``'skip'`` (default) drops them (counted), ``'once'`` runs the task once for
            all of them.
        :param grace: Seconds a tick may be late and still run as usual (default 60: a reload or a
            restart loses no tick).
        :param name: The schedule's name (default: ``func``); needed to schedule one function twice.
        :param host_env: An environment variable: the schedule fires only in uWSGI instances whose
            environment sets it to ``1``, ``true`` or ``yes`` (one host of several that run the same
            config); default: everywhere.
        :raises MulesConfigurationError: naming the schedule and the argument at fault (a cron
            error names the field).
        """
        from ..declarations.schedules import schedule_spec

        spec = schedule_spec(func, cron=cron, every=every, farm=farm, mule=mule, tz=tz, args=args, kwargs=kwargs,
                             overlap=overlap, missed=missed, grace=grace, name=name, host_env=host_env)
        params = dict(self._section._mules_params)
        existing = params.get("schedules") or ()
        params["schedules"] = (*existing, spec)
        return self._declare(params)

    def _declare(self, params: dict[str, object]) -> MulesMixin:
        section: MulesMixin = self._section
        params.setdefault("spool_dir", default_spool_dir(str(self._section.name)))
        declarations = declare(**params)  # validates before anything is changed

        previous = section._mules_declarations
        section._mules_params = params
        section._mules_declarations = declarations
        self._emit(declarations, previous)
        return section

    def _emit(self, declarations: Declarations, previous: Declarations | None) -> None:
        opts: dict[Any, Any] = self._section._opts
        for key in _DECLARATION_KEYS:
            opts.pop(key, None)
        # Of options others may set too (env, shared-import, touch-reload, ...), remove exactly the
        # values an earlier call emitted.
        section: MulesMixin = self._section
        for key, emitted in previous.options() if previous is not None else ():
            if key in _DECLARATION_KEYS or key not in opts or key in section._mules_foreign:
                continue
            values = opts[key] if isinstance(opts[key], list) else [opts[key]]
            kept = [value for value in values if str(value) != emitted]
            if kept:
                opts[key] = kept
            else:
                opts.pop(key)
        for key, value in declarations.options():
            existing = opts.get(key)
            if existing is not None and not isinstance(existing, list):  # set once by others (a preset's threads)
                if str(existing) == value:
                    section._mules_foreign |= {key}  # theirs: kept when a later declaration drops it
                    continue
                opts[key] = [existing]
            self._set(key, value, multi=True)


class MulesMixin:
    """Put it first in the bases of a uwsgiconf ``Section`` subclass to give it validated mules and
    farms: ``class MySection(MulesMixin, MyPresetSection)``. The section's ``workers`` group is then
    :class:`Workers`; nothing else changes.

    :raises TypeError: at class creation, when a base before it defines ``workers`` (uwsgiconf's
        group would win and the mules would not be validated nor known to the runtime).
    """

    workers: Workers = Options(Workers)
    """Workers options group, with ``set_mules_params`` and ``mule_farm`` for mules and farms."""

    # Replaced (never changed in place) by the first declaration of each section.
    _mules_params: dict[str, object] = {}  # noqa: RUF012
    _mules_declarations: Declarations | None = None
    _mules_foreign: frozenset[str] = frozenset()  # single-valued options others set to what a declaration emits

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        owner = next(klass for klass in cls.__mro__ if "workers" in vars(klass))
        group = vars(owner)["workers"]
        if not (isinstance(group, Options) and issubclass(group.opt_type, Workers)):
            bases = ", ".join(base.__name__ for base in cls.__bases__ if base is not MulesMixin)
            raise TypeError(f"{cls.__name__}: put MulesMixin first in the bases (class {cls.__name__}(MulesMixin, "
                            f"{bases})): {owner.__qualname__}.workers would hide the mules declarations")

    def _get_options(self) -> list[tuple[str, Any]]:
        """The options to write: what every formatter (``uwsgiconf compile``, ``uwsgiconf-mules compile``,
        ``uwsgiconf run``) reads, so the config is checked against the directory it is compiled in here
        (programmed mules uWSGI would not find are refused, see ``program_problem``), and not where the
        runtime only reads the declarations (a test, a development server)."""
        if self._mules_declarations is not None:
            check_programs(self._mules_declarations)
        options: list[tuple[str, Any]] = super()._get_options()  # type: ignore[misc]  # the section after the mixin
        return options

    @property
    def mules_declarations(self) -> Declarations | None:
        """The validated mules and farms declaration, or None if none was made."""
        return self._mules_declarations


class Section(MulesMixin, _BaseSection):  # type: ignore[misc]
    """A uwsgiconf configuration section with validated mules and farms.

    Takes the same arguments as ``uwsgiconf.config.Section``.
    """


class PythonSection(MulesMixin, _BasePythonSection):  # type: ignore[misc]
    """uwsgiconf's preset ``uwsgiconf.presets.nice.PythonSection`` (its defaults, its arguments,
    ``bootstrap(...)``) with validated mules and farms; what uwsgify builds on.

    Takes the same arguments as ``uwsgiconf.presets.nice.PythonSection``; its ``mules=N`` declares
    N dispatch mules.
    """
