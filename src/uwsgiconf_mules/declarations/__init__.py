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

import os

from ..errors import MulesConfigurationError
from .backends import Backend, check_shared_queues, parse_backend

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: workers and mules import this module, keep it cheap
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_SEND_TIMEOUT",
    "DISPATCH_MULE",
    "RECORD_ENV",
    "RUNTIME_MODULE",
    "Declarations",
    "FarmSpec",
    "MuleFarm",
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

RECORD_ENV = "UWSGICONF_MULES"
"""Environment variable that carries the declarations record into every uWSGI process."""

CONFIG_ENV = "UWSGICONF_MULES_CONFIG"
"""Environment variable naming the project's configuration module (``uwsgicfg.py``, a path or a
module name, optionally ``:SECTION``), whose declarations the runtime uses outside uWSGI when no
record is set: development servers and tests then refuse undeclared targets as uWSGI does."""

RECORD_VERSION = "v2"

DISPATCH_MULE = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(__file__))), "dispatch_mule.py")
"""The ``mule`` value of a dispatch mule: the path of the script that runs the project's loop.

A path, not ``uwsgiconf_mules.runtime:mule_loop``: uWSGI 2.0.x crashes a ``module:callable``
mule under ``--lazy-apps``. The config therefore names this installation of the package:
compile it where uWSGI runs it (same environment), as ``uwsgiconf run`` does.
"""

RUNTIME_MODULE = "uwsgiconf_mules.runtime"
"""The module the builders import in the uWSGI master (``shared-import``)."""

MULE_MODULE = "uwsgiconf_mules.dispatch_mule"
"""The module the builders import in the uWSGI master too when there are dispatch mules
(``shared-import``): it imports the mule loop, so that a mule forked from the master imports
nothing more (a deploy that replaced the package on disk cannot give a respawned mule a loop of
another version than its runtime). A config compiled by 0.1 names only the runtime: its mules
import the loop when they start."""

MULE_COUNTERS = ("queued", "started", "succeeded", "failed", "spooled", "dead", "run_ms")
"""Counters of a dispatch mule, as uWSGI metrics ``mule.<id>.<counter>`` (programmed mules: ``queued``)."""
MULE_GAUGES = ("queue_bytes", "running_ms", "pid")
"""Gauges of a dispatch mule, as uWSGI metrics ``mule.<id>.<gauge>``."""

SPOOL_GAUGE = "spool.unusable"
"""The gauge that is 1 while the spool cannot keep calls (the senders refuse them), 0 otherwise."""

DEFAULT_SEND_TIMEOUT = 5.0
"""Seconds a sender keeps retrying while a mule queue is full before raising ``DeliveryError``."""

FARM_NAME_MAX = 254  # uWSGI copies the name into a 255-byte buffer (core/mule.c).

_FARM_NAME_FIRST = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")
_FARM_NAME_CHARS = _FARM_NAME_FIRST | frozenset(".-")
_FARM_NAME_RULE = "farm names use letters, digits, '_', '-' and '.', and start with a letter, digit or '_'"
_CHAR_NAMES = {
    ":": "':' (uWSGI separates a farm name from its mule ids with it)",
    ",": "',' (uWSGI separates mule ids with it)",
    "#": "'#' (uWSGI config parsers cut the line there)",
    "%": "'%' (uWSGI expands magic variables there)",
    "'": "a quote",
    '"': "a quote",
}


def _describe_char(char: str) -> str:
    if char in _CHAR_NAMES:
        return _CHAR_NAMES[char]
    if char.isspace():
        return "whitespace"
    return repr(char)


def validate_farm_name(name: object) -> str:
    """Check a farm name and return it.

    :param name: The farm name to check.
    :raises MulesConfigurationError: naming the farm and the character at fault.
    """
    if not isinstance(name, str):
        raise MulesConfigurationError(
            f"farm name {name!r} must be a string, not {type(name).__name__}", culprit=name)
    if not name:
        raise MulesConfigurationError("farm name is empty; " + _FARM_NAME_RULE, culprit=name)
    if len(name.encode()) > FARM_NAME_MAX:
        raise MulesConfigurationError(
            f"farm name {name[:20]!r}... is {len(name.encode())} bytes long; uWSGI keeps at most "
            f"{FARM_NAME_MAX}", culprit=name)
    if name[0] not in _FARM_NAME_FIRST or not _FARM_NAME_CHARS.issuperset(name):
        bad = next((c for c in name if c not in _FARM_NAME_CHARS), name[0])
        raise MulesConfigurationError(
            f"farm name {name!r} contains {_describe_char(bad)}; {_FARM_NAME_RULE}", culprit=name)
    return name


