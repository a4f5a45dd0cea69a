"""The message envelope of an offloaded call.

Layout (bytes)::

    b"\\x00UCM" | version (1 byte) | task key (UTF-8) | b"\\x00" | pickled (args, kwargs) or nothing

* The leading NUL byte and ``UCM`` tag tell our messages from anybody else's (plain text from
  ``Mule.send``, uwsgidecorators' pickled dicts, ...), which are passed on untouched.
* The version byte lets a mule refuse, with a log line, an envelope from another version.
* The task key is ``module:qualname`` of the offloaded function, so two functions with the same
  name in two modules never collide.
* A call without arguments carries no pickle at all.
"""

from __future__ import annotations

import pickle

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: keep worker imports cheap
if TYPE_CHECKING:
    from typing import Any

__all__ = ["HEADER", "MAGIC", "VERSION", "decode", "encode", "task_header"]

MAGIC = b"\x00UCM"
VERSION = 1
HEADER = MAGIC + bytes([VERSION])
_BODY_START = len(HEADER)
PICKLE_PROTOCOL = 5


def task_header(key: str) -> bytes:
    """The constant part of every envelope for the task ``key``: tag, version, key, separator.

    :param key: ``module:qualname`` of the offloaded function.
    """
    return HEADER + key.encode() + b"\x00"


def encode(header: bytes, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """Build the envelope of one call.

    :param header: :func:`task_header` of the task.
    :param args: Positional arguments of the call.
    :param kwargs: Keyword arguments of the call.
    :raises Exception: whatever ``pickle`` raises for arguments it cannot serialise.
    """
    if not args and not kwargs:
        return header
    return header + pickle.dumps((args, kwargs), PICKLE_PROTOCOL)


def decode(message: bytes) -> tuple[bytes, tuple[Any, ...], dict[str, Any]] | None:
    """Split an envelope into (task key, args, kwargs); None if the message is not an envelope.

    :param message: A message as received by a mule.
    :raises ValueError: for an envelope of another protocol version or a damaged one.
    """
    if not message.startswith(HEADER):
        if message.startswith(MAGIC):
            raise ValueError(f"envelope of protocol version {message[4:5]!r}, this runtime reads {VERSION}")
        return None
    sep = message.find(b"\x00", _BODY_START)
    if sep < 0:
        raise ValueError("damaged envelope: no end of task key")
    key = message[_BODY_START:sep]
    if sep + 1 == len(message):
        return key, (), {}
    args, kwargs = pickle.loads(memoryview(message)[sep + 1:])
    return key, args, kwargs
