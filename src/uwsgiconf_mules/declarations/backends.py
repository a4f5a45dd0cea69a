"""Farms routed to a distributed task engine instead of mules: the declaration, pure data.

``section.workers.set_offload_backends(reports='rq://redis.internal:6379/0?queue=reports')``
routes farm ``reports`` to RQ: ``@Farm('reports').offload()`` and ``@mule_offload('reports')``
then enqueue RQ jobs, and the farm spends no mules. This module validates the URL and writes it
back in one canonical form (the one the declarations record carries); it imports nothing, and
nothing of RQ.

The boundary with an engine is :data:`ENGINES`: a scheme names the private module that owns the
engine (``rq`` -> :mod:`uwsgiconf_mules.contrib.rq.sender`). Such a module provides two functions:

* ``sender(backend, label, timeout)``: the send function of an offloaded function routed
  to ``backend``, called as ``send(envelope, dest)`` like ``uwsgi.mule_msg``; it returns True
  once the engine accepted the call, and raises ``PayloadError`` or ``DeliveryError`` otherwise.
  It imports the engine's client when it is made, and connects on first use, once per process.
* ``worker_command(backends, burst, worker_class)``: the command and environment that start one
  of the engine's workers for these farms (``uwsgiconf-mules worker``).

A second engine (Dramatiq, Celery) adds a scheme here and a module beside ``contrib/rq`` (``contrib/<engine>``).

URL of an RQ backend::

    rq://HOST[:PORT][/DB][?queue=NAME][&serializer=json|pickle][&password_env=VAR][&connect_timeout=S]
    rq://?url_env=VAR[&queue=NAME][&serializer=json|pickle][&connect_timeout=S]

``url_env`` names an environment variable that holds the whole Redis URL (``redis://``,
``rediss://``, ``unix://``), read where the call is sent and where the worker runs; ``password_env``
one that holds the password. Credentials never go into the config. ``queue`` defaults to the
farm's name, ``serializer`` to ``json``, ``connect_timeout`` to 1 s.
"""

from __future__ import annotations

from ..errors import MulesConfigurationError

__all__ = ["CONNECT_TIMEOUT", "ENGINES", "SERIALIZERS", "Backend", "check_shared_queues", "parse_backend"]

ENGINES = {"rq": "uwsgiconf_mules.contrib.rq.sender"}
"""Scheme -> the private module that owns that engine (see the module docstring)."""

SERIALIZERS = ("json", "pickle")
"""How job arguments are encoded: JSON (default, checked strictly at the call site) or pickle."""

CONNECT_TIMEOUT = 1.0
"""Seconds a sender waits for a connection to Redis, unless the URL says ``connect_timeout``."""

DEFAULT_PORT = 6379

_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-")
_NAME_CHARS = _HOST_CHARS | frozenset("_:")
_ENV_FIRST = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")
_ENV_CHARS = _ENV_FIRST | frozenset("0123456789")
_PARAMS = ("queue", "serializer", "password_env", "url_env", "connect_timeout")


class Backend:
    """A farm routed to an engine: where its calls go.

    :param farm: The farm's name.
    :param scheme: The engine (``rq``).
    :param host: Redis host, or None when ``url_env`` names the URL.
    :param port: Redis port.
    :param db: Redis database number.
    :param queue: The engine's queue for this farm.
    :param serializer: ``json`` or ``pickle``.
    :param password_env: Environment variable holding the password, or None.
    :param url_env: Environment variable holding the whole Redis URL, or None.
    :param connect_timeout: Seconds to wait for a connection.
    """

    __slots__ = ("connect_timeout", "db", "farm", "host", "password_env", "port", "queue", "scheme", "serializer",
                 "url_env")

    def __init__(self, farm: str, scheme: str, *, host: str | None, port: int, db: int, queue: str, serializer: str,
                 password_env: str | None, url_env: str | None, connect_timeout: float) -> None:
        self.farm = farm
        self.scheme = scheme
        self.host = host
        self.port = port
        self.db = db
        self.queue = queue
        self.serializer = serializer
        self.password_env = password_env
        self.url_env = url_env
        self.connect_timeout = connect_timeout

    def url(self) -> str:
        """The canonical URL, as the declarations record carries it."""
        where = "" if self.host is None else f"{self.host}:{self.port}/{self.db}"
        params = [f"queue={self.queue}"]
        if self.serializer != "json":
            params.append(f"serializer={self.serializer}")
        for key, value in (("password_env", self.password_env), ("url_env", self.url_env)):
            if value is not None:
                params.append(f"{key}={value}")
        if self.connect_timeout != CONNECT_TIMEOUT:
            params.append(f"connect_timeout={self.connect_timeout:g}")
        return f"{self.scheme}://{where}?{'&'.join(params)}"

    def server(self) -> tuple[str, ...]:
        """The server, as far as the config tells: the variable that holds its URL, or host, port and db."""
        return ("$" + self.url_env,) if self.url_env else (str(self.host), str(self.port), str(self.db))

    def where(self) -> str:
        """Where calls go, for messages: never a credential."""
        server = f"${self.url_env}" if self.url_env else f"{self.host}:{self.port}/{self.db}"
        return f"{self.scheme.upper()} queue {self.queue!r} at {server}"

    def __repr__(self) -> str:
        return f"Backend({self.farm!r}, {self.url()!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Backend):
            return NotImplemented
        return (self.farm, self.url()) == (other.farm, other.url())

    def __hash__(self) -> int:
        return hash((self.farm, self.url()))


