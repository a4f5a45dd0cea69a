"""Whether a spool can be trusted and used: it is trusted through its permissions (0700, this
user's, below parents nobody else can rename it out of); whether it can keep calls
(:func:`problem`); whether it is stale (:func:`stale`); whether a mule is alive."""

from __future__ import annotations

import os
import stat
import time

from . import PARTS, RESERVE, STALE_AFTER


def private_dir(path: str) -> None:
    """Create ``path`` (0700) if missing; refuse it unless it is a directory of this user's that
    nobody else can write to."""
    os.makedirs(path, 0o700, exist_ok=True)  # exist_ok: mules starting together race to create it
    check_private(path, os.lstat(path))


def check_private(path: str, info: os.stat_result) -> None:
    if not stat.S_ISDIR(info.st_mode):
        raise PermissionError(f"spool: {path} is not a directory (a link or a file)")
    if info.st_uid != os.geteuid():
        raise PermissionError(f"spool: {path} belongs to uid {info.st_uid}, not to this user ({os.geteuid()})")
    if info.st_mode & 0o022:
        raise PermissionError(f"spool: {path} can be written by others (mode {info.st_mode & 0o777:o})")


def check_ancestors(path: str) -> None:
    """Refuse a spool below a directory that someone else could rename it out of: one writable
    by others without the sticky bit, or one of another user's (root's is fine), whatever its
    mode: its owner can always change it. The path as written is checked, then the path its links
    lead to: a link of this user's to a directory below someone else's is refused as well."""
    _check_parents(os.path.dirname(os.path.abspath(path)))
    real = os.path.dirname(os.path.realpath(path))
    if real != os.path.dirname(os.path.abspath(path)):
        _check_parents(real)


def _check_parents(parent: str) -> None:
    while True:
        link = os.lstat(parent)  # a link its owner could point elsewhere between two lives
        if stat.S_ISLNK(link.st_mode) and link.st_uid not in (0, os.geteuid()):
            raise PermissionError(f"spool: {parent} is a link of uid {link.st_uid}, neither root nor this user "
                                  f"({os.geteuid()}), who could point the spool elsewhere")
        info = os.stat(parent)
        if info.st_mode & 0o002 and not info.st_mode & stat.S_ISVTX:
            raise PermissionError(f"spool: {parent} can be written by anyone (and has no sticky bit)")
        if info.st_uid not in (0, os.geteuid()):
            raise PermissionError(f"spool: {parent} belongs to uid {info.st_uid}, neither root nor this user "
                                  f"({os.geteuid()}), who could move the spool away")
        if info.st_uid != os.geteuid() and info.st_mode & 0o020 and not info.st_mode & stat.S_ISVTX:
            raise PermissionError(f"spool: {parent} can be written by its group (gid {info.st_gid}, no sticky bit)")
        up = os.path.dirname(parent)
        if up == parent:
            return
        parent = up


def problem(path: str, needed: int = 0, files: int = 0) -> str | None:
    """Why the spool at ``path`` cannot keep calls, or None when it can; checks only (nothing is
    made). A missing spool is fine when its nearest existing parent is this user's to write in.

    :param path: The spool directory.
    :param needed: Bytes its disk must have free (what the mule queues can hold), or 0.
    :param files: Files those bytes may come in (each takes at least a block of the disk).
    """
    try:
        existing = path
        while not os.path.lexists(existing):
            existing = os.path.dirname(existing)
        check_ancestors(os.path.join(existing, "x") if existing != path else path)
        if existing == path:
            for part in (path, *(os.path.join(path, name) for name in PARTS)):
                if os.path.lexists(part):
                    check_private(part, os.lstat(part))
        elif not os.access(existing, os.W_OK | os.X_OK):
            return f"spool: {path} is missing and this user cannot make it in {existing}"
        if needed:
            disk = os.statvfs(existing)
            free = disk.f_bavail * disk.f_frsize
            needed += files * disk.f_frsize + RESERVE
            if free < needed:
                return (f"spool: the disk of {path} has {free} bytes free, less than the {needed} bytes the mule "
                        "queues can take to keep")
    except OSError as exc:
        return str(exc) if str(exc).startswith("spool: ") else f"spool: {path}: {exc.strerror or exc}"
    return None


def start_ticks(pid: int) -> int:
    """When process ``pid`` started, in clock ticks since boot (``/proc/<pid>/stat``, field 22); 0
    when it is not known (no such process, no ``/proc``).

    :param pid: A process id.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            text = handle.read()
        # The command (field 2) is in parentheses and may hold spaces: the fields after its last ")".
        return int(text[text.rindex(b")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return 0


def started_at(pid: int) -> float | None:
    """When process ``pid`` started, in seconds since the epoch (to a clock tick); None when not known.

    :param pid: A process id.
    """
    ticks = start_ticks(pid)
    if not ticks:
        return None
    booted = time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)
    return booted + ticks / os.sysconf("SC_CLK_TCK")


REUSE_MARGIN = 0.05
"""Seconds a process must have started after a file was named with its pid for the pid to count as
reused (the start time is known to a clock tick)."""


def alive(pid: int, since: float | None = None) -> bool:
    """Whether process ``pid`` exists (and, with ``since``, is the one that was there then).

    :param pid: A process id.
    :param since: When the pid was written (a claimed file's ctime, seconds since the epoch): a
        process of that pid that started later is another one (a pid reused, as after a container's
        restart), and ``pid`` counts as gone.
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if since is not None:
        began = started_at(pid)
        if began is not None and began > since + REUSE_MARGIN:
            return False
    return True


def _listed(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except NotADirectoryError:
        return [path]  # something else there: kept, as in the other parts
    except FileNotFoundError:
        return []


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
        if part == "delayed":  # its folders (one per target) stay once made: what counts is the calls in them
            names = [name for folder in names for name in _listed(os.path.join(where, folder))]
        if part in ("queue", "claimed", "dead", "delayed") and names:
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


def purge_stale(root: str) -> tuple[int, int, list[str], list[str]]:
    """Remove the stale spools (see :func:`stale`) among the directories in ``root`` (links and files
    are left alone); return (entries in ``root``, spools removed, paths of the spools kept, problems).

    :param root: The directory that holds spools (the default ones' parent).
    """
    import shutil

    try:
        names = sorted(os.listdir(root))
    except FileNotFoundError:
        names = []
    removed, kept, problems = 0, [], []
    for name in names:
        path = os.path.join(root, name)
        if os.path.islink(path) or not os.path.isdir(path):
            continue
        try:
            if not stale(path):
                kept.append(path)
                continue
            shutil.rmtree(path)
        except OSError as exc:
            problems.append(f"{path}: cannot purge: {exc}")
            continue
        removed += 1
    return len(names), removed, kept, problems


def strangers(path: str) -> list[tuple[str, str]]:
    """(name, why) of the entries of the folder ``path`` that look like spool files but are never
    read: links, files of another user's, anything not a regular file.

    :param path: A folder of the spool.
    """
    found = []
    try:
        with os.scandir(path) as entries:
            for entry in entries:
                if not entry.name.endswith(".call"):
                    continue
                try:
                    info = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISLNK(info.st_mode):
                    found.append((entry.name, "a symbolic link"))
                elif not stat.S_ISREG(info.st_mode):
                    found.append((entry.name, "not a regular file"))
                elif info.st_uid != os.geteuid():
                    found.append((entry.name, f"a file of uid {info.st_uid}, not of this user"))
    except FileNotFoundError:
        pass
    return sorted(found)
