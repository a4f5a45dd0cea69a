"""The declaration (:class:`Declarations`) and its record: every field declared once, in :data:`FIELDS`
(attribute, default, how the record carries it), from which the slots, equality, hash, repr, the
record's writer (:meth:`Declarations.record_fields`) and its reader (:func:`parse_record`) derive.

Adding a field: a row in :data:`FIELDS`, its type among the annotations of :class:`Declarations`
(and its ``:param:`` there); for a builder argument, also its check in :mod:`.validate`, the argument
of ``set_mules_params`` (documented there, once) and of :func:`~uwsgiconf_mules.declarations.declare`,
which passes it on.
"""

from __future__ import annotations

from ..errors import MulesConfigurationError
from .backends import Backend, check_shared_queues, parse_backend
from .farms import FarmSpec
from .names import (
    DEFAULT_SEND_TIMEOUT,
    DISPATCH_MULE,
    MULE_COUNTERS,
    MULE_GAUGES,
    MULE_MODULE,
    RECORD_ENV,
    RECORD_VERSION,
    RUNTIME_MODULE,
    SPOOL_GAUGE,
)
from .results import ResultsStore, parse_store

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: workers and mules import this module, keep it cheap
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from .schedules import ScheduleSpec

    Found = dict[str, list[str]]  # record key -> its values, in order


class Codec:
    """How the record carries one field: the keys it writes, its writer (value -> ``(key, text)``
    items, none for a value the record leaves out) and its reader (the values found by key -> value).

    :param keys: The record keys of the field.
    :param write: The writer.
    :param read: The reader.
    """

    __slots__ = ("keys", "read", "write")

    def __init__(self, keys: tuple[str, ...], write: Callable[[Any], list[tuple[str, str]]],
                 read: Callable[[Found], Any]) -> None:
        self.keys, self.write, self.read = keys, write, read


class Field:
    """One field of a declaration.

    :param attr: Its attribute (and the keyword of :class:`Declarations`).
    :param default: Its value when not declared.
    :param codec: How the record carries it; None when the record leaves it out (uWSGI acts on it alone).
    """

    __slots__ = ("attr", "codec", "default")

    def __init__(self, attr: str, default: object, codec: Codec | None) -> None:
        self.attr, self.default, self.codec = attr, default, codec


def _last(found: Found, key: str) -> str | None:
    values = found.get(key)
    return values[-1] if values else None


def _text(key: str) -> Codec:
    """A text written when set."""
    return Codec((key,), lambda value: [] if value is None else [(key, value)], lambda found: _last(found, key))


def _count(key: str) -> Codec:
    """A whole number written when set (read as the record's numbers are: any number, truncated)."""
    def read(found: Found) -> int | None:
        text = _last(found, key)
        return None if text is None else int(float(text))

    return Codec((key,), lambda value: [] if value is None else [(key, str(value))], read)


def _seconds(key: str, default: float) -> Codec:
    """Seconds, always written."""
    def read(found: Found) -> float:
        text = _last(found, key)
        return default if text is None else float(text)

    return Codec((key,), lambda value: [(key, f"{value:g}")], read)


def _parsed(key: str, text: Callable[[Any], str], parse: Callable[[str], Any]) -> Codec:
    """An object written as one text when set, and parsed back."""
    def read(found: Found) -> Any:
        value = _last(found, key)
        return None if value is None else parse(value)

    return Codec((key,), lambda value: [] if value is None else [(key, text(value))], read)


def _each(key: str, text: Callable[[Any], str], parse: Callable[[str], Any]) -> Codec:
    """A tuple of items, one ``key=`` field each, in order."""
    return Codec((key,), lambda items: [(key, text(item)) for item in items],
                 lambda found: tuple(parse(value) for value in found.get(key, ())))


def _write_programs(programs: tuple[str | None, ...]) -> list[tuple[str, str]]:
    programmed = [i for i, program in enumerate(programs, 1) if program is not None]
    fields = [("mules", str(len(programs)))]
    return [*fields, ("programmed", ",".join(map(str, programmed)))] if programmed else fields


def _read_programs(found: Found) -> tuple[str | None, ...]:
    count = int(_last(found, "mules") or 0)
    text = _last(found, "programmed")
    programmed = {int(i) for i in text.split(",")} if text is not None else set()
    return tuple("" if i in programmed else None for i in range(1, count + 1))  # the record carries no programs


