"""Claimed files of mules that died: when a claimed file got its name, and taking one over (one of
two mules recovering it at the same time gets it)."""

from __future__ import annotations

import os

from .checks import alive

DELAYED = ("due-", "run-")
"""How the names of claimed delayed calls go on after the pid (see :mod:`.delayed`)."""


def named_at(entry: os.DirEntry[str]) -> float | None:
    """When a claimed file got its name (its inode's change time: a rename sets it), in seconds since
    the epoch; None when it is gone.

    :param entry: Its entry in ``claimed/``.
    """
    try:
        return entry.stat(follow_symlinks=False).st_ctime
    except OSError:
        return None


def take(claimed: str) -> str | None:
    """Take a claimed file of a dead mule over: renamed with this process's pid (atomic: of two
    mules recovering it, one only gets it; a mule that dies before it is done leaves it to the next).

    :param claimed: Its path in ``claimed/`` (``<pid>-<rest>``).
    :returns: Its new path, or None when another process took it first.
    """
    rest = os.path.basename(claimed).partition("-")[2]
    taken = os.path.join(os.path.dirname(claimed), f"{os.getpid()}-{rest}")
    try:
        os.rename(claimed, taken)
    except FileNotFoundError:
        return None
    return taken


def orphans(entries: list[os.DirEntry[str]]) -> list[str]:
    """Paths of the claimed calls of ``queue/`` whose mule is gone (the pid in their name is not
    running, or is another process's now: one that started after the claim); the claimed delayed
    calls are the timer's (:func:`~uwsgiconf_mules.protocol.spool.delayed.recover_claimed`).

    :param entries: The entries of ``claimed/``.
    """
    found = []
    for entry in entries:
        head, _, rest = entry.name.partition("-")
        if rest.startswith(DELAYED):
            continue
        if not (head.isdigit() and alive(int(head), since=named_at(entry))):
            found.append(entry.path)
    return found
