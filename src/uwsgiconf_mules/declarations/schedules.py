"""Schedules: periodic and cron calls declared with the mules (``section.workers.schedule(...)``).

A :class:`ScheduleSpec` is validated once at build time (:func:`schedule_spec`) and carried by the
declarations record (one ``schedule=`` field each, :meth:`ScheduleSpec.record`, read back by
:func:`parse_schedule`), so the mules fire exactly what was declared. Its ticks (:func:`next_ticks`,
:func:`ticks_between`) are computed here too, by the build side (``uwsgiconf-mules check``), the
mules (:mod:`uwsgiconf_mules.mule.schedules`) and the test support alike.

Cron expressions are parsed by `cronsim <https://pypi.org/project/cronsim/>`_ (the parser of
Healthchecks: pure Python, no dependency, DST handled the way Debian's cron does it: a time that
does not exist runs at the first minute after the jump, a time that exists twice runs once). It is
imported when a cron schedule is first read: a process that declares none never imports it.
Intervals (``every``) are aligned to the epoch in UTC: ``every=300`` ticks at :00, :05, ... of
every hour, in every process and every generation alike.
"""

from __future__ import annotations

import os

from ..errors import MulesConfigurationError

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: mules import this module, keep it cheap
if TYPE_CHECKING:
    from datetime import tzinfo
    from typing import Any

MISSED = ("skip", "once")
"""What a schedule does with the ticks it missed while no mule could fire them (longer ago than its grace)."""
DEFAULT_GRACE = 60.0
"""Seconds a tick may be late and still run (a reload, a restart): later ticks are *missed*."""
MIN_EVERY = 1.0
"""The shortest interval, in seconds."""
MAX_EVERY = 366 * 86400.0
"""The longest interval, in seconds."""
CATCH_UP = 1000
"""The most ticks one look at a schedule runs (on-time ticks after a long pause are capped)."""
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.:")
_CRON_FIELDS = ("minute", "hour", "day-of-month", "month", "day-of-week")
SEP = "|"
"""Separator of a schedule's parts in its record field."""


class ScheduleSpec:
    """A declared schedule (validated by :func:`schedule_spec`).

    :param name: Its name, unique in the section (default: the function's path).
    :param func: The task it calls, ``package.module:function`` (a function registered by
        ``mule_offload``: the mule refuses any other, as it refuses any call of an unknown task).
    :param target: Where it runs: ``farm:NAME`` or ``mule:N``.
    :param cron: A 5-field cron expression, or None.
    :param every: An interval in seconds (aligned to the epoch), or None.
    :param tz: A time zone name for the cron expression, or None for the server's local time.
    :param args: Positional arguments (JSON values).
    :param kwargs: Keyword arguments (JSON values).
    :param overlap: Whether a tick runs while the previous run of this schedule still runs.
    :param missed: ``skip`` or ``once`` (see :data:`MISSED`).
    :param grace: Seconds a tick may be late and still run.
    :param host_env: An environment variable: the schedule fires only in instances where it is
        set to ``1``, ``true`` or ``yes``; None to fire everywhere.
    """

    __slots__ = ("args", "cron", "every", "func", "grace", "host_env", "kwargs", "missed", "name", "overlap",
                 "target", "tz")

    def __init__(self, name: str, func: str, target: str, *, cron: str | None = None, every: float | None = None,
                 tz: str | None = None, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None,
                 overlap: bool = False, missed: str = "skip", grace: float = DEFAULT_GRACE,
                 host_env: str | None = None) -> None:
        self.name, self.func, self.target, self.cron, self.every, self.tz = name, func, target, cron, every, tz
        self.args, self.kwargs = tuple(args), dict(kwargs or {})
        self.overlap, self.missed, self.grace, self.host_env = overlap, missed, grace, host_env

    def _values(self) -> tuple[object, ...]:
        return (self.name, self.func, self.target, self.cron, self.every, self.tz, self.args,
                tuple(sorted(self.kwargs.items())), self.overlap, self.missed, self.grace, self.host_env)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ScheduleSpec):
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self.record())

    def __repr__(self) -> str:
        when = f"cron={self.cron!r}" if self.cron is not None else f"every={self.every:g}"
        return f"ScheduleSpec({self.name!r}, {self.func!r}, {self.target!r}, {when})"

    @property
    def when(self) -> str:
        """``cron 0 3 * * *`` or ``every 300``: what the record and ``check`` show."""
        return f"cron {self.cron}" if self.cron is not None else f"every {self.every:g}"

    @property
    def file_id(self) -> str:
        """The schedule's number in the names of its calls' files (13 digits, from its name)."""
        import hashlib

        return f"{int.from_bytes(hashlib.blake2b(self.name.encode(), digest_size=5).digest(), 'big'):013d}"

    def enabled(self, environ: Any = None) -> bool:
        """Whether it fires in this process's instance (see ``host_env``).

        :param environ: The environment (default ``os.environ``).
        """
        if self.host_env is None:
            return True
        value = (os.environ if environ is None else environ).get(self.host_env, "")
        return value.strip().lower() in ("1", "true", "yes")

    def record(self) -> str:
        """The record's field: its parts joined by :data:`SEP`."""
        call = ""
        if self.args or self.kwargs:
            import base64
            import json

            text = json.dumps([list(self.args), self.kwargs], separators=(",", ":"), sort_keys=True)
            call = base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")
        return SEP.join([self.name, self.func, self.target, self.when, self.tz or "", "1" if self.overlap else "0",
                         self.missed, f"{self.grace:g}", self.host_env or "", call])


