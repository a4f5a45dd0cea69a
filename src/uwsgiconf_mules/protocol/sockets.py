"""Socket introspection: the AF_UNIX packet sockets a uWSGI process inherited (its mule and farm
queues are among them). Imported where it is used, not with the runtime."""

from __future__ import annotations

import _socket  # the C module only: ``socket`` imports selectors, enum and more
import os
import stat

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: workers and mules import this module, keep it cheap
if TYPE_CHECKING:
    from typing import Any


def packet_sockets() -> list[Any]:
    """Duplicates of this process's AF_UNIX packet sockets; uWSGI's mule and farm queues are among
    them (every uWSGI process inherits all of them). Empty where ``/proc/self/fd`` cannot be read.
    """
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
