"""How large a message a mule queue carries on this machine.

uWSGI's mule and farm queues are AF_UNIX SEQPACKET socket pairs. Linux refuses a message larger
than the sending socket's buffer minus 32 bytes, so the limit follows from the buffer size:
``wmem_default`` by default, or, with ``mule-msg-size`` (uWSGI's ``SO_SNDBUF``), twice the
requested size (the kernel doubles it) capped at twice ``wmem_max`` and never below the kernel's
floor. Used by the runtime (size checks at the call site) and by ``uwsgiconf-mules check``;
this module imports nothing of the runtime, so the configuration side can use it alone.

Also which sockets a process inherited (:func:`packet_sockets`): uWSGI's queues are among them.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: workers and mules import this module, keep it cheap
if TYPE_CHECKING:
    from typing import Any

PROGRAMMED_READ_LIMIT = 65536
"""Largest message a programmed mule reads whole: ``get_message``'s default buffer, and the fixed
buffer uWSGI's own mule loop reads into (``core/mule.c``)."""

SOCK_MIN_SNDBUF = 4608
"""The kernel's floor for ``SO_SNDBUF``: ``SOCK_MIN_SNDBUF`` in ``include/net/sock.h``, twice
(2,048 bytes + an aligned ``struct sk_buff``), 4,608 bytes on x86-64. A smaller ``mule-msg-size``
still gets this buffer."""

SEQPACKET_OVERHEAD = 32
"""Linux refuses an AF_UNIX datagram larger than the send buffer minus this many bytes."""

DATAGRAM_CEILING = 4 * 1024 * 1024
"""Largest message counted on whatever the buffer: Linux allocates an AF_UNIX datagram in one
piece, and refuses one much above 4 MiB with ENOBUFS (4,263,616 bytes went through on Linux 6.18,
more did not), which uWSGI reports as a failed send."""

_limits: dict[int | None, int] = {}  # mule-msg-size -> limit, read once per process


def _sysctl(name: str) -> int | None:
    try:
        with open(f"/proc/sys/net/core/{name}") as handle:
            return int(handle.read())
    except (OSError, ValueError):
        return None


def socket_message_limit(msg_size: int | None) -> int:
    """Largest message a mule queue accepts on this machine, in bytes.

    Where ``/proc`` does not tell, the limit is the 64 KiB a programmed mule reads by default.

    :param msg_size: The declared ``mule-msg-size``, or None when not declared.
    """
    if msg_size not in _limits:
        if msg_size:
            wmem_max = _sysctl("wmem_max")
            sndbuf = None if wmem_max is None else max(2 * min(msg_size, wmem_max), SOCK_MIN_SNDBUF)
        else:
            sndbuf = _sysctl("wmem_default")
        limit = PROGRAMMED_READ_LIMIT if sndbuf is None else sndbuf - SEQPACKET_OVERHEAD
        _limits[msg_size] = min(limit, DATAGRAM_CEILING)
    return _limits[msg_size]


def clear_cache() -> None:
    """Forget the limits read so far (tests change ``/proc`` readings through ``_sysctl``)."""
    _limits.clear()


def packet_sockets() -> list[Any]:
    """Duplicates of this process's AF_UNIX packet sockets; uWSGI's mule and farm queues are among
    them (every uWSGI process inherits all of them). Empty where ``/proc/self/fd`` cannot be read.
    """
    import _socket  # the C module only: ``socket`` imports selectors, enum and more
    import os
    import stat

    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except (OSError, ValueError):
        return []
    found = []
    for fd in fds:
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            dup = os.dup(fd)
        except OSError:
            continue
        try:
            sock = _socket.socket(fileno=dup)
        except OSError:
            os.close(dup)
            continue
        if sock.family == _socket.AF_UNIX and sock.type in (_socket.SOCK_SEQPACKET, _socket.SOCK_DGRAM):
            found.append(sock)
        else:
            sock.close()
    return found


MALLOC_MAPPED = 128 * 1024
"""glibc's malloc maps buffers of this size and more on their own (its default ``M_MMAP_THRESHOLD``)
until :func:`steady_heap` raises it."""

_steady = [0]  # the largest buffer steady_heap() freed in this process (a fork inherits the heap's state)


def steady_heap(size: int) -> None:
    """Let this process build messages of ``size`` bytes without a page fault for each: free a
    buffer of four times that size once. glibc's malloc maps every buffer of 128 KiB and more on its
    own and unmaps it when freed, and raises that threshold to the size of a mapped buffer freed
    (and the free heap it keeps untrimmed to twice that): a call of 150 KiB builds two such buffers
    (the marshal-ed body, the envelope), which cost a sender 150-180 µs a call, against 14-20 µs
    once the heap keeps them (raw ``mule_msg``: 17-23 µs; with twice the size instead of four
    times, the heap was still trimmed in some runs: 41 µs). Called at the first message larger than
    :data:`MALLOC_MAPPED` (an offloaded function's size check, see ``Route.check_size``), never
    before: the heap then keeps up to eight times ``size`` free. Other C libraries ignore it: it is
    only a freed buffer.

    :param size: The size of the message.
    """
    size = 4 * min(size, DATAGRAM_CEILING)
    if size > _steady[0]:
        _steady[0] = size
        bytes(size)  # calloc'ed and freed: mapped pages never touched