C_INT_MAX = 2**31 - 1
"""uWSGI reads ``mule-msg-size``, ``mule-harakiri`` and ``mule-reload-mercy`` as a C ``int``
(``uwsgi_opt_set_int``: ``atoi``): a larger value wraps (2**40 reads as 0)."""


def _positive_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise MulesConfigurationError(
            f"{what} must be a positive integer, not {value!r}", culprit=value)
    if value < 1:
        raise MulesConfigurationError(f"{what} must be a positive integer, not {value}", culprit=value)
    if value > C_INT_MAX:
        raise MulesConfigurationError(
            f"{what} {value} is more than uWSGI can read ({C_INT_MAX}, a C int; a larger value wraps)",
            culprit=value)
    return value


class MuleFarm:
    """A mule farm declaration, as uwsgiconf's ``section.workers.mule_farm(name, mule_numbers)``.

    The object is never changed by the builders: farms given as a count are numbered when the
    declaration is built, not here.

    :param name: Farm name; letters, digits, ``_``, ``-`` and ``.``.
    :param mule_numbers: How many mules the farm has (an int, or a string of digits as uwsgiconf
        accepts), or the ids of its mules (a list of ints, starting at 1).
    :raises MulesConfigurationError: on an invalid name, a count below 1, or bad ids.
    """

    __slots__ = ("mule_numbers", "name")

    def __init__(self, name: str, mule_numbers: int | str | Sequence[int]) -> None:
        self.name = validate_farm_name(name)
        self.mule_numbers: int | tuple[int, ...] = _farm_mules(name, mule_numbers)

    def __repr__(self) -> str:
        return f"MuleFarm({self.name!r}, {self.mule_numbers!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MuleFarm):
            return NotImplemented
        return (self.name, self.mule_numbers) == (other.name, other.mule_numbers)

    def __hash__(self) -> int:
        return hash((self.name, self.mule_numbers))


def _farm_mules(name: str, mule_numbers: object) -> int | tuple[int, ...]:
    if isinstance(mule_numbers, str) and mule_numbers.strip().isdigit():
        mule_numbers = int(mule_numbers)
    if isinstance(mule_numbers, int) and not isinstance(mule_numbers, bool):
        if mule_numbers < 1:
            raise MulesConfigurationError(
                f"farm {name!r} needs at least 1 mule, got a count of {mule_numbers}", culprit=name)
        return mule_numbers
    if isinstance(mule_numbers, (list, tuple)):
        if not mule_numbers:
            raise MulesConfigurationError(f"farm {name!r} has an empty list of mules", culprit=name)
        ids: list[int] = []
        listed: set[int] = set()
        for item in mule_numbers:
            if isinstance(item, bool) or not isinstance(item, int):
                raise MulesConfigurationError(
                    f"farm {name!r}: mule id {item!r} is not an integer", culprit=name)
            if item < 1:
                raise MulesConfigurationError(
                    f"farm {name!r}: mule id {item} is out of range (mule ids start at 1)", culprit=name)
            if item in listed:
                raise MulesConfigurationError(f"farm {name!r} lists mule {item} twice", culprit=name)
            listed.add(item)
            ids.append(item)
        return tuple(ids)
    raise MulesConfigurationError(
        f"farm {name!r}: mule_numbers must be a count or a list of mule ids, not {mule_numbers!r}",
        culprit=name)


class FarmSpec:
    """A farm as declared: its name and the ids of its mules, in declared order.

    :param name: Farm name.
    :param mules: Mule ids (1-based).
    """

    __slots__ = ("mules", "name")

    def __init__(self, name: str, mules: tuple[int, ...]) -> None:
        self.name = name
        self.mules = mules

    def __repr__(self) -> str:
        return f"FarmSpec({self.name!r}, {self.mules!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FarmSpec):
            return NotImplemented
        return (self.name, self.mules) == (other.name, other.mules)

    def __hash__(self) -> int:
        return hash((self.name, self.mules))

    def option(self) -> str:
        """The value of this farm's uWSGI ``farm`` option, e.g. ``fast:1,2``."""
        return f"{self.name}:{','.join(map(str, self.mules))}"