def _farm(text: str) -> FarmSpec:
    name, _, ids = text.partition(":")
    return FarmSpec(name, tuple(int(i) for i in ids.split(",")))


def _schedule(text: str) -> ScheduleSpec:
    from .schedules import parse_schedule  # loaded by a record that has schedules only (workers read none)

    return parse_schedule(text)


def _route(text: str) -> Backend:
    name, _, url = text.partition(":")
    return parse_backend(name, url)


FIELDS = (
    Field("programs", (), Codec(("mules", "programmed"), _write_programs, _read_programs)),
    Field("msg_size", None, _count("msg-size")),
    Field("harakiri", None, _count("harakiri")),
    Field("reload_mercy", None, _count("reload-mercy")),
    Field("send_timeout", DEFAULT_SEND_TIMEOUT, _seconds("send-timeout", DEFAULT_SEND_TIMEOUT)),
    Field("farms", (), _each("farm", FarmSpec.option, _farm)),
    Field("dispatch_script", None, _text("dispatch")),
    Field("spool_dir", None, _text("spool")),
    Field("mule_init", None, _text("init")),
    Field("stats", None, _text("stats")),
    Field("on_failure", None, _text("on-failure")),
    Field("results", None, _parsed("results", ResultsStore.record, parse_store)),
    Field("backends", (), _each("route", lambda backend: f"{backend.farm}:{backend.url()}", _route)),
    Field("schedules", (), _each("schedule", lambda spec: spec.record(), _schedule)),
    Field("touch_reload", (), None),
    Field("deploy", None, None),
)
"""Every field of a declaration, in the order the record writes them (then those it leaves out)."""

_ATTRS = tuple(field.attr for field in FIELDS)
_RECORDED = tuple(field for field in FIELDS if field.codec is not None)
_READERS = {key: field for field in _RECORDED if field.codec is not None for key in field.codec.keys}


