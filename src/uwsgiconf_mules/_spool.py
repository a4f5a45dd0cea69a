"""The spool: calls kept on disk across reloads, stops and deploys, and calls that could not run.

A directory per uWSGI instance (``set_mules_params(spool_dir=...)``, or a default the builders
derive, see :func:`default_dir`), with three parts:

* ``queue/``: calls that were queued in a mule queue when uWSGI reloaded or stopped. Each
  dispatch mule, told to stop, moves what is queued in its queues here (see
  :mod:`uwsgiconf_mules._dispatch`); dispatch mules of the next instance run them, oldest first,
  each claimed by exactly one mule (a rename into ``claimed/``).
* ``claimed/``: calls a mule is running. One left behind by a mule that died belongs to nobody:
  it moves to ``dead/`` with the reason, never back to ``queue/`` (it may have run).
* ``dead/``: calls that reached a mule but could not run (unknown key, import failure), with the
  reason; ``uwsgiconf-mules spool replay`` moves them back to ``queue/`` after a fix. Messages
  refused by the trust check are kept there too, marked ``untrusted``, and are never replayed.
* ``mules/``: the pid of each running dispatch mule, so that a mule that died without a clean
  stop is reported by the next one.

Every file is written to ``tmp/``, flushed to disk (``fsync``) and renamed into place, so a crash
mid-write leaves no partial call where a mule looks. A file holds ``UCMS1``, a note line (the
target a queued call was sent to, or why a call is dead), then the call without this
instance's token (kind, key, NUL, body: ``_protocol.stored``): the token changes with every start,
and the spool is trusted through its directory's permissions (0700, the uWSGI user).
"""

from __future__ import annotations

import os
import stat
import time

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: workers and mules import this module, keep it cheap
if TYPE_CHECKING:
    from collections.abc import Iterator

MAGIC = b"UCMS1\n"
"""First bytes of every spool file."""
PARTS = ("queue", "claimed", "dead", "tmp", "mules")
UNTRUSTED = "untrusted: "
"""Start of the note of a dead message refused by the trust check: never replayed."""
ANY = "any"
"""Target note of a queued call whose queue is not known: any dispatch mule runs it."""
DEFAULT_LIMIT = 256 * 1024 * 1024
"""Bytes the spool may hold; past it, calls are not spooled (with a log line and a count)."""

_counter = 0


def _name() -> str:
    """A file name that sorts oldest first and is unique across processes."""
    global _counter
    _counter += 1
    return f"{time.time_ns():020d}-{os.getpid()}-{_counter:08d}.call"


class Spool:
    """One instance's spool directory.

    :param path: The directory; created (0700) with its parts when missing.
    :param limit: Bytes the spool may hold.
    """

    def __init__(self, path: str, limit: int = DEFAULT_LIMIT) -> None:
        self.path = path
        self.limit = limit

    def part(self, name: str) -> str:
        """Path of a part (``queue``, ``claimed``, ``dead``, ``tmp``).

        :param name: The part.
        """
        return os.path.join(self.path, name)

    def create(self) -> None:
        """Create the directory and its parts (mode 0700) if missing, and check that only this
        user can change them: the spool is trusted through its permissions.

        :raises PermissionError: naming the directory that others could write to, or that is not
            this user's (an existing one is never trusted blindly: ``/var/tmp`` is shared).
        """
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        _check_ancestors(self.path)
        for path in (self.path, *(self.part(name) for name in PARTS)):
            _private_dir(path)

    def size(self) -> int:
        """Bytes held in ``queue/`` and ``dead/``."""
        total = 0
        for name in ("queue", "dead"):
            for entry in _scandir(self.part(name)):
                try:
                    total += entry.stat().st_size
                except OSError:
                    continue
        return total

    def write(self, part: str, payload: bytes, note: str = ANY) -> str:
        """Write one call durably into ``part`` (write, fsync, rename, fsync the directory).

        :param part: ``queue`` or ``dead``.
        :param payload: The envelope without this instance's prefix: kind, key, NUL, body.
        :param note: One line: the target (``mule:N``, ``farm:NAME``, :data:`ANY`) for ``queue``,
            why it is there for ``dead``.
        :returns: The file's path.
        :raises OSError: when the disk refuses (full, read-only, no permission).
        """
        name = _name()
        tmp = os.path.join(self.part("tmp"), name)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            data = MAGIC + note.replace("\n", " ").encode("utf-8", "replace") + b"\n" + payload
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.close(fd)
        final = os.path.join(self.part(part), name)
        os.rename(tmp, final)
        _fsync_dir(self.part(part))
        return final

    def claim(self, targets: frozenset[str]) -> Iterator[tuple[str, bytes]]:
        """Claim queued calls for ``targets``, oldest first, one at a time: (claimed path,
        payload). Each is moved into ``claimed/`` first, so no other mule gets it; remove it with
        :meth:`done` once run (a file another process claimed first is skipped).

        :param targets: Notes of the calls to take (``mule:N``, ``farm:NAME``, :data:`ANY`).
        """
        queue, claimed = self.part("queue"), self.part("claimed")
        for name in sorted(entry.name for entry in _scandir(queue)):
            try:
                if read(os.path.join(queue, name))[0] not in targets:
                    continue
            except (OSError, ValueError):
                pass  # gone, or unreadable: claimed and buried below
            target = os.path.join(claimed, f"{os.getpid()}-{name}")
            try:
                os.rename(os.path.join(queue, name), target)
            except FileNotFoundError:
                continue  # another mule took it
            try:
                payload = read(target)[1]
            except (OSError, ValueError) as exc:
                self.bury(target, f"unreadable spool file: {exc}")
                continue
            yield target, payload

    def done(self, claimed: str) -> None:
        """Forget a claimed call that ran.

        :param claimed: Its path in ``claimed/``.
        """
        os.unlink(claimed)

    def bury(self, path: str, reason: str) -> None:
        """Move a file to ``dead/`` with ``reason`` (the call is kept, never run by itself).

        :param path: A spool file.
        :param reason: Why.
        """
        try:
            payload = read(path)[1]
        except (OSError, ValueError):
            payload = b""
        self.write("dead", payload, reason)
        os.unlink(path)  # a regular file (see _scandir)

    def files(self, part: str) -> list[str]:
        """Paths of the calls in ``part``, oldest first.

        :param part: ``queue``, ``claimed`` or ``dead``.
        """
        return sorted(entry.path for entry in _scandir(self.part(part)))

    def orphans(self) -> list[str]:
        """Claimed files whose mule is gone (the pid in their name is not running)."""
        found = []
        for entry in _scandir(self.part("claimed")):
            head = entry.name.partition("-")[0]
            if not (head.isdigit() and alive(int(head))):
                found.append(entry.path)
        return found