class Declarations:
    """A validated declaration of mules and farms.

    Build one with :func:`declare` (from builder arguments) or :func:`parse_record` (from the
    record written into the config). Plain slots, no dataclasses: worker and mule processes
    import this module, and it stays cheap to import.

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
    """

    __slots__ = ("_backends_by_name", "_farms_by_name", "backends", "deploy", "dispatch_script", "farms", "harakiri",
                 "msg_size", "mule_init", "on_failure", "programs", "reload_mercy", "send_timeout", "spool_dir",
                 "stats", "touch_reload")
    _FIELDS = ("programs", "farms", "msg_size", "harakiri", "reload_mercy", "touch_reload", "send_timeout",
               "dispatch_script", "spool_dir", "deploy", "mule_init", "backends", "stats", "on_failure")

    def __init__(
        self,
        programs: tuple[str | None, ...] = (),
        *,
        farms: tuple[FarmSpec, ...] = (),
        msg_size: int | None = None,
        harakiri: int | None = None,
        reload_mercy: int | None = None,
        touch_reload: tuple[str, ...] = (),
        send_timeout: float = DEFAULT_SEND_TIMEOUT,
        dispatch_script: str | None = None,
        spool_dir: str | None = None,
        deploy: tuple[str, str] | None = None,
        mule_init: str | None = None,
        backends: tuple[Backend, ...] = (),
        stats: str | None = None,
        on_failure: str | None = None,
    ) -> None:
        self.programs = programs
        self.mule_init = mule_init
        self.backends = backends
        self._backends_by_name = {backend.farm: backend for backend in backends}
        self.stats = stats
        self.on_failure = on_failure
        self.deploy = deploy
        self.dispatch_script = dispatch_script
        self.spool_dir = spool_dir
        self.farms = farms
        self.msg_size = msg_size
        self.harakiri = harakiri
        self.reload_mercy = reload_mercy
        self.touch_reload = touch_reload
        self.send_timeout = send_timeout
        self._farms_by_name = {farm.name: farm for farm in farms}

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self._FIELDS)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Declarations):
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={value!r}" for name, value in zip(self._FIELDS, self._values(), strict=True))
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
        fields = [("mules", str(self.mule_count))]
        if self.programmed:
            fields.append(("programmed", ",".join(map(str, self.programmed))))
        for key, value in (("msg-size", self.msg_size), ("harakiri", self.harakiri),
                           ("reload-mercy", self.reload_mercy)):
            if value is not None:
                fields.append((key, str(value)))
        fields.append(("send-timeout", f"{self.send_timeout:g}"))
        fields.extend(("farm", farm.option()) for farm in self.farms)
        for key, text in (("dispatch", self.dispatch_script), ("spool", self.spool_dir), ("init", self.mule_init),
                          ("stats", self.stats), ("on-failure", self.on_failure)):
            if text is not None:
                fields.append((key, text))
        fields.extend(("route", f"{backend.farm}:{backend.url()}") for backend in self.backends)
        return fields

    def record(self) -> str:
        """The compact single-line record the runtime reads back (see the module docstring)."""
        return ";".join([RECORD_VERSION, *(f"{key}={value}" for key, value in self.record_fields())])


QUEUE_FDS = 4
"""Descriptors the uWSGI master holds for every mule and every farm: the socket pairs of its queue and
of its signals (``uwsgi_setup_mules_and_farms`` in uWSGI's core/mule.c, which sets no limit of its own
on the count). Measured on uWSGI 2.0.31: a master with 4 mules and 2 farms holds 39 descriptors, 16
more with 4 more mules, 16 more with 4 more farms; each mule and worker holds one per mule and about
three per farm (every process inherits them)."""
BASE_FDS = 16
"""The master's other descriptors (standard streams, its pipes, a socket, the log), measured as above."""
FD_CEILING = 2**20
"""The most descriptors one Linux process may have (``fs.nr_open``, 1,048,576 unless the kernel is
tuned, and ``ulimit -n`` cannot go past it): more mules and farms than that leaves uWSGI's master
unable to make their queues."""
MAX_MULES = (FD_CEILING - BASE_FDS) // QUEUE_FDS
"""The most mules (and farms, with them) a uWSGI instance can run; see :data:`FD_CEILING`."""


def master_fds(mules: int, farms: int) -> int:
    """About how many file descriptors the uWSGI master needs for ``mules`` mules and ``farms`` farms.

    :param mules: How many mules.
    :param farms: How many farms (of mules; routed farms spend none).
    """
    return BASE_FDS + QUEUE_FDS * (mules + farms)