class Declarations:
    """A validated declaration of mules and farms.

    Build one with :func:`~uwsgiconf_mules.declarations.declare` (from builder arguments) or
    :func:`parse_record` (from the record written into the config). Its fields are declared once,
    in :data:`FIELDS`: slots, equality, hash, repr, :meth:`record_fields` and :func:`parse_record`
    derive from that table. Plain slots, no dataclasses: worker and mule processes import this
    module, and it stays cheap to import.

    :param programs: One item per mule, in id order: ``None`` for a dispatch mule, the script or
        callable for a programmed mule (``""`` when read back from the record, which does not
        carry programs).
    :param farms: Farms in declared order.
    :param msg_size: ``mule-msg-size`` (bytes) or None for uWSGI's default.
    :param harakiri: ``mule-harakiri`` (seconds) or None.
    :param reload_mercy: ``mule-reload-mercy`` (seconds) or None.
    :param touch_reload: ``touch-mules-reload`` paths.
    :param send_timeout: Seconds a sender retries while a queue is full before raising.
    :param dispatch_script: Path of the dispatch mules' entry script the config names (None when
        there are no dispatch mules); senders check that it exists where they run.
    :param spool_dir: Directory of this instance's spool (see :mod:`uwsgiconf_mules.protocol.spool`); None
        when there are no dispatch mules.
    :param deploy: ``(path, mode)``: touching ``path`` makes workers and mules run new code, by a
        graceful reload of the whole instance (``reload``) or a chain reload of the workers and a
        reload of the mules (``chain``, for ``--lazy-apps``); or None.
    :param mule_init: ``package.module:function`` every dispatch mule calls once when it starts,
        before it runs any call; or None.
    :param backends: Farms routed to a distributed task engine instead of mules (see
        :mod:`uwsgiconf_mules.declarations.backends`), in declared order.
    :param stats: Address of uWSGI's stats server (``127.0.0.1:9191``, or an absolute unix socket
        path); when set, the counters of every mule and farm are declared as uWSGI metrics (see
        :mod:`uwsgiconf_mules.runtime.metrics`). None: no counters, and nothing counted.
    :param on_failure: ``package.module:function`` called with every failed offloaded call (see
        :mod:`uwsgiconf_mules.runtime.failures`); or None.
    :param results: The results store of the tasks that declare ``result_ttl`` (see
        :mod:`uwsgiconf_mules.declarations.results`); or None.
    :param schedules: Periodic and cron calls (see :mod:`uwsgiconf_mules.declarations.schedules`),
        in declared order.
    """

    __slots__ = (*_ATTRS, "_backends_by_name", "_farms_by_name")

    # The type of each field of FIELDS (annotations only: no class attribute, the slots hold them).
    programs: tuple[str | None, ...]
    msg_size: int | None
    harakiri: int | None
    reload_mercy: int | None
    send_timeout: float
    farms: tuple[FarmSpec, ...]
    dispatch_script: str | None
    spool_dir: str | None
    mule_init: str | None
    stats: str | None
    on_failure: str | None
    results: ResultsStore | None
    backends: tuple[Backend, ...]
    schedules: tuple[ScheduleSpec, ...]
    touch_reload: tuple[str, ...]
    deploy: tuple[str, str] | None

    def __init__(self, programs: tuple[str | None, ...] = (), **fields: Any) -> None:
        unknown = set(fields) - set(_ATTRS)
        if unknown or "programs" in fields:
            raise TypeError(f"Declarations() got unknown or repeated fields: "
                            f"{', '.join(sorted(unknown)) or 'programs'}")
        self.programs = programs
        for field in FIELDS[1:]:
            setattr(self, field.attr, fields.get(field.attr, field.default))
        self._backends_by_name = {backend.farm: backend for backend in self.backends}
        self._farms_by_name = {farm.name: farm for farm in self.farms}

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, attr) for attr in _ATTRS)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Declarations):
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        fields = ", ".join(f"{attr}={value!r}" for attr, value in zip(_ATTRS, self._values(), strict=True))
        return f"Declarations({fields})"

    @property
    def mule_count(self) -> int:
        """How many mules are declared."""
        return len(self.programs)

    @property
    def programmed(self) -> tuple[int, ...]:
        """Ids of programmed mules (those running the user's own script or callable)."""
        return tuple(i for i, program in enumerate(self.programs, 1) if program is not None)

    @property
    def dispatchers(self) -> tuple[int, ...]:
        """Ids of dispatch mules (those running the project's message loop)."""
        return tuple(i for i, program in enumerate(self.programs, 1) if program is None)

    def get_farm(self, name: str) -> FarmSpec | None:
        """The farm called ``name``, or None.

        :param name: Farm name.
        """
        return self._farms_by_name.get(name)

    def get_backend(self, name: str) -> Backend | None:
        """The backend farm ``name`` is routed to, or None (a farm of mules, or no such farm).

        :param name: Farm name.
        """
        return self._backends_by_name.get(name)

    def farms_of(self, mule_id: int) -> tuple[FarmSpec, ...]:
        """Farms that mule ``mule_id`` belongs to, in declared order.

        :param mule_id: Mule id.
        """
        return tuple(farm for farm in self.farms if mule_id in farm.mules)

    def describe(self) -> str:
        """A one-line summary of what is declared, for error messages."""
        farms = ", ".join(f"{farm.name!r} (mule{'s' if len(farm.mules) > 1 else ''} {', '.join(map(str, farm.mules))})"
                          for farm in self.farms)
        mules = f"mules 1..{self.mule_count}" if self.mule_count > 1 else "mule 1" if self.mule_count else "no mules"
        routed = "".join(f", {backend.farm!r} (routed to {backend.scheme.upper()})" for backend in self.backends)
        return f"{mules}; farms: {(farms + routed).lstrip(', ') or 'none'}"

    def options(self) -> list[tuple[str, str]]:
        """uWSGI options for this declaration, in the order they are emitted."""
        opts = [("mule", DISPATCH_MULE if program is None else program) for program in self.programs]
        opts.extend(("farm", farm.option()) for farm in self.farms)
        for key, value in (
            ("mule-msg-size", self.msg_size),
            ("mule-harakiri", self.harakiri),
            ("mule-reload-mercy", self.reload_mercy),
        ):
            if value is not None:
                opts.append((key, str(value)))
        if self.results is not None:  # the results store: one shared-memory cache of the instance
            opts.append(("cache2", self.results.option()))
        opts.extend(("touch-mules-reload", path) for path in self.touch_reload)
        if self.deploy is not None:
            path, mode = self.deploy
            if mode == "reload":
                opts.append(("touch-reload", path))
            else:
                opts.extend((("touch-chain-reload", path), ("touch-mules-reload", path)))
        # Imported in the master before the fork, in every mode (--lazy-apps too): every process
        # of the instance shares the runtime's token and its already loaded modules.
        opts.append(("shared-import", RUNTIME_MODULE))
        if self.dispatchers:
            opts.append(("shared-import", MULE_MODULE))
            # Dispatch mules handle uWSGI signals in a thread of their own; uWSGI releases the GIL
            # while waiting only with threads enabled (not the default of older releases, 2.0.21 here).
            opts.append(("enable-threads", "true"))
            # Offloaded functions are declared by the app: an app that fails to load (an offloaded
            # function in a --wsgi-file script, a missing module) stops uWSGI at start, loudly,
            # instead of serving "no python application found" with mules nobody can reach.
            opts.append(("need-app", "true"))
        if self.stats is not None:
            opts.extend(self._stats_options())
        opts.append(("env", f"{RECORD_ENV}={self.record()}"))
        return opts

    def metric_names(self) -> list[tuple[str, str]]:
        """The uWSGI metrics that hold the counters, ``(name, type)``, in declared order; empty
        without ``stats``. Names are those of :mod:`uwsgiconf_mules.runtime.metrics`."""
        if self.stats is None:
            return []
        names: list[tuple[str, str]] = []
        dispatchers = set(self.dispatchers)
        for mule_id in range(1, self.mule_count + 1):
            counters = MULE_COUNTERS if mule_id in dispatchers else ("queued",)
            names.extend((f"mule.{mule_id}.{name}", "counter") for name in counters)
            if mule_id in dispatchers:
                names.extend((f"mule.{mule_id}.{name}", "gauge") for name in MULE_GAUGES)
        for farm in self.farms:
            names.append((f"farm.{farm.name}.queued", "counter"))
            names.append((f"farm.{farm.name}.queue_bytes", "gauge"))
        if dispatchers:
            names.append((SPOOL_GAUGE, "gauge"))
        return names

    def _stats_options(self) -> list[tuple[str, str]]:
        opts = [("enable-metrics", "true"), ("stats", str(self.stats))]
        if str(self.stats).startswith("/"):
            # uWSGI makes the socket as the umask (or chmod-socket, meant for the app's socket) says: one
            # anyone may connect to with umask 0 or chmod-socket=666. The master-start hook runs right
            # after the stats server is bound, before any worker or mule starts (seen on uWSGI 2.0.31).
            opts.append(("hook-master-start", f"chmod:{self.stats} 600"))
        if not self.dispatchers:  # the counters are flushed by a thread of each sending process
            opts.append(("enable-threads", "true"))
        opts.extend(("metric", f"name={name},type={kind}") for name, kind in self.metric_names())
        return opts

    def record_fields(self) -> list[tuple[str, str]]:
        """The fields of :meth:`record`, ``(key, value)``, in order (the version first is not one)."""
        return [item for field in _RECORDED if field.codec is not None
                for item in field.codec.write(getattr(self, field.attr))]

    def record(self) -> str:
        """The compact single-line record the runtime reads back (see the package's docstring)."""
        return ";".join([RECORD_VERSION, *(f"{key}={value}" for key, value in self.record_fields())])


def parse_record(text: str) -> Declarations:
    """Read back a record written by :meth:`Declarations.record`.

    :param text: The record (the value of the ``UWSGICONF_MULES`` environment variable).
    :raises MulesConfigurationError: if the record is malformed or from another version.
    """
    fields = text.strip().split(";")
    if fields[0] != RECORD_VERSION:
        raise MulesConfigurationError(
            f"{RECORD_ENV} record version {fields[0]!r} is not {RECORD_VERSION!r}: the config was "
            "compiled by another uwsgiconf-mules version; compile it again", culprit=text)
    found: Found = {}
    try:
        for item in fields[1:]:
            key, _, value = item.partition("=")
            if key not in _READERS:
                raise ValueError(f"unknown field {key!r}")
            found.setdefault(key, []).append(value)
        values = {field.attr: field.codec.read(found) for field in _RECORDED if field.codec is not None}
        check_shared_queues(values["backends"])
    except (ValueError, MulesConfigurationError) as exc:
        raise MulesConfigurationError(f"malformed {RECORD_ENV} record {text!r}: {exc}", culprit=text) from None
    return Declarations(**values)