def parse_schedule(text: str) -> ScheduleSpec:
    """Read back :meth:`ScheduleSpec.record`.

    :param text: The record's field.
    :raises ValueError: when it is not one.
    """
    parts = text.split(SEP)
    if len(parts) != 10:
        raise ValueError(f"malformed schedule {text[:80]!r}")
    name, func, target, when, tz, overlap, missed, grace, host_env, call = parts
    kind, _, spec = when.partition(" ")
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = {}
    if call:
        import base64
        import json

        args_list, kwargs = json.loads(base64.urlsafe_b64decode(call + "=" * (-len(call) % 4)))
        args = tuple(args_list)
    if kind not in ("cron", "every") or missed not in MISSED:
        raise ValueError(f"malformed schedule {text[:80]!r}")
    return ScheduleSpec(name, func, target, cron=spec if kind == "cron" else None,
                        every=float(spec) if kind == "every" else None, tz=tz or None, args=args, kwargs=kwargs,
                        overlap=overlap == "1", missed=missed, grace=float(grace), host_env=host_env or None)


def zone(name: str | None) -> tzinfo:
    """The time zone of a schedule: ``name`` (an IANA name), or the server's local time zone
    (``TZ`` when set, else ``/etc/localtime``; UTC when neither says).

    :param name: A zone name, or None.
    :raises ValueError: for an unknown zone.
    """
    from datetime import timezone
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    if name is None:
        name = os.environ.get("TZ", "").lstrip(":") or None
        if name is None or name.startswith("/"):
            path = name or "/etc/localtime"
            try:
                with open(path, "rb") as handle:
                    return ZoneInfo.from_file(handle, key="localtime")
            except (OSError, ValueError):
                return timezone.utc
    if name.upper() == "UTC":
        return timezone.utc
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r}") from exc


def cron_problem(expression: str) -> str | None:
    """Why ``expression`` is not a 5-field cron expression (naming the field at fault), or None.

    :param expression: The expression.
    """
    fields = expression.split()
    if len(fields) != 5 or " ".join(fields) != expression:
        return (f"has {len(fields)} field(s) (or extra spaces): a cron expression has 5, minute hour "
                "day-of-month month day-of-week, separated by one space")
    from datetime import datetime, timezone

    from cronsim import CronSim, CronSimError

    try:
        CronSim(expression, datetime(2000, 1, 1, tzinfo=timezone.utc))
    except CronSimError as exc:
        text = str(exc)
        for index, field in enumerate(_CRON_FIELDS):
            if field in text.lower():
                return f"{text}: field {index + 1} ({field}) {fields[index]!r} is not valid"
        return text
    return None


def _cron_after(spec: ScheduleSpec, after_ns: int, reverse: bool = False) -> Any:
    from datetime import datetime

    from cronsim import CronSim

    when = datetime.fromtimestamp(after_ns / 1e9, zone(spec.tz))
    return CronSim(str(spec.cron), when, reverse=reverse)