def _check_count(mules: int, farms: int, what: str) -> None:
    """Refuse ``mules`` mules and ``farms`` farms when uWSGI could not run them, before any list is made."""
    if mules + farms > MAX_MULES:
        raise MulesConfigurationError(
            f"{what}: {mules} mule(s) and {farms} farm(s) need about {master_fds(mules, farms)} file descriptors "
            f"in the uWSGI master ({QUEUE_FDS} per mule and per farm), more than Linux lets one process have "
            f"({FD_CEILING}): uWSGI cannot run more than {MAX_MULES} mules and farms", culprit=mules)


def _expand_mules(mules: object, farms: int = 0) -> tuple[str | None, ...] | None:
    if mules is None:
        return None
    if isinstance(mules, bool):
        raise MulesConfigurationError(f"mules must be a count or a list, not {mules!r}", culprit=mules)
    if isinstance(mules, int):
        if mules < 0:
            raise MulesConfigurationError(f"mules count must not be negative, got {mules}", culprit=mules)
        _check_count(mules, farms, "mules")
        return (None,) * mules
    if isinstance(mules, str):
        mules = [mules]
    if not isinstance(mules, (list, tuple)):
        raise MulesConfigurationError(
            f"mules must be a count or a list of programmed mules, not {mules!r}", culprit=mules)
    _check_count(len(mules), farms, "mules")
    programs: list[str | None] = []
    for item in mules:
        if item is None:
            programs.append(None)
        elif isinstance(item, str):
            programs.append(_validate_program(item))
        else:
            raise MulesConfigurationError(
                f"mules list item {item!r} is not a programmed mule: use a 'script.py' path or "
                "'package.module:callable', None for a dispatch mule, or pass a count instead "
                "of a list", culprit=item)
    return tuple(programs)


def _validate_program(program: str) -> str:
    text = program.strip()
    if not text:
        raise MulesConfigurationError(
            "programmed mule is empty: use a 'script.py' path or 'package.module:callable' "
            "(None declares a dispatch mule)", culprit=program)
    if any(c in text for c in "\r\n#"):
        raise MulesConfigurationError(
            f"programmed mule {program!r} contains a newline or '#', which uWSGI config parsers cut",
            culprit=program)
    if not (text.endswith(".py") or ":" in text):
        raise MulesConfigurationError(
            f"programmed mule {program!r} is neither a 'script.py' path nor "
            "'package.module:callable'; uWSGI would start it as a mule that drops every message",
            culprit=program)
    return text


def program_problem(program: str, *, absolute: bool = False) -> str | None:
    """Why uWSGI, started in the current directory, would not find the programmed mule ``program``;
    None when it would (or when this cannot be told here).

    A relative ``script.py`` is looked for in the current directory, the one uWSGI runs in (it opens
    the script from there; as :func:`default_spool_dir` assumes, the config is compiled there), and the
    module of ``package.module:callable`` in that directory and on ``sys.path`` (uWSGI puts its working
    directory on its ``sys.path``), without importing it: a build host that compiles the config in the
    project's checkout finds both, and compiling runs no application code. An absolute script path
    names the host uWSGI runs on, which a build host need not have: it is looked for only with
    ``absolute``.

    :param program: ``script.py`` or ``package.module:callable``.
    :param absolute: Whether an absolute script path is looked for too (``uwsgiconf-mules check``).
    """
    if ":" not in program or program.endswith(".py"):
        if os.path.isabs(program) and not absolute:
            return None
        if os.path.isfile(program):
            return None
        where = " on this host" if os.path.isabs(program) else f" in {os.getcwd()}"
        return f"script {program!r} does not exist{where} (uWSGI would respawn the mule for ever)"
    module = program.partition(":")[0]
    if _module_found(module):
        return None
    return (f"module {module!r} is not found in {os.getcwd()} or on sys.path (uWSGI would respawn the mule for "
            "ever); compile the config where its package is importable")


def _module_found(name: str) -> bool:
    """Whether module ``name`` can be imported from the current directory or ``sys.path``, found without
    importing it or its packages."""
    import importlib.machinery
    import importlib.util
    import sys

    parts = name.split(".")
    if not all(part.isidentifier() for part in parts):
        return False
    try:
        spec = importlib.machinery.PathFinder.find_spec(parts[0], [os.getcwd(), *sys.path])
        if spec is None:
            spec = importlib.util.find_spec(parts[0])  # built in, frozen, or found by another finder
        for depth in range(1, len(parts)):
            locations = spec.submodule_search_locations if spec is not None else None
            if not locations:
                return False
            spec = importlib.machinery.PathFinder.find_spec(".".join(parts[:depth + 1]), list(locations))
    except (ImportError, ValueError):
        return False
    return spec is not None


