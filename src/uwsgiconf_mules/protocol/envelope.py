"""The message envelope of an offloaded call: the one place that writes and reads it.

Layout of a call (bytes)::

    b"\\xfeUCM" | version (1) | token (16) | kind (1) | tag (8) | body | b"\\x00" | task key (UTF-8)

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
  pickled ``(args, kwargs)`` pair. The bodies of ``a`` and ``k`` start with :data:`PAD`; a body
  that is only :data:`PAD` means no arguments. Worker and mule run the same interpreter, so the
  marshal format always matches.
* The *tag* is a 64-bit hash of the task key (:func:`tag`).
* The task key is ``module:qualname`` of the offloaded function, so two functions with the same
  name in two modules never collide. It never contains a NUL byte: the last NUL of a message
  starts it.
* Kind ``d`` wraps plain data sent with ``Mule.send``/``Farm.send`` that happens to start with
  :data:`PREFIX` (see :func:`data`): readers unwrap it, and it is never run.
* Kind ``b`` is a *batch* (:func:`pack`): the rest of the message is a ``marshal``-ed list of whole
  envelopes of calls, token included (marshal version 2 writes it as ``[``, a 4-byte count, then
  each envelope as ``s``, its 4-byte length and its bytes: the mule walks it without decoding
  it); a reader runs each as the call it is (:func:`split`).
* A *probe* (kind ``p``, then random bytes, no key) is what a dispatch mule sends to its own
  queues to find which socket receives them (see :mod:`uwsgiconf_mules.mule.queues`); every mule
  drops probes.

The first :data:`LOOKUP_SIZE` bytes of a call, at a fixed length, name its task (the tag), its
kind and, for ``m``, its number of arguments (the 5 bytes of marshal's tuple header; ``PAD``
for the others): the mule loop looks them up in one step, and runs the call with its body
decoded from where it starts, without searching the message for anything (:func:`heads` gives
a task's heads with the decoder of each, :func:`lookup_ok` which lookups the fast path takes;
a tuple of more than 255 arguments, like every other call, takes the path that reads the key).
The key stays the authority: everything but the fast path reads it, and a task whose tag
another registered task shares is run by key only (see ``_tasks.register``).

Senders build envelopes with :func:`encoder` (headers prepared once per task, the hot path);
mules read them with :func:`heads` (the fast path) or :func:`decode`. The spool keeps calls
without token and tag (:func:`stored`, :func:`restored`): kind, key, NUL, body, the form every
version kept.
"""

from __future__ import annotations

import os
from marshal import dumps as _marshal, loads as _unmarshal
from pickle import dumps as _pickle, loads as _unpickle

from ..errors import PayloadError

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: keep worker imports cheap
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    Encoder = Callable[[tuple[Any, ...], dict[str, Any]], bytes]
    Decoder = Callable[[Any], Any]

MAGIC = b"\xfeUCM"
VERSION = 3
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
BATCH = b"b"
"""Kind byte: the rest of the message is a marshal-ed list of envelopes of calls (see :func:`pack`)."""
BATCH_HEAD = PREFIX + BATCH
"""Start of a batch."""
BATCH_LIST = len(BATCH_HEAD) + 5
"""Where the first call of a batch starts: after the head, marshal's list code and its count."""
BATCH_ITEM = 5
"""Bytes before each envelope of a batch: marshal's bytes code and the length (little-endian)."""
PROBE = PREFIX + b"p"
"""Start of a probe: a message a dispatch mule sends to its own queues and every mule drops."""
PROBE_SIZE = len(PROBE) + 12
"""Length of a probe: :data:`PROBE`, then random bytes."""
CALL_KINDS = (ARGS, MARSHAL, KWARGS)
"""Kind bytes of calls."""
MARSHAL_SAFE = frozenset({int, float, complex, str, bytes, bool, type(None)})
"""Exact argument types sent with marshal (subclasses and buffers such as bytearray are pickled)."""
TAG_SIZE = 8
"""Length of the tag, the hash of the task key that follows the kind byte."""
HEAD_SIZE = len(PREFIX) + 1 + TAG_SIZE
"""Length of the head: prefix, kind and tag."""
PAD = bytes(5)
"""First bytes of the body of a pickled call: as long as marshal's tuple header."""
LOOKUP_SIZE = HEAD_SIZE + len(PAD)
"""Length of what the fast path looks up: the head, and marshal's tuple header or :data:`PAD`."""
PICKLE_PROTOCOL = 5
_join = b"".join
MARSHAL_VERSION = 2
"""The marshal format written: version 3 and later note every object written in a table, to
write repeated ones once, which costs more than the whole tuple of a small call (about 170 ns of
430 to write, 50 ns to read); for :data:`MARSHAL_SAFE` values both give back equal values of the
same types."""

