"""The message loop of dispatch mules.

The builders declare dispatch mules as ``mule = .../uwsgiconf_mules/dispatch_mule.py``, a
script that calls :func:`mule_loop`. The loop reads the mule's own queue and the queues of its
farms (messages up to the socket limit, beyond uWSGI's 64 KiB hook buffer), directly where
:class:`~uwsgiconf_mules._queues.QueueFinder` found them; handles uWSGI signals while waiting;
runs offloaded calls of this instance under the declared harakiri; refuses, with a log line,
messages that claim to be calls but do not carry this instance's token; and passes other
messages on to ``uwsgi.mule_msg_hook``.
"""

from __future__ import annotations

from . import _instance, _tasks
from ._limits import socket_message_limit
from ._protocol import KEY_START
from ._queues import STREAK, Queues, probe_destinations
from .errors import MulesError, NotInMuleError

_queues: Queues | None = None  # this dispatch mule's queues, once mule_loop() runs


def current_queues() -> Queues | None:
    """The queues of this dispatch mule (which it reads directly, see ``Queues.direct``); None
    before :func:`mule_loop` runs."""
    return _queues


def mule_loop() -> None:
    """Run the message loop of this dispatch mule; never returns.

    :raises NotInMuleError: when not called in a mule.
    """
    global _queues
    uwsgi = _instance.uwsgi
    if uwsgi is None or not uwsgi.mule_id():
        raise NotInMuleError("mule_loop() can only be called in a uWSGI mule")
    mule_id = int(uwsgi.mule_id())
    try:
        declarations = _instance.required_declarations()
    except MulesError as exc:  # the senders raise it too; say it here once
        _tasks.log().error("uwsgiconf-mules: mule %d: %s", mule_id, exc)
        declarations = _instance.declarations()
    harakiri = (declarations.harakiri or 0) if declarations else 0
    # Poll the farm queues only when this mule is in a farm: one less file descriptor per wait.
    farms = bool(declarations.farms_of(mule_id)) if declarations else True
    buffer_size = socket_message_limit(declarations.msg_size if declarations else None)
    queues = _queues = Queues(uwsgi, probe_destinations(declarations, mule_id), farms, buffer_size)
    buffer, view = queues.buffer, queues.view
    find = buffer.find
    current, streak = queues.current, STREAK
    heads = _tasks.HEADS
    receive, pass_on = _tasks.receive, _tasks.pass_on
    fast = not harakiri
    while True:
        try:
            size = current(buffer)  # a queue read directly, into the buffer
        except BlockingIOError:
            waited = queues.wait()
            current, streak = queues.current, STREAK
            if waited is None:
                continue
            size = waited
        else:
            streak -= 1
            if not streak:  # let the other queues have a turn
                current, streak = queues.rotate(), STREAK
        if fast:
            # Fast path, inlined for throughput: a positional-only call of a known task, no
            # harakiri to arm, arguments decoded from the buffer by the decoder the head names
            # (see _protocol.heads), which exist only for authenticated envelopes of registered tasks.
            # Everything else takes receive() below.
            end = find(b"\x00", 0, size)
            entry = heads.get(buffer[:end]) if end > 0 else None
            if entry is not None:
                try:
                    if end + 1 < size:
                        entry[0](*entry[1](view[end + 1:size]))
                    else:
                        entry[0]()
                except Exception:
                    _tasks.failed(buffer[KEY_START:end])
                continue
        rest = receive(buffer[:size], harakiri)
        if rest is not None:
            pass_on(rest)