def check_programs(declarations: Declarations) -> None:
    """Refuse programmed mules uWSGI would not find (see :func:`program_problem`), at compile time.

    :param declarations: The declarations to check.
    :raises MulesConfigurationError: naming the mule and what is missing.
    """
    for mule_id in declarations.programmed:
        program = declarations.programs[mule_id - 1] or ""
        problem = program_problem(program)
        if problem:
            raise MulesConfigurationError(f"programmed mule {mule_id}: {problem}", culprit=program)


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
    stats: object = None,
    on_failure: object = None,
    **unsupported: object,
) -> Declarations:
    """Validate builder arguments and return the declaration they describe.

    Arguments mirror uwsgiconf's ``set_mules_params``.

    :param mules: A count of dispatch mules, or a list with one item per mule: a programmed mule
        (``'script.py'`` or ``'package.module:callable'``) or ``None`` for a dispatch mule. When
        not given, the farms decide how many mules there are.
    :param farms: A :class:`MuleFarm` (or uwsgiconf ``MuleFarm``), or a list of them. Farms
        given as a count take consecutive ids from mule 1, one farm after the other. A mule may
        belong to several farms, as uWSGI allows.
    :param touch_reload: Path or paths; touching one reloads the mules.
    :param harakiri_timeout: Seconds a mule task may run before the master kills the mule. The
        dispatch loop applies it to every offloaded call (uWSGI itself applies ``mule-harakiri``
        only to signal handlers).
    :param reload_mercy: Seconds a mule may take to reload or shut down.
    :param msg_buffer: Mule message queue socket buffer (``mule-msg-size``), bytes.
    :param send_timeout: Seconds a sender retries while a queue is full before raising
        :class:`~uwsgiconf_mules.errors.DeliveryError` (default 5).
    :param spool_dir: Directory where calls still queued when uWSGI reloads or stops are kept (and
        calls that could not run); default: :func:`default_spool_dir`.
    :param deploy_touch: A path; touching it makes workers and mules run new code (a deploy).
    :param deploy_mode: ``reload`` (default): a graceful reload of the whole instance, the only
        way for mules to get new code when the app is loaded before the fork; ``chain``: with
        ``--lazy-apps``, a chain reload of the workers and a reload of the mules.
    :param mule_init: ``package.module:function``, called once in every dispatch mule when it
        starts, before it runs any call (see :func:`validate_mule_init`).
    :param backends: Farm name -> backend URL: farms routed to a distributed task engine instead
        of mules (see :mod:`uwsgiconf_mules.declarations.backends`); they spend no mules.
    :param stats: Address of uWSGI's stats server: ``host:port`` on a loopback address, or an
        absolute unix socket path; declares the counters (see :meth:`Declarations.metric_names`).
    :param on_failure: ``package.module:function`` called with every failed offloaded call.
    :param unsupported: Options uWSGI 2.0.x does not know (``msg_buffer_recv``); always rejected.
    :raises MulesConfigurationError: naming what is wrong.
    """
    for key, value in unsupported.items():
        if key in _UNSUPPORTED:
            if value is not None:
                raise MulesConfigurationError(
                    f"{key} is not supported: it emits '{_UNSUPPORTED[key]}', an option uWSGI 2.0.x "
                    "does not know (--strict rejects it); use msg_buffer, which sets both socket "
                    "buffers", culprit=key)
        else:
            raise MulesConfigurationError(f"set_mules_params() got an unknown argument {key!r}", culprit=key)

    farm_list = _farm_list(farms)
    specs: list[FarmSpec] = []
    seen: set[str] = set()
    next_id = 1
    for farm in farm_list:
        name = validate_farm_name(getattr(farm, "name", None))
        if name in seen:
            raise MulesConfigurationError(f"farm {name!r} is declared twice", culprit=name)
        seen.add(name)
        numbers = _farm_mules(name, getattr(farm, "mule_numbers", None))
        if isinstance(numbers, int):
            _check_count(next_id + numbers - 1, len(specs) + 1, f"farm {name!r}")
            ids = tuple(range(next_id, next_id + numbers))
            next_id += numbers
        else:
            ids = numbers
        specs.append(FarmSpec(name, ids))

    needed = max((max(spec.mules) for spec in specs), default=0)
    _check_count(needed, len(specs), "farms")
    programs = _expand_mules(mules, len(specs))
    if programs is None:
        programs = (None,) * needed
    elif len(programs) < needed:
        culprit = max(specs, key=lambda spec: max(spec.mules))
        raise MulesConfigurationError(
            f"mules declares {len(programs)} mule(s) but farm {culprit.name!r} uses mule "
            f"{max(culprit.mules)}; mule ids run from 1 to the number of mules", culprit=culprit.name)

    paths = _touch_paths(touch_reload)
    return _checked(Declarations(
        backends=_backends(backends, seen),
        dispatch_script=_dispatch_script() if None in programs else None,
        spool_dir=_spool_dir(spool_dir) if None in programs else None,
        deploy=_deploy(deploy_touch, deploy_mode),
        mule_init=None if mule_init is None else validate_mule_init(mule_init),
        programs=programs,
        farms=tuple(specs),
        msg_size=None if msg_buffer is None else _positive_int(msg_buffer, "msg_buffer"),
        harakiri=None if harakiri_timeout is None else _positive_int(harakiri_timeout, "harakiri_timeout"),
        reload_mercy=None if reload_mercy is None else _positive_int(reload_mercy, "reload_mercy"),
        touch_reload=paths,
        send_timeout=_send_timeout(send_timeout),
        stats=None if stats is None else _stats_address(stats),
        on_failure=None if on_failure is None else validate_callable_path(on_failure, "on_failure"),
    ))