def read(path: str) -> tuple[str, bytes]:
    """(reason, payload) of a spool file.

    :param path: The file.
    :raises ValueError: if it is not a spool file.
    """
    with open(path, "rb") as handle:
        data = handle.read()
    if not data.startswith(MAGIC):
        raise ValueError("not a spool file")
    reason, _, payload = data[len(MAGIC):].partition(b"\n")
    return reason.decode("utf-8", "replace"), payload


def _private_dir(path: str) -> None:
    """Create ``path`` (0700) if missing; refuse it unless it is a directory of this user's that
    nobody else can write to."""
    os.makedirs(path, 0o700, exist_ok=True)  # exist_ok: mules starting together race to create it
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise PermissionError(f"spool: {path} is not a directory (a link or a file)")
    if info.st_uid != os.geteuid():
        raise PermissionError(f"spool: {path} belongs to uid {info.st_uid}, not to this user ({os.geteuid()})")
    if info.st_mode & 0o022:
        raise PermissionError(f"spool: {path} can be written by others (mode {info.st_mode & 0o777:o})")


def _check_ancestors(path: str) -> None:
    """Refuse a spool below a directory that someone else could rename it out of: one writable
    by others without the sticky bit, or one of another user's (root's is fine)."""
    parent = os.path.dirname(os.path.abspath(path))
    while True:
        info = os.stat(parent)
        if info.st_mode & 0o002 and not info.st_mode & stat.S_ISVTX:
            raise PermissionError(f"spool: {parent} can be written by anyone (and has no sticky bit)")
        if info.st_uid not in (0, os.geteuid()) and info.st_mode & 0o022:
            raise PermissionError(f"spool: {parent} belongs to uid {info.st_uid} and can be written by others")
        up = os.path.dirname(parent)
        if up == parent:
            return
        parent = up


def _scandir(path: str) -> list[os.DirEntry[str]]:
    """The spool files of a part: regular files of this user's (anything else is ignored)."""
    try:
        with os.scandir(path) as entries:
            return [entry for entry in entries if entry.name.endswith(".call") and entry.is_file(follow_symlinks=False)
                    and entry.stat(follow_symlinks=False).st_uid == os.geteuid()]
    except FileNotFoundError:
        return []


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists.

    :param pid: A process id.
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


STALE_AFTER = 600.0
"""Seconds a spool must have been left unchanged before :func:`stale` calls it stale."""


def stale(path: str, now: float | None = None) -> bool:
    """Whether the spool directory ``path`` holds nothing to keep: no file in ``queue/``,
    ``claimed/`` or ``dead/``, no running dispatch mule (a pid in ``mules/`` that is alive), and
    nothing changed in it for :data:`STALE_AFTER` seconds (a starting instance is never stale).

    :param path: A spool directory.
    :param now: The time to compare with (default: now).
    """
    latest = os.lstat(path).st_mtime
    for part in PARTS:
        where = os.path.join(path, part)
        try:
            latest = max(latest, os.lstat(where).st_mtime)
            names = os.listdir(where)
        except FileNotFoundError:
            continue
        if part in ("queue", "claimed", "dead") and names:
            return False
        for name in names if part == "mules" else ():
            try:
                with open(os.path.join(where, name)) as handle:
                    pid = int(handle.read() or 0)
            except (OSError, ValueError):
                continue
            if alive(pid):
                return False
    return (time.time() if now is None else now) - latest >= STALE_AFTER
