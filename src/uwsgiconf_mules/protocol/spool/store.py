"""The spool's directory and what is done with it: :class:`Spool` (see the package's docstring)."""

from __future__ import annotations

import os
import stat
import time

from . import (
    ANY,
    DEAD_SHARE,
    DEFAULT_LIMIT,
    MAGIC,
    PARTS,
    RESERVE,
    STATUS_DIR,
    STOPS,
    UNTRUSTED,
    UNTRUSTED_MARK,
)
from .checks import check_ancestors, private_dir, strangers
from .claims import orphans

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: workers and mules import this module, keep it cheap
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

_counter = 0


def _name(untrusted: bool = False) -> str:
    """A file name that sorts oldest first and is unique across processes.

    :param untrusted: Whether the file is the note of an untrusted message (see :data:`UNTRUSTED_MARK`).
    """
    global _counter
    _counter += 1
    return f"{time.time_ns():020d}-{os.getpid()}-{_counter:08d}{UNTRUSTED_MARK if untrusted else '.call'}"


class Spool:
    """One instance's spool directory.

    :param path: The directory; created (0700) with its parts when missing.
    :param limit: Bytes the spool may hold.
    """

    def __init__(self, path: str, limit: int = DEFAULT_LIMIT) -> None:
        self.path = path
        self.limit = limit
        self.made = False
        """Whether :meth:`create` made the directory (a new, empty spool)."""

    def part(self, name: str) -> str:
        """Path of a part (``queue``, ``claimed``, ``dead``, ``tmp``).

        :param name: The part.
        """
        return os.path.join(self.path, name)

    def create(self) -> bool:
        """Create the directory and its parts (mode 0700) if missing, and check that only this
        user can change them: the spool is trusted through its permissions. Missing parents are
        made this user's, 0700 (the default's parent, ``/var/tmp/uwsgiconf-mules-<uid>``, too).

        :returns: Whether the spool directory was made now (a new, empty spool).
        :raises PermissionError: naming the directory that others could write to, or that is not
            this user's (an existing one is never trusted blindly: ``/var/tmp`` is shared).
        """
        os.makedirs(os.path.dirname(self.path), 0o700, exist_ok=True)
        check_ancestors(self.path)
        made = not os.path.lexists(self.path)
        for path in (self.path, *(self.part(name) for name in PARTS)):
            private_dir(path)
        self.made = self.made or made
        return made

    def strangers(self, part: str = "queue") -> list[tuple[str, str]]:
        """(name, why) of the entries of ``part`` that look like spool files but are never read:
        links, files of another user's, anything not a regular file.

        :param part: A part.
        """
        return strangers(self.part(part))

    def disk_free(self) -> int:
        """Bytes free on the spool's disk, less :data:`RESERVE` (never below 0); a large number when not known."""
        try:
            disk = os.statvfs(self.path)
        except OSError:
            return 1 << 62
        return max(0, disk.f_bavail * disk.f_frsize - RESERVE)

    def record_stop(self, mule_id: int, kept: list[str], lost: dict[str, int]) -> None:
        """Leave, in ``mules/``, what a stopping mule kept (file names) and lost (why: how many),
        for :meth:`check_stops` at the next start.

        :param mule_id: The stopping mule.
        :param kept: Names of the files it wrote into ``queue/``.
        :param lost: Calls it could not keep, by reason.
        :raises OSError: when the disk refuses.
        """
        import json

        data = json.dumps({"pid": os.getpid(), "kept": kept, "lost": lost}).encode()
        tmp = os.path.join(self.part("tmp"), f"{mule_id}{STOPS}")
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.rename(tmp, os.path.join(self.part("mules"), f"{mule_id}{STOPS}"))
        _fsync_dir(self.part("mules"))

    def check_stops(self) -> list[tuple[int, int, int, dict[str, int]]]:
        """Read and remove the records :meth:`record_stop` left: for each, (mule id, calls it kept,
        how many of them are still in the spool, calls it lost by reason). Done under a lock, by
        the first mule to start, before any mule runs a call kept for it; the others find none.
        """
        import fcntl
        import json

        found = []
        fd = os.open(self.part("mules"), os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            present = {entry.name for entry in _scandir(self.part("queue"))}
            present.update(entry.name.partition("-")[2] for entry in _scandir(self.part("claimed")))
            for entry in _scandir(self.part("mules"), STOPS):
                try:
                    with open(entry.path, "rb") as handle:
                        data = json.loads(handle.read())
                    os.unlink(entry.path)
                    kept = [str(name) for name in data.get("kept", ())]
                    lost = {str(why): int(count) for why, count in dict(data.get("lost", {})).items()}
                    mule_id = int(entry.name[:-len(STOPS)])
                except (OSError, ValueError, TypeError, AttributeError):
                    continue
                found.append((mule_id, len(kept), sum(name in present for name in kept), lost))
        finally:
            os.close(fd)  # releases the lock
        return sorted(found)

    @property
    def dead_limit(self) -> int:
        """Bytes ``dead/`` may hold."""
        return self.limit // DEAD_SHARE

    def size(self, parts: tuple[str, ...] = ("queue", "dead")) -> int:
        """Bytes held in ``parts``.

        :param parts: The parts to add up.
        """
        total = 0
        for name in parts:
            for entry in _scandir(self.part(name)):
                try:
                    total += entry.stat().st_size
                except OSError:
                    continue
        return total

    def write(self, part: str, payload: bytes, note: str = ANY, *, durable: bool = True, name: str = "") -> str:
        """Write one call durably into ``part`` (write, fsync, rename, fsync the directory).

        :param part: ``queue`` or ``dead``.
        :param payload: The envelope without this instance's prefix: kind, key, NUL, body.
        :param note: One line: the target (``mule:N``, ``farm:NAME``, :data:`ANY`) for ``queue``,
            why it is there for ``dead``.
        :param durable: Whether to flush it to disk (False: a note of something never replayed).
        :param name: The file's name (default: one that sorts oldest first; see ``spool.delayed``).
        :returns: The file's path.
        :raises OSError: when the disk refuses (full, read-only, no permission).
        """
        name = name or _name(part == "dead" and note.startswith(UNTRUSTED))
        tmp = os.path.join(self.part("tmp"), name)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            data = MAGIC + note.replace("\n", " ").encode("utf-8", "replace") + b"\n" + payload
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if durable:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.close(fd)
        final = os.path.join(self.part(part), name)
        os.rename(tmp, final)
        if durable:
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

    def waiting(self, targets: frozenset[str]) -> int:
        """How many queued calls are for ``targets`` (their note line is read).

        :param targets: Notes of the calls to count (see :meth:`claim`).
        """
        count = 0
        for entry in _scandir(self.part("queue")):
            try:
                with open(entry.path, "rb") as handle:
                    head = handle.read(len(MAGIC) + 200)
            except OSError:
                continue
            note = head[len(MAGIC):].partition(b"\n")[0].decode("utf-8", "replace")
            count += head.startswith(MAGIC) and note in targets
        return count

    def done(self, claimed: str) -> None:
        """Forget a claimed call that ran.

        :param claimed: Its path in ``claimed/``.
        """
        os.unlink(claimed)

    def bury(self, path: str, reason: str) -> None:
        """Move a file to ``dead/`` with ``reason`` (the call is kept, never run by itself).

        :param path: A spool file; one that is not a regular file of this user's is kept as an
            untrusted note, without its bytes (never replayed: they are not this instance's).
        :param reason: Why.
        """
        try:
            info = os.lstat(path)
            ours = stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid()
            payload = read(path)[1] if ours else b""
        except FileNotFoundError:
            return  # buried (or run) by another mule meanwhile
        except (OSError, ValueError):
            ours, payload = True, b""
        self.write("dead", payload, reason if ours else f"{UNTRUSTED}{reason}")
        try:  # noqa: SIM105 - contextlib is not imported here: workers and mules import this module
            os.unlink(path)  # a regular file (see _scandir)
        except FileNotFoundError:
            pass

    def files(self, part: str) -> list[str]:
        """Paths of the calls in ``part``, oldest first.

        :param part: ``queue``, ``claimed`` or ``dead``.
        """
        return sorted(entry.path for entry in _scandir(self.part(part)))

    def orphans(self) -> list[str]:
        """Claimed calls of ``queue/`` whose mule is gone (see :func:`.claims.orphans`)."""
        return orphans(_scandir(self.part("claimed")))


    def pid_file(self, mule_id: int) -> str:
        """Path of the file holding the pid of dispatch mule ``mule_id`` while it runs (in ``mules/``).

        :param mule_id: The mule.
        """
        return os.path.join(self.part("mules"), f"{mule_id}.pid")

    def previous_pid(self, mule_id: int) -> int:
        """The pid the last dispatch mule ``mule_id`` left in its pid file; 0 when none.

        :param mule_id: The mule.
        """
        try:
            with open(self.pid_file(mule_id)) as handle:
                return int(handle.read() or 0)
        except (OSError, ValueError):
            return 0

    def write_pid(self, mule_id: int) -> None:
        """Write this process's pid as that of dispatch mule ``mule_id``.

        :param mule_id: The mule.
        :raises OSError: when the disk refuses.
        """
        with open(self.pid_file(mule_id), "w") as handle:
            handle.write(str(os.getpid()))

    def forget_pid(self, mule_id: int) -> None:
        """Remove the pid file of dispatch mule ``mule_id`` (a clean stop); never raises.

        :param mule_id: The mule.
        """
        from contextlib import suppress  # at a clean stop only: workers and mules import this module

        with suppress(OSError):
            os.unlink(self.pid_file(mule_id))

    def unclaim(self, claimed: str) -> None:
        """Put a claimed call that was not run back in ``queue/`` (a mule told to stop meanwhile).

        :param claimed: Its path in ``claimed/`` (see :meth:`claim`).
        """
        os.rename(claimed, os.path.join(self.part("queue"), os.path.basename(claimed).partition("-")[2]))

    @property
    def status_dir(self) -> str:
        """The directory of the mules' status files (``status/``)."""
        return os.path.join(self.path, STATUS_DIR)

    def status_file(self, mule_id: int) -> str:
        """Path of the status file of dispatch mule ``mule_id`` (JSON: what it runs, its per-task counters).

        :param mule_id: The mule.
        """
        return os.path.join(self.status_dir, f"{mule_id}.json")

    def read_status(self, mule_id: int) -> dict[str, Any]:
        """The status dispatch mule ``mule_id`` last wrote; empty when there is none (or it cannot be read).

        :param mule_id: The mule.
        """
        import json

        try:
            with open(self.status_file(mule_id)) as handle:
                return dict(json.load(handle))
        except (OSError, ValueError, TypeError):
            return {}

    def entries(self, part: str, problems: list[str]) -> list[tuple[str, str, bytes]]:
        """(path, note, payload) of every call in ``part``, oldest first; a file that cannot be read
        is named in ``problems`` instead.

        :param part: ``queue``, ``claimed`` or ``dead``.
        :param problems: Where a file that cannot be read is said.
        """
        found = []
        for path in self.files(part):
            try:
                note, payload = read(path)
            except (OSError, ValueError) as exc:
                problems.append(f"{path}: {exc}")
                continue
            found.append((path, note, payload))
        return found

    def replay(self, problems: list[str]) -> tuple[int, int]:
        """Move the dead letters back where their calls belong, except untrusted ones, which are
        never replayed; return (replayed, untrusted). A dead letter whose note says where its call
        was going (``spool.delayed.origin_note``: a delayed call or a retry that could not be kept,
        an interrupted delayed call) goes back to its target: to ``delayed/`` with its due time and
        attempt while that time is ahead (the timer of a running mule takes it when due), else to
        ``queue/`` for that target; any other goes to ``queue/`` for any dispatch mule. Calls of
        ``queue/`` run when the dispatch mules next start.

        :param problems: Where a file that cannot be read or moved is said.
        """
        from . import delayed as _delayed

        replayed = untrusted = 0
        now = time.time_ns()
        for path, note, payload in self.entries("dead", problems):
            if note.startswith(UNTRUSTED):
                untrusted += 1
                continue
            origin = _delayed.parse_origin(note)
            try:
                if origin is not None and origin[1] > now:
                    _delayed.write(self, origin[0], payload, origin[1], origin[2])
                else:
                    self.write("queue", payload, origin[0] if origin is not None else ANY)
                os.unlink(path)
            except OSError as exc:
                problems.append(f"{path}: cannot replay: {exc}")
                continue
            replayed += 1
        return replayed, untrusted

    def purge(self, parts: tuple[str, ...], problems: list[str]) -> int:
        """Remove every call in ``parts``; return how many files were removed.

        :param parts: Among ``queue``, ``claimed`` and ``dead``.
        :param problems: Where a file that cannot be read or removed is said.
        """
        removed = 0
        for part in parts:
            for path, _, _ in self.entries(part, problems):  # a file that cannot be read is said, and kept
                try:
                    os.unlink(path)
                except OSError as exc:
                    problems.append(f"{path}: cannot purge: {exc}")
                    continue
                removed += 1
        return removed


def read(path: str) -> tuple[str, bytes]:
    """(reason, payload) of a spool file.

    :param path: The file.
    :raises ValueError: if it is not a spool file.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)  # never a link's target, never a FIFO's wait
    with open(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("not a regular file")
        data = handle.read()
    if not data.startswith(MAGIC):
        raise ValueError("not a spool file")
    reason, _, payload = data[len(MAGIC):].partition(b"\n")
    return reason.decode("utf-8", "replace"), payload


def _scandir(path: str, suffix: str = ".call") -> list[os.DirEntry[str]]:
    """The spool files of a part: regular files of this user's (anything else is ignored)."""
    try:
        with os.scandir(path) as entries:
            return [entry for entry in entries if entry.name.endswith(suffix) and entry.is_file(follow_symlinks=False)
                    and entry.stat(follow_symlinks=False).st_uid == os.geteuid()]
    except FileNotFoundError:
        return []


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)