def _backends(backends: object, farms: set[str]) -> tuple[Backend, ...]:
    if backends is None:
        return ()
    if not isinstance(backends, dict):
        raise MulesConfigurationError(
            f"offload backends must be a mapping of farm name to URL, not {backends!r}", culprit=backends)
    routed = []
    for name, url in backends.items():
        validate_farm_name(name)
        if name in farms:
            raise MulesConfigurationError(
                f"farm {name!r} is declared with mules and routed to an offload backend; a routed farm spends no "
                "mules: remove it from the mule farms", culprit=name)
        routed.append(parse_backend(name, url))
    check_shared_queues(routed)
    return tuple(routed)


def _stats_address(value: object) -> str:
    """A stats server address uWSGI binds and nobody else can reach: loopback or a unix socket."""
    rule = ("stats must be 'host:port' on a loopback address (127.0.0.1:9191, localhost:9191, [::1]:9191) or "
            "an absolute unix socket path")
    if not isinstance(value, str) or not value.strip():
        raise MulesConfigurationError(f"{rule}, not {value!r}", culprit=value)
    if value.startswith("/"):
        path = os.path.normpath(value)
        bad = next((c for c in path if c.isspace() or not c.isprintable() or c == ":"), None)
        if bad is not None:  # uWSGI's chmod hook (see _stats_options) ends the path at a space; uWSGI reads
            # a value with a ':' as host:port (it listened on 255.255.255.255 for /run/0.0.0.0:9191)
            raise MulesConfigurationError(
                f"stats {value!r} contains {_describe_char(bad)}; {rule}", culprit=value)
        return _record_path(path, "stats")
    host, colon, port = value.rpartition(":")
    if not colon or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise MulesConfigurationError(f"{rule}; {value!r} has no valid port", culprit=value)
    if not _loopback(host):
        raise MulesConfigurationError(
            f"{rule}; {host!r} is not loopback (the stats server answers anyone who connects)", culprit=value)
    return value


def _loopback(host: str) -> bool:
    """Whether ``host`` is ``localhost`` or a loopback IP literal (IPv6 in brackets), and nothing more:
    uWSGI binds what it is given, so ``127.evil.example`` or ``127.0.0.1,0.0.0.0`` must not pass."""
    import ipaddress  # at configuration time only (workers and mules do not validate)

    if host == "localhost":
        return True
    try:
        if host.startswith("[") and host.endswith("]") and "%" not in host:
            return ipaddress.IPv6Address(host[1:-1]).is_loopback
        return ipaddress.IPv4Address(host).is_loopback
    except ValueError:
        return False


_ARGUMENTS = {"mule": "mules", "farm": "farms", "touch-mules-reload": "touch_reload or deploy_touch",
              "touch-reload": "deploy_touch", "touch-chain-reload": "deploy_touch", "stats": "stats",
              "hook-master-start": "stats", "metric": "farms", "env": "the declarations record"}
