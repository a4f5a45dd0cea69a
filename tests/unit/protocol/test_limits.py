"""The largest message a mule queue carries, against real socket pairs like uWSGI's queues."""

from __future__ import annotations

import errno
import socket
from pathlib import Path

import pytest

from uwsgiconf_mules.protocol.limits import DATAGRAM_CEILING, SEQPACKET_OVERHEAD, socket_message_limit

WMEM_MAX = Path("/proc/sys/net/core/wmem_max")
SENT_WHOLE_UP_TO = 256 * 1024
"""Largest limit the test also sends a message of: the kernel may fail to allocate a much larger
datagram (ENOBUFS) whatever the socket buffer."""


@pytest.mark.parametrize("msg_size", [None, 1024, 100_000, 1_048_576, "above wmem_max"])
def test_the_limit_is_the_largest_message_a_queue_accepts(msg_size: int | str | None) -> None:
    if not WMEM_MAX.exists():
        pytest.skip("no /proc: the limit is a fixed 64 KiB")
    if msg_size == "above wmem_max":
        msg_size = int(WMEM_MAX.read_text()) + 1  # the kernel caps SO_SNDBUF at wmem_max
    assert not isinstance(msg_size, str)
    sender, receiver = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with sender, receiver:
        if msg_size is not None:  # what uWSGI does with mule-msg-size (create_msg_pipe)
            for end in (sender, receiver):
                end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, msg_size)
                end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, msg_size)
        limit = socket_message_limit(msg_size)
        buffered = sender.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) - SEQPACKET_OVERHEAD
        assert limit == min(buffered, DATAGRAM_CEILING)
        if limit == buffered:
            with pytest.raises(OSError) as info:
                sender.send(b"x" * (limit + 1))
            assert info.value.errno == errno.EMSGSIZE
        if limit <= SENT_WHOLE_UP_TO or limit == DATAGRAM_CEILING:  # the ceiling goes through whole
            sender.send(b"x" * limit)
            assert len(receiver.recv(limit + 1)) == limit
