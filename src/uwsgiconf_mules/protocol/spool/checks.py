"""Whether a spool can be trusted and used: it is trusted through its permissions (0700, this
user's, below parents nobody else can rename it out of); whether it can keep calls
(:func:`problem`); whether it is stale (:func:`stale`); whether a mule is alive."""

from __future__ import annotations

import os
import stat
import time

from .layout import PARTS, RESERVE, STALE_AFTER


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