_RECORD_ARGUMENTS = {"farm": "farms", "dispatch": "this installation's path", "spool": "spool_dir",
                     "init": "mule_init", "stats": "stats", "on-failure": "on_failure", "route": "backends"}


def value_problem(value: str) -> str | None:
    """Why ``value`` cannot be the value of a uWSGI option the builders write: a line break, NUL or other
    control character, ``#``, or a ``%`` that no format carries (see :mod:`uwsgiconf_mules.config.formats`);
    None when it can. What only the embedded YAML parser cannot carry at the start of a value (a quote,
    ``[``, as in ``[::1]:9191``) is refused when YAML for it is written.

    :param value: The option's value.
    """
    if not value:
        return "is empty (the embedded YAML parser ends the section at a key without a value)"
    bad = next((c for c in value if not c.isprintable() or c == "#"), None)
    if bad == "#":
        return "contains '#' (uWSGI's embedded YAML parser cuts the line there)"
    if bad is not None:
        kind = "a line break" if bad in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029" else (
            "a NUL character" if bad == "\0" else "a control character")
        return (f"contains {kind} ({bad!r}): no uWSGI config line carries it (it would end the option, and the "
                "rest would be read as more options)")
    at = value.find("%")
    while at != -1:  # uWSGI expands %-variables in the file's text, before any parser reads it
        if at == len(value) - 1:
            return "ends with a lone '%' (uWSGI reads it with the line break after it as a %-variable)"
        if value[at + 1] in '"\\' or not value[at + 1].isascii():
            return f"has '%' before {value[at + 1]!r} (uWSGI's %-variables would cut libyaml's escape of it)"
        at = value.find("%", at + 2)
    return None


ENV_MAX = 131071
"""The longest ``NAME=value`` Linux passes to a program it starts (``MAX_ARG_STRLEN``, 32 pages, less the
NUL). uWSGI reloads by running itself again (``execvp``) with the variables its ``env`` options set: with
a longer record, uWSGI 2.0.31 logs ``execvp(): Argument list too long`` at its first graceful reload and
is gone (seen: 131,071 bytes reload, 131,072 do not)."""


def _checked(declarations: Declarations) -> Declarations:
    """``declarations``, once every value it emits is fit for a config line (:func:`value_problem`)
    and every field of its record is free of the record's separator: the one check of what the
    builders write, whichever argument a value came from."""
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


def validate_callable_path(value: object, what: str) -> str:
    """Check a ``package.module:function`` reference and return it.

    :param value: The reference: a dotted module path and a function name (or a dotted attribute
        path in the module), separated by ``:``.
    :param what: What it is (the keyword argument), for the error message.
    :raises MulesConfigurationError: when it is not ``package.module:function``.
    """
    if not isinstance(value, str):
        raise MulesConfigurationError(
            f"{what} must be a 'package.module:function' string, not {value!r}", culprit=value)
    module, colon, name = value.partition(":")
    if not (colon and all(part.isidentifier() for part in (*module.split("."), *name.split(".")))):
        raise MulesConfigurationError(
            f"{what} must be 'package.module:function' (a dotted module path, ':', a function name in that "
            f"module), not {value!r}", culprit=value)
    return value


def default_spool_dir(section: str = "uwsgi") -> str:
    """The spool directory used when none is declared: under ``/var/tmp`` (kept across reboots,
    unlike ``/tmp``), one per user and per project: the directory the config is compiled in (the
    one uWSGI runs it from) and the section's name.

    :param section: The config section's name.
    """
    import hashlib

    where = f"{os.path.realpath(os.getcwd())}\0{section}".encode()
    return os.path.join("/var/tmp", f"uwsgiconf-mules-{os.getuid()}", hashlib.sha256(where).hexdigest()[:16])


def _record_path(path: str, what: str) -> str:
    bad = next((c for c in path if c in ";#%'\"\r\n"), None)
    if bad is not None:
        raise MulesConfigurationError(
            f"{what} {path!r} contains {_describe_char(bad)}, which the declarations record cannot carry",
            culprit=path)
    return path


def _spool_dir(value: object) -> str:
    if value is None:
        return default_spool_dir()
    if not isinstance(value, str) or not value.strip() or not os.path.isabs(value):
        raise MulesConfigurationError(f"spool_dir must be an absolute path, not {value!r}", culprit=value)
    return _record_path(os.path.normpath(value), "spool_dir")


def validate_mule_init(value: object) -> str:
    """Check a mule start-up hook, ``package.module:function``, and return it.

    :param value: The hook: a dotted module path and a function name (or a dotted attribute path
        in the module), separated by ``:``.
    :raises MulesConfigurationError: naming the hook at fault.
    """
    return validate_callable_path(value, "mule_init")