_POSITIONAL: dict[bytes, Decoder] = {ARGS: _unpickle, MARSHAL: _unmarshal}
_COUNTED = frozenset(b"([<>")  # marshal's tuple, list, set and frozenset codes: a 4-byte count follows
_TUPLE = ord("(")
_LIST = ord("[")


def tag(key: bytes) -> bytes:
    """The tag of task ``key``: its 64-bit FNV-1a hash (computed once per task and process:
    nothing to import for it).

    :param key: ``module:qualname`` as bytes.
    """
    value = 0xCBF29CE484222325
    for byte in key:
        value = ((value ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return value.to_bytes(TAG_SIZE, "little")


def task_header(key: str, kind: bytes) -> bytes:
    """What every envelope of kind ``kind`` for the task ``key`` starts with: magic, version,
    token, kind, tag, and :data:`PAD` for pickled calls.

    :param key: ``module:qualname`` of the offloaded function.
    :param kind: :data:`ARGS`, :data:`MARSHAL` or :data:`KWARGS`.
    """
    return _head(kind, tag(key.encode()))


def _head(kind: bytes, key_tag: bytes) -> bytes:
    """Prefix, kind, tag, and :data:`PAD` for pickled calls: what every call of a kind and task starts with."""
    return PREFIX + kind + key_tag + (b"" if kind == MARSHAL else PAD)


def _bounds(message: bytes) -> tuple[bytes, int, int]:
    """(kind, where the body starts, where the NUL before the key is: -1 without one) of an envelope."""
    kind = message[len(PREFIX):len(PREFIX) + 1]
    return kind, HEAD_SIZE if kind == MARSHAL else LOOKUP_SIZE, message.rfind(b"\x00", HEAD_SIZE)


def encoder(key: str) -> Encoder:
    """The envelope builder of one task: ``encode(args, kwargs) -> bytes``.

    Its headers are prepared once, here; a call costs one serialisation and two concatenations.

    :param key: ``module:qualname`` of the offloaded function.
    :raises PayloadError: (from the builder) for arguments that cannot be pickled, naming the task.
    """
    header, header_kw, header_m = task_header(key, ARGS), task_header(key, KWARGS), task_header(key, MARSHAL)
    trailer = b"\x00" + key.encode()
    empty = header + trailer
    safe = MARSHAL_SAFE

    def encode(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
        if not kwargs:
            for arg in args:  # a loop: cheaper than a set of the types for the few arguments of a call
                if type(arg) not in safe:
                    break
            else:
                return _join((header_m, _marshal(args, MARSHAL_VERSION), trailer)) if args else empty
        try:
            return header_kw + _pickle((args, kwargs), PICKLE_PROTOCOL) + trailer if kwargs else \
                header + _pickle(args, PICKLE_PROTOCOL) + trailer
        except Exception as exc:
            raise PayloadError(f"{key}: arguments cannot be pickled: {exc}") from exc

    encode.marshal_parts = (header_m, trailer)  # type: ignore[attr-defined]  # for batches: see marshal_parts()
    return encode


def marshal_parts(encode: Encoder) -> tuple[bytes, bytes]:
    """What an envelope of ``encode`` (from :func:`encoder`) is made of around a marshal-ed body:
    the header, and the trailer (NUL, key); the loop of a batch builds them inline, a call less each.

    :param encode: The encoder of a task.
    """
    return encode.marshal_parts  # type: ignore[attr-defined, no-any-return]


def heads(key: str) -> dict[bytes, tuple[Decoder, int]]:
    """The heads (the first :data:`HEAD_SIZE` bytes of an envelope) of a task's positional
    calls, each with the decoder of its body (it decodes to the tuple of positional arguments,
    and ignores what follows the body) and the offset where the body starts.

    :param key: ``module:qualname`` of the offloaded function.
    """
    headers = {kind: task_header(key, kind) for kind in _POSITIONAL}
    return {header[:HEAD_SIZE]: (_POSITIONAL[kind], len(header)) for kind, header in headers.items()}


def call_size(key: str) -> int:
    """Size of a positional call of task ``key`` without arguments: every positional call of
    the fast path (see :func:`lookup_ok`) is at least this long, and one with arguments longer.

    :param key: ``module:qualname`` of the offloaded function.
    """
    return LOOKUP_SIZE + 1 + len(key.encode())


def lookup_ok(lookup: bytes) -> bool:
    """Whether the fast path runs the calls that start with ``lookup`` (:data:`LOOKUP_SIZE`
    bytes): marshal's tuple header of at most 255 arguments, or :data:`PAD`; a larger count
    (which marshal would allocate before reading an argument) is for :func:`decode`.

    :param lookup: The first :data:`LOOKUP_SIZE` bytes of a call whose head is registered.
    """
    if lookup[len(PREFIX):len(PREFIX) + 1] == MARSHAL:
        return lookup[HEAD_SIZE] == _TUPLE and lookup[HEAD_SIZE + 2:] == b"\x00\x00\x00"
    return lookup[HEAD_SIZE:] == PAD


def kind(message: bytes) -> bytes | None:
    """The kind of an envelope of this instance (:data:`ARGS`, :data:`MARSHAL`, :data:`KWARGS`,
    :data:`DATA` or a probe's), or None for any other message (plain data, foreign bytes, a forgery).

    :param message: A message as read from a queue.
    """
    return message[len(PREFIX):len(PREFIX) + 1] if message.startswith(PREFIX) else None


def is_call(message: bytes) -> bool:
    """Whether ``message`` is an envelope of this instance carrying a call.

    :param message: A message as read from a queue.
    """
    return message.startswith(PREFIX) and message[len(PREFIX):len(PREFIX) + 1] in CALL_KINDS


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
    kind, start, end = _bounds(message)
    if kind not in CALL_KINDS or end < start or (kind != MARSHAL and message[HEAD_SIZE:start] != PAD):
        raise ValueError("damaged envelope")
    key = message[end + 1:]
    if end == start:
        return key, (), {}
    body = memoryview(message)[start:end]
    if kind == MARSHAL and body[0] & 0x7F in _COUNTED and int.from_bytes(body[1:5], "little") > len(body):
        # A container longer than its body (each item takes a byte at least): marshal would
        # allocate it before finding out.
        raise ValueError("damaged envelope")
    if kind == KWARGS:
        args, kwargs = _unpickle(body)
        return key, args, kwargs
    return key, _POSITIONAL[kind](body), {}


def stored(message: bytes) -> bytes:
    """A call as the spool keeps it: kind, key, NUL, body (without token, tag nor :data:`PAD`),
    the form :func:`restored` reads, whichever version wrote it.

    :param message: An envelope that starts with :data:`PREFIX`.
    """
    kind, start, end = _bounds(message)
    if kind == BATCH:  # its calls, each as the spool keeps it
        return _stored_batch(message)
    if end < 0:  # damaged: kept as it is, after the kind
        return kind + b"\x00" + message[HEAD_SIZE:]
    return kind + message[end + 1:] + b"\x00" + message[start:end]


def restored(payload: bytes) -> bytes:
    """The envelope of a call the spool kept (see :func:`stored`), with this instance's token.

    :param payload: Kind, key, NUL, body.
    """
    kind = payload[:1]
    if kind == BATCH:
        return _restored_batch(payload)
    end = payload.find(b"\x00", 1)
    key, body = (payload[1:end], payload[end + 1:]) if end > 0 else (payload[1:], b"")
    return _head(kind, tag(key)) + body + b"\x00" + key


def pack(messages: list[bytes], limit: int) -> list[tuple[bytes, int]]:
    """Calls packed, in order, into as few messages of at most ``limit`` bytes as they fit:
    (message, how many calls it carries). A message of one call is that call's envelope as it is.

    :param messages: Envelopes of calls, each at most ``limit`` bytes.
    :param limit: Largest message the target reads whole.
    """
    packed: list[tuple[bytes, int]] = []
    calls: list[bytes] = []
    room = limit - BATCH_LIST
    size = 0
    for message in messages:
        if size + BATCH_ITEM + len(message) > room and calls:
            packed.append((batch(calls), len(calls)))
            calls, size = [], 0
        calls.append(message)
        size += BATCH_ITEM + len(message)
    if calls:
        packed.append((batch(calls), len(calls)))
    return packed


def batch(calls: list[bytes]) -> bytes:
    """The message of ``calls``: a batch, or the envelope of a single call as it is.

    :param calls: Envelopes of calls.
    """
    return calls[0] if len(calls) == 1 else BATCH_HEAD + _marshal(calls, MARSHAL_VERSION)


def split(message: bytes | memoryview) -> list[bytes]:
    """The envelopes of the calls of a batch.

    :param message: A batch (it starts with :data:`BATCH_HEAD`, so it carries this instance's token),
        or a view of one.
    :raises ValueError: for a damaged batch.
    """
    body = memoryview(message)[len(BATCH_HEAD):]
    if len(body) < 5 or body[0] != _LIST or int.from_bytes(body[1:5], "little") > len(body):
        raise ValueError("damaged batch")
    calls = _unmarshal(body)
    if type(calls) is not list or not all(type(call) is bytes for call in calls):
        raise ValueError("damaged batch")
    return calls


def _stored_batch(message: bytes) -> bytes:
    try:
        calls = split(message)
    except (ValueError, EOFError, TypeError):
        return BATCH + b"\x00" + message[len(BATCH_HEAD):]  # damaged: kept as it is
    return BATCH + b"\x00" + _marshal([stored(call) for call in calls], MARSHAL_VERSION)


def _restored_batch(payload: bytes) -> bytes:
    return BATCH_HEAD + _marshal([restored(call) for call in _unmarshal(payload[2:])], MARSHAL_VERSION)


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
