"""The message envelope of an offloaded call.

Layout (bytes)::

    b"\\xfeUCM" | version (1 byte) | kind (1 byte) | task key (UTF-8) | b"\\x00" | body

* The leading ``\\xfe`` byte (never the start of UTF-8 text nor of a pickle) and the ``UCM`` tag
  tell our messages from anybody else's (plain text from ``Mule.send``, uwsgidecorators' pickled
  dicts, ...), which are passed on untouched.
* The version byte lets a mule refuse, with a log line, an envelope from another version.
* The kind says how the body encodes the arguments: ``m``, a ``marshal``-ed tuple of positional
  arguments, used only when every argument is exactly an ``int``, ``float``, ``complex``,
  ``str``, ``bytes``, ``bool`` or ``None`` (for those marshal and pickle give back equal values,
  and marshal is faster both ways); ``a``, a pickled tuple of positional arguments; ``k``, a
  pickled ``(args, kwargs)`` pair. An empty body means no arguments. Worker and mule run the
  same interpreter, so the marshal format always matches.
* A *probe* (kind ``p``, then random bytes, no key) is what a dispatch mule sends to its own
  queues to find which socket receives them (see ``mule_loop``); every mule drops probes.
* The task key is ``module:qualname`` of the offloaded function, so two functions with the same
  name in two modules never collide. It never contains a NUL byte, so everything before the first
  NUL -- the *head* -- identifies the task and the kind in one lookup (see ``mule_loop``).
"""

from __future__ import annotations

import marshal
import pickle

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: keep worker imports cheap
if TYPE_CHECKING:
    from typing import Any

__all__ = ["ARGS", "HEADER", "KEY_START", "KWARGS", "MAGIC", "MARSHAL", "MARSHAL_SAFE", "PICKLE_PROTOCOL",
           "PROBE", "VERSION", "decode", "encode", "task_header"]

MAGIC = b"\xfeUCM"
VERSION = 1
HEADER = MAGIC + bytes([VERSION])
ARGS = b"a"
"""Kind byte: the body is a pickled tuple of positional arguments, or empty."""
KWARGS = b"k"
"""Kind byte: the body is a pickled ``(args, kwargs)`` pair."""
MARSHAL = b"m"
"""Kind byte: the body is a marshal-ed tuple of positional arguments of :data:`MARSHAL_SAFE` types."""
PROBE = HEADER + b"p"
"""Start of a probe: a message a dispatch mule sends to its own queues and every mule drops."""
MARSHAL_SAFE = frozenset({int, float, complex, str, bytes, bool, type(None)})
"""Exact argument types sent with marshal (subclasses and buffers such as bytearray are pickled)."""
_LOADS = {ARGS: pickle.loads, MARSHAL: marshal.loads}
KEY_START = len(HEADER) + 1
PICKLE_PROTOCOL = 5


def task_header(key: str, kind: bytes = ARGS) -> bytes:
    """The constant part of every envelope for the task ``key``: tag, version, kind, key, NUL.

    :param key: ``module:qualname`` of the offloaded function.
    :param kind: :data:`ARGS`, :data:`MARSHAL` or :data:`KWARGS`.
    """
    return HEADER + kind + key.encode() + b"\x00"


def encode(key: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """Build the envelope of one call.

    :param key: ``module:qualname`` of the offloaded function.
    :param args: Positional arguments of the call.
    :param kwargs: Keyword arguments of the call.
    :raises Exception: whatever ``pickle`` raises for arguments it cannot serialise.
    """
    if kwargs:
        return task_header(key, KWARGS) + pickle.dumps((args, kwargs), PICKLE_PROTOCOL)
    if not args:
        return task_header(key)
    if MARSHAL_SAFE.issuperset(map(type, args)):
        return task_header(key, MARSHAL) + marshal.dumps(args)
    return task_header(key) + pickle.dumps(args, PICKLE_PROTOCOL)


def decode(message: bytes) -> tuple[bytes, tuple[Any, ...], dict[str, Any]] | None:
    """Split an envelope into (task key, args, kwargs); None if the message is not an envelope.

    :param message: A message as received by a mule.
    :raises ValueError: for an envelope of another protocol version or a damaged one.
    """
    if not message.startswith(HEADER):
        if message.startswith(MAGIC):
            raise ValueError(f"envelope of protocol version {message[4:5]!r}, this runtime reads {VERSION}")
        return None
    end = message.find(b"\x00", KEY_START)
    kind = message[KEY_START - 1:KEY_START]
    if end < 0 or kind not in (ARGS, MARSHAL, KWARGS):
        raise ValueError("damaged envelope")
    key = message[KEY_START:end]
    if end + 1 == len(message):
        return key, (), {}
    if kind == KWARGS:
        args, kwargs = pickle.loads(memoryview(message)[end + 1:])
        return key, args, kwargs
    return key, _LOADS[kind](message[end + 1:]), {}
