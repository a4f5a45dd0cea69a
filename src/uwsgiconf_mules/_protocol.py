"""The message envelope of an offloaded call: the one place that writes and reads it.

Layout (bytes)::

    b"\\xfeUCM" | version (1 byte) | token (16 bytes) | kind (1 byte) | task key (UTF-8) | b"\\x00" | body

* The leading ``\\xfe`` byte (never the start of UTF-8 text nor of a pickle) and the ``UCM`` tag
  tell our messages from anybody else's (plain text from ``Mule.send``, uwsgidecorators' pickled
  dicts, ...), which are passed on untouched.
* The version byte lets a mule refuse, with a log line, an envelope from another version.
* The *token* authenticates the sender: 16 random bytes drawn when this module is imported,
  which happens once in the uWSGI master (the builders declare ``shared-import =
  uwsgiconf_mules.runtime``), so every worker and mule of the instance inherits the same token
  in memory, and nothing outside the instance's processes ever sees it: it is in no config
  file, no environment variable and no message that leaves the instance. A message is run as a
  call only when it starts with :data:`PREFIX` (magic, version, token), compared as bytes before
  anything is unpickled; everything else is at most data.
* The kind says how the body encodes the arguments: ``m``, a ``marshal``-ed tuple of positional
  arguments, used only when every argument is exactly an ``int``, ``float``, ``complex``,
  ``str``, ``bytes``, ``bool`` or ``None`` (for those marshal and pickle give back equal values,
  and marshal is faster both ways); ``a``, a pickled tuple of positional arguments; ``k``, a
  pickled ``(args, kwargs)`` pair. An empty body means no arguments. Worker and mule run the
  same interpreter, so the marshal format always matches.
* Kind ``d`` wraps plain data sent with ``Mule.send``/``Farm.send`` that happens to start with
  :data:`PREFIX` (see :func:`data`): readers unwrap it, and it is never run.
* A *probe* (kind ``p``, then random bytes, no key) is what a dispatch mule sends to its own
  queues to find which socket receives them (see :mod:`uwsgiconf_mules._queues`); every mule
  drops probes.
* The task key is ``module:qualname`` of the offloaded function, so two functions with the same
  name in two modules never collide. It never contains a NUL byte, so everything before the first
  NUL -- the *head* -- names both the task and the kind: :func:`heads` gives a task's heads with
  the decoder of each, which the mule loop looks up in one step.

Senders build envelopes with :func:`encoder` (headers prepared once per task, the hot path);
mules read them with :func:`heads` (the fast path) or :func:`decode`.
"""

from __future__ import annotations

import os
from marshal import dumps as _marshal, loads as _unmarshal
from pickle import dumps as _pickle, loads as _unpickle

from .errors import PayloadError

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: keep worker imports cheap
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    Encoder = Callable[[tuple[Any, ...], dict[str, Any]], bytes]
    Decoder = Callable[[Any], Any]

MAGIC = b"\xfeUCM"
VERSION = 2
HEADER = MAGIC + bytes([VERSION])
TOKEN = os.urandom(16)
"""This instance's token: drawn at import, in the uWSGI master (see the module docstring)."""
TOKEN_PID = os.getpid()
"""The process that drew :data:`TOKEN`: under uWSGI, the master, or the token is not shared."""
PREFIX = HEADER + TOKEN
"""Start of every message this instance's runtime sends as a call, a probe or wrapped data."""
ARGS = b"a"
"""Kind byte: the body is a pickled tuple of positional arguments, or empty."""
KWARGS = b"k"
"""Kind byte: the body is a pickled ``(args, kwargs)`` pair."""
MARSHAL = b"m"
"""Kind byte: the body is a marshal-ed tuple of positional arguments of :data:`MARSHAL_SAFE` types."""
DATA = b"d"
"""Kind byte: the rest of the message is plain data, wrapped by :func:`data`."""
PROBE = PREFIX + b"p"
"""Start of a probe: a message a dispatch mule sends to its own queues and every mule drops."""
PROBE_SIZE = len(PROBE) + 12
"""Length of a probe: :data:`PROBE`, then random bytes."""
CALL_KINDS = (ARGS, MARSHAL, KWARGS)
"""Kind bytes of calls."""
MARSHAL_SAFE = frozenset({int, float, complex, str, bytes, bool, type(None)})
"""Exact argument types sent with marshal (subclasses and buffers such as bytearray are pickled)."""
KEY_START = len(PREFIX) + 1
"""Offset of the task key in an envelope."""
PICKLE_PROTOCOL = 5

