"""Validation of the builders' arguments, one function per argument, for :func:`~uwsgiconf_mules.declarations.declare`:
each returns the value a declaration holds, or raises ``MulesConfigurationError`` naming what is at fault."""

from __future__ import annotations

import os

from ..errors import MulesConfigurationError
from .backends import Backend, check_shared_queues, parse_backend
from .farms import FarmSpec, describe_char, farm_mules, validate_farm_name
from .names import C_INT_MAX, DEFAULT_SEND_TIMEOUT, DISPATCH_MULE, FD_CEILING, MAX_MULES, QUEUE_FDS, master_fds

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: keep it cheap
if TYPE_CHECKING:
    from collections.abc import Iterable

    from .model import Declarations


def positive_int(value: object, what: str) -> int:
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


def check_count(mules: int, farms: int, what: str) -> None:
    """Refuse ``mules`` mules and ``farms`` farms when uWSGI could not run them, before any list is made."""
    if mules + farms > MAX_MULES:
        raise MulesConfigurationError(
            f"{what}: {mules} mule(s) and {farms} farm(s) need about {master_fds(mules, farms)} file descriptors "
            f"in the uWSGI master ({QUEUE_FDS} per mule and per farm), more than Linux lets one process have "
            f"({FD_CEILING}): uWSGI cannot run more than {MAX_MULES} mules and farms", culprit=mules)


def expand_mules(mules: object, farms: int = 0) -> tuple[str | None, ...] | None:
    if mules is None:
        return None
    if isinstance(mules, bool):
        raise MulesConfigurationError(f"mules must be a count or a list, not {mules!r}", culprit=mules)
    if isinstance(mules, int):
        if mules < 0:
            raise MulesConfigurationError(f"mules count must not be negative, got {mules}", culprit=mules)
        check_count(mules, farms, "mules")
        return (None,) * mules
    if isinstance(mules, str):
        mules = [mules]
    if not isinstance(mules, (list, tuple)):
        raise MulesConfigurationError(
            f"mules must be a count or a list of programmed mules, not {mules!r}", culprit=mules)
    check_count(len(mules), farms, "mules")
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


def backends(backends: object, farms: set[str]) -> tuple[Backend, ...]:
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


def stats_address(value: object) -> str:
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
                f"stats {value!r} contains {describe_char(bad)}; {rule}", culprit=value)
        return record_path(path, "stats")
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


def record_path(path: str, what: str) -> str:
    bad = next((c for c in path if c in ";#%'\"\r\n"), None)
    if bad is not None:
        raise MulesConfigurationError(
            f"{what} {path!r} contains {describe_char(bad)}, which the declarations record cannot carry",
            culprit=path)
    return path


def spool_dir(value: object) -> str:
    if value is None:
        return default_spool_dir()
    if not isinstance(value, str) or not value.strip() or not os.path.isabs(value):
        raise MulesConfigurationError(f"spool_dir must be an absolute path, not {value!r}", culprit=value)
    return record_path(os.path.normpath(value), "spool_dir")


def validate_mule_init(value: object) -> str:
    """Check a mule start-up hook, ``package.module:function``, and return it.

    :param value: The hook: a dotted module path and a function name (or a dotted attribute path
        in the module), separated by ``:``.
    :raises MulesConfigurationError: naming the hook at fault.
    """
    return validate_callable_path(value, "mule_init")


def deploy(touch: object, mode: object) -> tuple[str, str] | None:
    if mode not in (None, "reload", "chain"):
        raise MulesConfigurationError(f"deploy_mode must be 'reload' or 'chain', not {mode!r}", culprit=mode)
    if touch is None:
        if mode is not None:
            raise MulesConfigurationError("deploy_mode needs deploy_touch, the file to touch", culprit=mode)
        return None
    return touch_paths(touch)[0], str(mode or "reload")


def dispatch_script() -> str:
    """The dispatch mules' script path, checked for what the record cannot carry."""
    return record_path(DISPATCH_MULE, "this installation's path")


def farm_list(farms: object) -> list[object]:
    if farms is None:
        return []
    if isinstance(farms, (list, tuple)):
        return list(farms)
    if hasattr(farms, "name") and hasattr(farms, "mule_numbers"):
        return [farms]
    raise MulesConfigurationError(
        f"farms must be a mule_farm(...) or a list of them, not {farms!r}", culprit=farms)


def touch_paths(touch_reload: object) -> tuple[str, ...]:
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


def send_timeout(value: object) -> float:
    if value is None:
        return DEFAULT_SEND_TIMEOUT
    seconds = float("nan")
    if not isinstance(value, bool) and isinstance(value, (int, float)):
        seconds = float(value) if value < 2**53 else float("inf")  # a huge int: float() would raise
    if not 0 < seconds < float("inf"):  # inf: a sender would wait for ever on a full queue, and its request too
        raise MulesConfigurationError(
            f"send_timeout must be a positive number of seconds, and finite, not {value!r}", culprit=value)
    return seconds


def farm_specs(farms: object) -> list[FarmSpec]:
    """The farms as declared: each named once, its mules numbered (farms given as a count take
    consecutive ids from mule 1, one farm after the other).

    :param farms: A ``MuleFarm`` (or uwsgiconf's), or a list of them.
    """
    specs: list[FarmSpec] = []
    seen: set[str] = set()
    next_id = 1
    for farm in farm_list(farms):
        name = validate_farm_name(getattr(farm, "name", None))
        if name in seen:
            raise MulesConfigurationError(f"farm {name!r} is declared twice", culprit=name)
        seen.add(name)
        numbers = farm_mules(name, getattr(farm, "mule_numbers", None))
        if isinstance(numbers, int):
            check_count(next_id + numbers - 1, len(specs) + 1, f"farm {name!r}")
            ids = tuple(range(next_id, next_id + numbers))
            next_id += numbers
        else:
            ids = numbers
        specs.append(FarmSpec(name, ids))
    return specs