def check_shared_queues(backends: tuple[Backend, ...] | list[Backend]) -> None:
    """Refuse farms routed to one queue of one server with different serializers: a worker reads a
    queue with one serializer, and the jobs of the other farm would fail there, never run.

    :param backends: The routed farms of one section.
    :raises MulesConfigurationError: naming both farms, the queue and their serializers.
    """
    seen: dict[tuple[object, ...], Backend] = {}
    for backend in backends:
        first = seen.setdefault((backend.scheme, backend.server(), backend.queue), backend)
        if first.serializer != backend.serializer:
            raise MulesConfigurationError(
                f"farms {first.farm!r} ({first.serializer}) and {backend.farm!r} ({backend.serializer}) are routed to "
                f"the same {backend.where()} with different serializers: a worker reads a queue with one serializer, "
                "and the other farm's jobs would fail there; give them one serializer, or separate queues (queue=)",
                culprit=backend.farm)


def _fail(farm: str, url: object, problem: str) -> MulesConfigurationError:
    return MulesConfigurationError(f"offload backend of farm {farm!r} ({url!r}): {problem}", culprit=farm)


def _env_name(farm: str, url: str, key: str, value: str) -> str:
    if not value or value[0] not in _ENV_FIRST or not _ENV_CHARS.issuperset(value):
        raise _fail(farm, url, f"{key} {value!r} is not an environment variable name (letters, digits, '_')")
    return value


def parse_backend(farm: str, url: object) -> Backend:
    """Validate the backend URL of ``farm`` and return the backend it describes.

    :param farm: The farm's name (already validated).
    :param url: The URL, see the module docstring.
    :raises MulesConfigurationError: naming the farm and the part of the URL at fault.
    """
    if not isinstance(url, str):
        raise _fail(farm, url, f"the URL must be a string, not {type(url).__name__}")
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise _fail(farm, url, "not a URL; write rq://HOST:PORT/DB?queue=NAME")
    if scheme not in ENGINES:
        raise _fail(farm, url, f"unknown scheme {scheme!r}; supported: {', '.join(sorted(ENGINES))}")
    location, _, query = rest.partition("?")
    params: dict[str, str] = {}
    for item in query.split("&") if query else ():
        key, eq, value = item.partition("=")
        if key not in _PARAMS:
            raise _fail(farm, url, f"unknown parameter {key!r}; known: {', '.join(_PARAMS)}")
        if not eq or not value:
            raise _fail(farm, url, f"parameter {key!r} has no value")
        if key in params:
            raise _fail(farm, url, f"parameter {key!r} is given twice")
        params[key] = value
    if "@" in location:
        raise _fail(farm, url, "credentials do not go into the config: name an environment variable with "
                               "password_env=VAR (or url_env=VAR for the whole Redis URL)")
    host, port, db = _location(farm, url, location, params)
    queue = params.get("queue", farm)
    if not _NAME_CHARS.issuperset(queue):
        raise _fail(farm, url, f"queue {queue!r} may use letters, digits, '.', '-', '_' and ':' only")
    serializer = params.get("serializer", "json")
    if serializer not in SERIALIZERS:
        raise _fail(farm, url, f"serializer {serializer!r} is not one of {', '.join(SERIALIZERS)}")
    password_env = params.get("password_env")
    if password_env is not None:
        _env_name(farm, url, "password_env", password_env)
    connect_timeout = CONNECT_TIMEOUT
    if "connect_timeout" in params:
        try:
            connect_timeout = float(params["connect_timeout"])
        except ValueError:
            connect_timeout = -1.0
        if not 0 < connect_timeout < 3600:
            raise _fail(farm, url, f"connect_timeout {params['connect_timeout']!r} is not a positive number of "
                                   "seconds")
    return Backend(farm, scheme, host=host, port=port, db=db, queue=queue, serializer=serializer,
                   password_env=password_env, url_env=params.get("url_env"), connect_timeout=connect_timeout)


def _location(farm: str, url: str, location: str, params: dict[str, str]) -> tuple[str | None, int, int]:
    """(host, port, db) of the URL; no host when ``url_env`` names the whole Redis URL."""
    url_env = params.get("url_env")
    if url_env is not None:
        _env_name(farm, url, "url_env", url_env)
        if location:
            raise _fail(farm, url, "url_env names the whole Redis URL: write rq://?url_env=VAR, without host")
        if "password_env" in params:
            raise _fail(farm, url, "url_env names the whole Redis URL, password included: drop password_env")
        return None, DEFAULT_PORT, 0
    hostport, _, path = location.partition("/")
    host, colon, port_text = hostport.partition(":")
    if not host:
        raise _fail(farm, url, "no host; write rq://HOST:PORT/DB, or rq://?url_env=VAR")
    if not _HOST_CHARS.issuperset(host):
        raise _fail(farm, url, f"host {host!r} may use letters, digits, '.' and '-' only")
    port = DEFAULT_PORT
    if colon:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise _fail(farm, url, f"port {port_text!r} is not a number from 1 to 65535")
        port = int(port_text)
    if path and (not path.isdigit() or int(path) > 65535):
        raise _fail(farm, url, f"database {path!r} is not a number (rq://HOST:PORT/DB)")
    return host, port, int(path or 0)
