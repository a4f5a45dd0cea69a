"""What the builders make uWSGI listen on, on a real uWSGI: loopback addresses only, and a unix stats
socket that no other user can connect to, whatever the umask or ``chmod-socket`` (which apps set for
their own socket, for a web server of another user) say."""

from __future__ import annotations

import os
import socket
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from support.harness import Server, declaration, free_port
from uwsgiconf_mules.cli.top import read_stats

NOBODY = 65534


def listening(pid: int) -> list[str]:
    """The TCP addresses (``ip:port``) process ``pid`` listens on."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        target = os.readlink(f"/proc/{pid}/fd/{fd}") if os.path.islink(f"/proc/{pid}/fd/{fd}") else ""
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table, size in (("tcp", 4), ("tcp6", 16)):
        with open(f"/proc/{pid}/net/{table}") as handle:
            for row in list(handle)[1:]:
                fields = row.split()
                if fields[3] != "0A" or fields[9] not in inodes:  # 0A: LISTEN
                    continue
                address, port = fields[1].split(":")
                raw = bytes.fromhex(address)
                packed = b"".join(raw[i:i + 4][::-1] for i in range(0, size, 4))  # the kernel's words, host order
                ip = socket.inet_ntop(socket.AF_INET if size == 4 else socket.AF_INET6, packed)
                found.append(f"{ip}:{int(port, 16)}")
    return found


def test_uwsgi_listens_on_loopback_only(uwsgi_server: Callable[..., Server]) -> None:
    port = free_port()
    server = uwsgi_server(declaration(f"mules=1, stats='127.0.0.1:{port}'"))
    addresses = listening(server.proc.pid)
    assert sorted(addresses) == sorted([f"127.0.0.1:{port}", f"127.0.0.1:{server.port}"])  # stats, the harness's app
    assert read_stats(f"127.0.0.1:{port}")["pid"] == server.proc.pid


@pytest.fixture
def open_directory() -> Iterator[Path]:
    """A directory every user may enter (``tmp_path`` is its owner's only, which would hide a socket in it)."""
    path = Path(tempfile.mkdtemp(prefix="uwsgiconf-mules-stats-"))
    path.chmod(0o755)
    yield path
    for child in path.iterdir():
        child.unlink()
    path.rmdir()


def _connects_as(uid: int, path: str) -> str:
    """Try to connect to unix socket ``path`` as user ``uid``, in a child process: what happened."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        outcome = b"connected"
        try:
            os.setgid(uid)
            os.setuid(uid)
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(5)
                sock.connect(path)
        except OSError as exc:
            outcome = type(exc).__name__.encode()
        os.write(write, outcome)
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as handle:
        outcome = handle.read().decode()
    os.waitpid(pid, 0)
    return outcome


@pytest.mark.parametrize("how", ["umask 0", "chmod-socket=666"])
def test_a_unix_stats_socket_is_reachable_by_its_user_only(
        uwsgi_server: Callable[..., Server], open_directory: Path, how: str) -> None:
    stats = str(open_directory / "stats.sock")
    previous = os.umask(0 if how == "umask 0" else 0o022)
    try:
        server = uwsgi_server(declaration(f"mules=1, stats={stats!r}"),
                              extra_args=("--chmod-socket=666",) if how.startswith("chmod") else ())
    finally:
        os.umask(previous)
    mode = stat.S_IMODE(os.stat(stats).st_mode)
    assert mode & 0o077 == 0, f"{oct(mode)}: other users may connect"
    assert read_stats(stats)["pid"] == server.proc.pid  # its user reads it
    if os.getuid() == 0:  # another user is refused (root may be any user)
        assert _connects_as(NOBODY, stats) == "PermissionError"