def next_ticks(spec: ScheduleSpec, after_ns: int, count: int = 1) -> list[int]:
    """The ``count`` first ticks of ``spec`` strictly after ``after_ns`` (ns since the epoch).

    :param spec: The schedule.
    :param after_ns: A time, in nanoseconds since the epoch.
    :param count: How many.
    """
    if spec.every is not None:
        step = int(spec.every * 1e9)
        first = (after_ns // step + 1) * step
        return [first + i * step for i in range(count)]
    found = []
    for when in _cron_after(spec, after_ns):
        tick = int(when.timestamp()) * 1_000_000_000
        if tick > after_ns:
            found.append(tick)
            if len(found) >= count:
                break
    return found


def last_tick(spec: ScheduleSpec, at_ns: int) -> int | None:
    """The latest tick of ``spec`` at or before ``at_ns``, or None when there is none in a year.

    :param spec: The schedule.
    :param at_ns: A time, in nanoseconds since the epoch.
    """
    if spec.every is not None:
        step = int(spec.every * 1e9)
        return (at_ns // step) * step
    following = next_ticks(spec, at_ns - 1)
    if following and following[0] == at_ns:
        return at_ns
    for when in _cron_after(spec, at_ns, reverse=True):
        return int(when.timestamp()) * 1_000_000_000
    return None


def ticks_between(spec: ScheduleSpec, after_ns: int, until_ns: int, limit: int = CATCH_UP) -> list[int]:
    """The ticks of ``spec`` in ``(after_ns, until_ns]``, at most ``limit`` (the first ones).

    :param spec: The schedule.
    :param after_ns: Start, excluded (ns since the epoch).
    :param until_ns: End, included.
    :param limit: The most ticks returned.
    """
    found: list[int] = []
    if until_ns <= after_ns:
        return found
    if spec.every is not None:
        step = int(spec.every * 1e9)
        first = (after_ns // step + 1) * step
        return list(range(first, until_ns + 1, step))[:limit]
    for when in _cron_after(spec, after_ns):
        tick = int(when.timestamp()) * 1_000_000_000
        if tick <= after_ns:
            continue
        if tick > until_ns or len(found) >= limit:
            break
        found.append(tick)
    return found


def _json_args(name: str, args: object, kwargs: object) -> tuple[tuple[Any, ...], dict[str, Any]]:
    import json

    if not isinstance(args, (tuple, list)):
        raise MulesConfigurationError(f"schedule {name!r}: args must be a tuple or a list, not {args!r}", culprit=args)
    if kwargs is None:
        kwargs = {}
    if not isinstance(kwargs, dict) or not all(isinstance(key, str) and key.isidentifier() for key in kwargs):
        raise MulesConfigurationError(f"schedule {name!r}: kwargs must be a dict with identifiers for keys, not "
                                      f"{kwargs!r}", culprit=kwargs)
    try:
        same = json.loads(json.dumps([list(args), kwargs])) == [list(args), kwargs]
    except (TypeError, ValueError):
        same = False
    if not same:
        raise MulesConfigurationError(
            f"schedule {name!r}: args and kwargs must be JSON values (str, int, float, bool, None, lists and dicts "
            f"with str keys), kept in the config as they are: {args!r}, {kwargs!r}", culprit=name)
    return tuple(args), dict(kwargs)


def _interval(name: str, every: object) -> float:
    from datetime import timedelta

    seconds = every.total_seconds() if isinstance(every, timedelta) else every
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not (
            MIN_EVERY <= seconds <= MAX_EVERY):
        raise MulesConfigurationError(
            f"schedule {name!r}: every must be a timedelta or seconds from {MIN_EVERY:g} to {MAX_EVERY:g}, not "
            f"{every!r}", culprit=every)
    if seconds * 1e9 != int(seconds * 1e9) or seconds * 1000 != int(seconds * 1000):
        raise MulesConfigurationError(f"schedule {name!r}: every must be whole milliseconds, not {every!r}",
                                      culprit=every)
    return float(seconds)


def schedule_spec(func: object, *, cron: object = None, every: object = None, farm: object = None,
                  mule: object = None, tz: object = None, args: object = (), kwargs: object = None,
                  overlap: object = False, missed: object = "skip", grace: object = DEFAULT_GRACE,
                  name: object = None, host_env: object = None) -> ScheduleSpec:
    """Check the arguments of ``section.workers.schedule(...)`` (documented there) and return the
    schedule (its target is checked against the farms and mules by the declaration).

    :raises MulesConfigurationError: naming the schedule and the argument at fault.
    """
    from .validate import validate_callable_path

    func_path = validate_callable_path(func, "schedule function")
    label = name if name is not None else func_path
    if not isinstance(label, str) or not label or len(label) > 100 or not _NAME_CHARS.issuperset(label):
        raise MulesConfigurationError(
            f"schedule name must be 1 to 100 letters, digits, '_', '-', '.' or ':', not {label!r}", culprit=label)
    if (cron is None) == (every is None):
        raise MulesConfigurationError(f"schedule {label!r}: give cron= or every=, one of them", culprit=label)
    if cron is not None:
        problem = cron_problem(cron) if isinstance(cron, str) else "is not a string"
        if problem:
            raise MulesConfigurationError(f"schedule {label!r}: cron {cron!r} {problem}", culprit=cron)
    seconds = None if every is None else _interval(label, every)
    if (farm is None) == (mule is None):
        raise MulesConfigurationError(f"schedule {label!r}: give farm= or mule=, one of them", culprit=label)
    if farm is not None and not isinstance(farm, str):
        raise MulesConfigurationError(f"schedule {label!r}: farm must be a farm's name, not {farm!r}", culprit=farm)
    if mule is not None and (isinstance(mule, bool) or not isinstance(mule, int) or mule < 1):
        raise MulesConfigurationError(f"schedule {label!r}: mule must be a mule id (1, 2, ...), not {mule!r}",
                                      culprit=mule)
    if tz is not None:
        if not isinstance(tz, str) or SEP in tz:
            raise MulesConfigurationError(f"schedule {label!r}: tz must be a time zone name, not {tz!r}", culprit=tz)
        try:
            zone(tz)
        except ValueError as exc:
            raise MulesConfigurationError(f"schedule {label!r}: tz: {exc}", culprit=tz) from None
    if cron is None and tz is not None:
        raise MulesConfigurationError(f"schedule {label!r}: tz applies to cron expressions only (every= ticks "
                                      "are aligned to the epoch)", culprit=tz)
    call_args, call_kwargs = _json_args(label, args, kwargs)
    if not isinstance(overlap, bool):
        raise MulesConfigurationError(f"schedule {label!r}: overlap must be True or False, not {overlap!r}",
                                      culprit=overlap)
    if missed not in MISSED:
        raise MulesConfigurationError(f"schedule {label!r}: missed must be one of {', '.join(MISSED)}, not "
                                      f"{missed!r}", culprit=missed)
    if isinstance(grace, bool) or not isinstance(grace, (int, float)) or not 0 < grace <= MAX_EVERY:
        raise MulesConfigurationError(f"schedule {label!r}: grace must be seconds, more than 0, not {grace!r}",
                                      culprit=grace)
    if host_env is not None and (not isinstance(host_env, str) or not host_env.isidentifier()):
        raise MulesConfigurationError(f"schedule {label!r}: host_env must be an environment variable's name, not "
                                      f"{host_env!r}", culprit=host_env)
    target = f"farm:{farm}" if farm is not None else f"mule:{mule}"
    return ScheduleSpec(label, func_path, target, cron=None if cron is None else str(cron),
                        every=seconds, tz=tz, args=call_args, kwargs=call_kwargs, overlap=overlap,
                        missed=str(missed), grace=float(grace), host_env=host_env)


def check_targets(declarations: Any) -> None:
    """Check that the schedules of ``declarations`` have unique names and targets that exist.

    :param declarations: The declarations (a ``Declarations``), with what ``section.workers.schedule``
        collected as its ``schedules``.
    :raises MulesConfigurationError: naming the schedule and its target.
    """
    schedules = declarations.schedules
    if not all(isinstance(item, ScheduleSpec) for item in schedules):
        raise MulesConfigurationError("schedules are declared with section.workers.schedule(...)", culprit=schedules)
    farms = {farm.name: farm.mules for farm in declarations.farms}
    routed = {backend.farm for backend in declarations.backends}
    dispatchers = declarations.dispatchers
    names: dict[str, str] = {}
    for spec in schedules:
        if spec.name in names or spec.file_id in names.values():
            raise MulesConfigurationError(
                f"schedule {spec.name!r} is declared twice: give each schedule of one function its own name= "
                "(a second schedule of the same function replaces nothing)", culprit=spec.name)
        names[spec.name] = spec.file_id
        kind, _, target = spec.target.partition(":")
        problem = None
        if kind == "mule":
            if int(target) not in dispatchers:
                problem = (f"mule {target} is not a dispatch mule of this section (dispatch mules: "
                           f"{', '.join(map(str, dispatchers)) or 'none'})")
        elif target in routed:
            if not dispatchers:
                problem = (f"farm {target!r} is routed to an offload backend, and its ticks are enqueued by a "
                           "dispatch mule: declare at least one")
        elif target not in farms:
            problem = f"farm {target!r} is not declared (farms: {', '.join(sorted([*farms, *routed])) or 'none'})"
        elif not set(farms[target]) & set(dispatchers):
            problem = f"farm {target!r} has programmed mules only, which run no offloaded call"
        if problem is not None:
            raise MulesConfigurationError(f"schedule {spec.name!r}: {problem}", culprit=spec.name)


def describe(spec: ScheduleSpec, now_ns: int, count: int = 3) -> str:
    """One line on ``spec`` for ``uwsgiconf-mules check``: what, where, when, and its next runs.

    :param spec: The schedule.
    :param now_ns: Now (ns since the epoch).
    :param count: How many next runs.
    """
    import datetime

    where = spec.target.replace(":", " ", 1)
    tz = zone(spec.tz)
    when = f"{spec.when} ({spec.tz or 'local time'})" if spec.cron is not None else f"{spec.when} s"
    following = ", ".join(datetime.datetime.fromtimestamp(tick / 1e9, tz).strftime("%Y-%m-%d %H:%M:%S %Z")
                          for tick in next_ticks(spec, now_ns, count))
    extra = "; overlap allowed" if spec.overlap else ""
    host = f"; only where {spec.host_env}=1" if spec.host_env else ""
    return (f"schedule {spec.name}: {spec.func} on {where}, {when}; next: {following}; missed: {spec.missed} "
            f"(grace {spec.grace:g} s){extra}{host}")