_POSITIONAL: dict[bytes, Decoder] = {ARGS: _unpickle, MARSHAL: _unmarshal}


def task_header(key: str, kind: bytes) -> bytes:
    """The constant part of every envelope of kind ``kind`` for the task ``key``: tag, version,
    token, kind, key, NUL.

    :param key: ``module:qualname`` of the offloaded function.
    :param kind: :data:`ARGS`, :data:`MARSHAL` or :data:`KWARGS`.
    """
    return PREFIX + kind + key.encode() + b"\x00"


def encoder(key: str) -> Encoder:
    """The envelope builder of one task: ``encode(args, kwargs) -> bytes``.

    Its headers are prepared once, here; a call costs one serialisation and one concatenation.

    :param key: ``module:qualname`` of the offloaded function.
    :raises PayloadError: (from the builder) for arguments that cannot be pickled, naming the task.
    """
    header, header_kw, header_m = task_header(key, ARGS), task_header(key, KWARGS), task_header(key, MARSHAL)
    safe = MARSHAL_SAFE

    def encode(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
        if not kwargs:
            if not args:
                return header
            if safe.issuperset(map(type, args)):
                return header_m + _marshal(args)
        try:
            return header_kw + _pickle((args, kwargs), PICKLE_PROTOCOL) if kwargs else \
                header + _pickle(args, PICKLE_PROTOCOL)
        except Exception as exc:
            raise PayloadError(f"{key}: arguments cannot be pickled: {exc}") from exc

    return encode


def heads(key: str) -> dict[bytes, Decoder]:
    """The heads (envelope up to the first NUL) of a task's positional calls, each with the
    decoder of its body; a body decodes to the tuple of positional arguments.

    :param key: ``module:qualname`` of the offloaded function.
    """
    return {task_header(key, kind)[:-1]: loads for kind, loads in _POSITIONAL.items()}


def data(message: bytes) -> bytes:
    """A plain message as ``Mule.send``/``Farm.send`` send it: unchanged, unless it starts with
    :data:`PREFIX`, when it is wrapped so that no reader can take it for a call.

    :param message: The bytes to deliver.
    """
    return PREFIX + DATA + message if message.startswith(PREFIX) else message


def decode(message: bytes) -> tuple[bytes, tuple[Any, ...], dict[str, Any]]:
    """Split an authenticated envelope (one that starts with :data:`PREFIX`, a call) into
    (task key, args, kwargs).

    :param message: A message that starts with :data:`PREFIX`.
    :raises ValueError: for a damaged envelope or one of another kind.
    :raises Exception: whatever ``pickle`` or ``marshal`` raise for a body they cannot read.
    """
    end = message.find(b"\x00", KEY_START)
    kind = message[KEY_START - 1:KEY_START]
    if end < 0 or kind not in CALL_KINDS:
        raise ValueError("damaged envelope")
    key = message[KEY_START:end]
    if end + 1 == len(message):
        return key, (), {}
    body = memoryview(message)[end + 1:]
    if kind == KWARGS:
        args, kwargs = _unpickle(body)
        return key, args, kwargs
    return key, _POSITIONAL[kind](body), {}


def refusal(message: bytes) -> str | None:
    """Why a message that starts with :data:`MAGIC` but not with :data:`PREFIX` is no call of
    this instance; None for a message that does not claim to be an envelope.

    :param message: A message as received.
    """
    if not message.startswith(MAGIC):
        return None
    if len(message) <= len(MAGIC):
        return "truncated envelope"
    if message[len(MAGIC)] != VERSION:
        return f"envelope of protocol version {message[len(MAGIC)]}, this runtime reads {VERSION}"
    return "not sent by this uWSGI instance (wrong or missing token)"