def _deploy(touch: object, mode: object) -> tuple[str, str] | None:
    if mode not in (None, "reload", "chain"):
        raise MulesConfigurationError(f"deploy_mode must be 'reload' or 'chain', not {mode!r}", culprit=mode)
    if touch is None:
        if mode is not None:
            raise MulesConfigurationError("deploy_mode needs deploy_touch, the file to touch", culprit=mode)
        return None
    return _touch_paths(touch)[0], str(mode or "reload")


def _dispatch_script() -> str:
    """The dispatch mules' script path, checked for what the record cannot carry."""
    return _record_path(DISPATCH_MULE, "this installation's path")


def _farm_list(farms: object) -> list[object]:
    if farms is None:
        return []
    if isinstance(farms, (list, tuple)):
        return list(farms)
    if hasattr(farms, "name") and hasattr(farms, "mule_numbers"):
        return [farms]
    raise MulesConfigurationError(
        f"farms must be a mule_farm(...) or a list of them, not {farms!r}", culprit=farms)


def _touch_paths(touch_reload: object) -> tuple[str, ...]:
    if touch_reload is None:
        return ()
    items: Iterable[object] = [touch_reload] if isinstance(touch_reload, str) else touch_reload  # type: ignore[assignment]
    if not isinstance(items, (list, tuple)):
        raise MulesConfigurationError(
            f"touch_reload must be a path or a list of paths, not {touch_reload!r}", culprit=touch_reload)
    paths = []
    for item in items:
        if not isinstance(item, str) or not item.strip() or any(c in item for c in "\r\n#"):
            raise MulesConfigurationError(
                f"touch_reload path {item!r} must be a non-empty string without newlines or '#'",
                culprit=item)
        paths.append(item.strip())
    return tuple(paths)


def _send_timeout(value: object) -> float:
    if value is None:
        return DEFAULT_SEND_TIMEOUT
    seconds = float("nan")
    if not isinstance(value, bool) and isinstance(value, (int, float)):
        seconds = float(value) if value < 2**53 else float("inf")  # a huge int: float() would raise
    if not 0 < seconds < float("inf"):  # inf: a sender would wait for ever on a full queue, and its request too
        raise MulesConfigurationError(
            f"send_timeout must be a positive number of seconds, and finite, not {value!r}", culprit=value)
    return seconds


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
    count = 0
    programmed: set[int] = set()
    farms: list[FarmSpec] = []
    numbers: dict[str, float] = {}
    dispatch = spool = init = stats = on_failure = None
    backends: list[Backend] = []
    try:
        for item in fields[1:]:
            key, _, value = item.partition("=")
            if key == "mules":
                count = int(value)
            elif key == "programmed":
                programmed = {int(i) for i in value.split(",")}
            elif key == "farm":
                name, _, ids = value.partition(":")
                farms.append(FarmSpec(name, tuple(int(i) for i in ids.split(","))))
            elif key == "dispatch":
                dispatch = value
            elif key == "spool":
                spool = value
            elif key == "route":
                name, _, url = value.partition(":")
                backends.append(parse_backend(name, url))
            elif key == "init":
                init = value
            elif key == "stats":
                stats = value
            elif key == "on-failure":
                on_failure = value
            elif key in ("msg-size", "harakiri", "reload-mercy", "send-timeout"):
                numbers[key] = float(value)
            else:
                raise ValueError(f"unknown field {key!r}")
        check_shared_queues(backends)
    except (ValueError, MulesConfigurationError) as exc:
        raise MulesConfigurationError(f"malformed {RECORD_ENV} record {text!r}: {exc}", culprit=text) from None
    msg_size = numbers.get("msg-size")
    harakiri = numbers.get("harakiri")
    return Declarations(
        programs=tuple("" if i in programmed else None for i in range(1, count + 1)),
        farms=tuple(farms),
        msg_size=None if msg_size is None else int(msg_size),
        harakiri=None if harakiri is None else int(harakiri),
        send_timeout=numbers.get("send-timeout", DEFAULT_SEND_TIMEOUT),
        dispatch_script=dispatch,
        spool_dir=spool,
        mule_init=init,
        reload_mercy=None if "reload-mercy" not in numbers else int(numbers["reload-mercy"]),
        backends=tuple(backends),
        stats=stats,
        on_failure=on_failure,
    )
