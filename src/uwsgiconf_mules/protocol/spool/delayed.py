"""Delayed calls in the spool: calls (and retries) that run no earlier than a given time.

The spool (:mod:`uwsgiconf_mules.protocol.spool`) owns the directory, and its ``delayed/`` part
through this module, one folder per target::

    delayed/mule-<id>/<due>-<pid>-<n>.call     calls for one mule
    delayed/farm-<name>/<due>-<pid>-<n>.call   calls for any one mule of a farm

``<due>`` is the time the call may run from, in nanoseconds since the epoch on 20 digits, so a
folder's names sort by due time and the timer of a dispatch mule reads no file to know what is due
next (see :mod:`uwsgiconf_mules.mule.timer`). Each file is a spool file like any other (written to
``tmp/``, flushed, renamed into place, mode 0600 in folders of mode 0700 that only this user can
change; files that are not this user's regular files are never read), whose note is the target
and the attempt (``farm:slow attempt=2``), and whose payload is the call without the token.

A due call is claimed by renaming it into ``claimed/`` (one rename: of two mules or two
generations, exactly one gets it): ``<pid>-due-<name>`` while it waits for its mule's loop, then
``<pid>-run-<name>`` while it runs (the name says which folder it came from, see :func:`claimed_name`).
A claimed file left by a mule that died is put back when it never started (see
:func:`recover_claimed`); one that was running is the caller's to judge (an interrupted call).
"""

from __future__ import annotations

import contextlib
import os

from . import checks as _checks, claims as _claims, store as _store

PART = "delayed"
"""The spool's part that holds delayed calls."""
WAITING = "due"
"""Middle of the name of a claimed delayed call that has not started."""
RUNNING = "run"
"""Middle of the name of a claimed delayed call that is running."""
DUE_DIGITS = 20

_counter = 0
_made: set[str] = set()  # target folders this process made or checked


def folder(target: str) -> str:
    """The folder (under ``delayed/``) of a target note.

    :param target: ``mule:N`` or ``farm:NAME`` (farm names are checked by the declarations: no
        ``/``, never ``.`` or ``..``).
    :raises ValueError: for anything else.
    """
    kind, _, name = target.partition(":")
    if kind not in ("mule", "farm") or not name or "/" in name or name.startswith("."):
        raise ValueError(f"not a target of delayed calls: {target!r}")
    return f"{PART}/{kind}-{name}"


def target_of(folder_name: str) -> str:
    """The target note of a folder of ``delayed/`` (the inverse of :func:`folder`).

    :param folder_name: ``mule-N`` or ``farm-NAME``.
    """
    kind, _, name = folder_name.partition("-")
    return f"{kind}:{name}"


def name(due_ns: int) -> str:
    """A file name that sorts by due time and is unique across processes.

    :param due_ns: When the call may run, in nanoseconds since the epoch.
    """
    global _counter
    _counter += 1
    return f"{max(0, due_ns):0{DUE_DIGITS}d}-{os.getpid()}-{_counter:08d}.call"


def valid_name(file_name: str) -> bool:
    """Whether ``file_name`` is one that :func:`name` draws: ``<due:20 digits>-<pid>-<n:8+ digits>.call``
    (a name taken from a message is checked before it is joined to a path).

    :param file_name: A file name.
    """
    due, _, rest = file_name.partition("-")
    pid, _, end = rest.partition("-")
    count = end.removesuffix(".call")
    return (len(due) == DUE_DIGITS and due.isdigit() and pid.isdigit() and end.endswith(".call")
            and len(count) >= 8 and count.isdigit() and due.isascii() and pid.isascii() and count.isascii())


def due_of(file_name: str) -> int:
    """The due time (ns since the epoch) in a delayed call's file name; 0 when it has none.

    :param file_name: A file name of ``delayed/``, or of a claimed delayed call.
    """
    base = file_name.rsplit("-", 2)[0][-DUE_DIGITS:]
    return int(base) if base.isdigit() else 0


def note(target: str, attempt: int) -> str:
    """The note line of a delayed call.

    :param target: ``mule:N`` or ``farm:NAME``.
    :param attempt: The attempt it will be (1 for a call sent with a delay).
    """
    return f"{target} attempt={attempt}"


ORIGIN = " | kept for "
"""Start of the end of a dead letter's note that says where its call goes back when replayed (see
:func:`origin_note`)."""


def origin_note(target: str, due_ns: int = 0, attempt: int = 1) -> str:
    """The end of a dead letter's note that says where its call belongs: its target, and for a
    delayed call (or a retry) its due time and attempt; :meth:`Spool.replay
    <uwsgiconf_mules.protocol.spool.Spool.replay>` puts it back there.

    :param target: ``mule:N`` or ``farm:NAME``.
    :param due_ns: When it may run (ns since the epoch), or 0 for a call that was due already.
    :param attempt: The attempt it will be.
    :returns: The end of the note; empty for a target that is none (its call goes to any mule).
    """
    try:
        folder(target)
    except ValueError:
        return ""
    return f"{ORIGIN}{target} due_ns={max(0, due_ns)} attempt={max(1, attempt)}"


def parse_origin(text: str) -> tuple[str, int, int] | None:
    """(target, due ns, attempt) of a dead letter's note that ends with :func:`origin_note`; None
    for any other (its call goes back to ``queue/`` for any dispatch mule).

    :param text: The note.
    """
    _, found, end = text.rpartition(ORIGIN)
    target, _, rest = end.partition(" due_ns=")
    due, _, attempt = rest.partition(" attempt=")
    if not found or not due.isdigit() or not attempt.isdigit() or not due.isascii() or not attempt.isascii():
        return None
    try:
        folder(target)
    except ValueError:
        return None
    return target, int(due), max(1, int(attempt))


def parse_note(text: str) -> tuple[str, int]:
    """(target, attempt) of a delayed call's note.

    :param text: The note.
    :raises ValueError: for a note that is not one of a delayed call.
    """
    target, _, attempt = text.partition(" attempt=")
    folder(target)
    if not attempt.isdigit() or int(attempt) < 1:
        raise ValueError(f"not the note of a delayed call: {text[:80]!r}")
    return target, int(attempt)


def write(spool: _store.Spool, target: str, payload: bytes, due_ns: int, attempt: int = 1, *,
          file_name: str | None = None) -> str:
    """Keep a delayed call durably (see :meth:`Spool.write <uwsgiconf_mules.protocol.spool.Spool.write>`).

    :param spool: The spool.
    :param target: ``mule:N`` or ``farm:NAME``.
    :param payload: The call without the token (``envelope.stored``).
    :param due_ns: When it may run, in nanoseconds since the epoch.
    :param attempt: Which attempt it will be.
    :param file_name: Its name (from :func:`name`, drawn by the sender), or None for a new one.
    :returns: The file's path.
    :raises OSError: when the disk refuses, or the folder is not private (``PermissionError``).
    """
    where = folder(target)
    if spool.part(where) not in _made:
        _checks.private_dir(spool.part(PART))
        _checks.private_dir(spool.part(where))
        _made.add(spool.part(where))
    if file_name is not None:  # written again (its first writer died): what that one left in tmp/ goes
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(spool.part("tmp"), file_name))
    try:
        return spool.write(where, payload, note(target, attempt), name=file_name or name(due_ns))
    except FileNotFoundError:  # its folder was removed since (a purge): made again, once
        _made.discard(spool.part(where))
        _checks.private_dir(spool.part(PART))
        _checks.private_dir(spool.part(where))
        _made.add(spool.part(where))
        return spool.write(where, payload, note(target, attempt), name=file_name or name(due_ns))


def pending(spool: _store.Spool, target: str) -> list[str]:
    """Names of the delayed calls of ``target``, earliest due first (this user's regular files only).

    :param spool: The spool.
    :param target: ``mule:N`` or ``farm:NAME``.
    """
    return sorted(entry.name for entry in _store._scandir(spool.part(folder(target))))


def claimed_name(state: str, target: str, file_name: str) -> str:
    """The name of a claimed delayed call in ``claimed/``: ``<pid>-<state>-<folder>-<name>``.

    :param state: :data:`WAITING` or :data:`RUNNING`.
    :param target: Its target.
    :param file_name: Its name in ``delayed/``.
    """
    return f"{os.getpid()}-{state}-{folder(target)[len(PART) + 1:]}-{file_name}"


def split_claimed(claimed: str) -> tuple[int, str, str, str] | None:
    """(pid, state, target, name in ``delayed/``) of a claimed delayed call's name; None for any
    other claimed file (a call of ``queue/``).

    :param claimed: A name in ``claimed/``.
    """
    parts = claimed.split("-", 2)
    if len(parts) < 3 or not parts[0].isdigit() or parts[1] not in (WAITING, RUNNING):
        return None
    rest = parts[2].rsplit("-", 3)  # <kind>-<name>, then the name in delayed/: <due>-<pid>-<n>.call
    if len(rest) < 4 or "-" not in rest[0]:
        return None
    return int(parts[0]), parts[1], target_of(rest[0]), "-".join(rest[1:])


def known(spool: _store.Spool, target: str, file_name: str) -> bool:
    """Whether a delayed call of this name is kept already, pending or claimed.

    :param spool: The spool.
    :param target: Its target.
    :param file_name: Its name in ``delayed/``.
    """
    if os.path.lexists(os.path.join(spool.part(folder(target)), file_name)):
        return True
    try:
        return any(name.endswith(f"-{file_name}") for name in os.listdir(spool.part("claimed")))
    except FileNotFoundError:
        return False


def claim(spool: _store.Spool, target: str, file_name: str) -> str | None:
    """Claim a due call: rename it into ``claimed/`` (atomic: one claimer only).

    :param spool: The spool.
    :param target: Its target.
    :param file_name: Its name in ``delayed/``.
    :returns: The claimed path, or None when another mule (or generation) claimed it first.
    """
    claimed = os.path.join(spool.part("claimed"), claimed_name(WAITING, target, file_name))
    try:
        os.rename(os.path.join(spool.part(folder(target)), file_name), claimed)
    except FileNotFoundError:
        return None
    return claimed


def start(claimed: str) -> str:
    """Mark a claimed call as running (a rename, see the module docstring).

    :param claimed: Its claimed path (state :data:`WAITING`).
    :returns: The new path.
    :raises OSError: when it is gone.
    """
    head, _, rest = os.path.basename(claimed).partition(f"-{WAITING}-")
    running = os.path.join(os.path.dirname(claimed), f"{head}-{RUNNING}-{rest}")
    os.rename(claimed, running)
    return running


def put_back(spool: _store.Spool, claimed: str) -> bool:
    """Return a claimed call that never started to ``delayed/``, under its own name (its due time).

    :param spool: The spool.
    :param claimed: Its claimed path.
    :returns: Whether it was put back (False: gone, or not a claimed delayed call).
    """
    found = split_claimed(os.path.basename(claimed))
    if found is None:
        return False
    _, _, target, file_name = found
    try:
        where = spool.part(folder(target))
        _checks.private_dir(where)
        os.rename(claimed, os.path.join(where, file_name))
    except (OSError, ValueError):
        return False
    return True


def dead_claims(spool: _store.Spool) -> list[tuple[str, str]]:
    """(state, path) of the claimed delayed calls whose mule is gone (the pid in their name is not
    running, or is that of a process that started after the claim: a pid reused).

    :param spool: The spool.
    """
    found = []
    for entry in _store._scandir(spool.part("claimed")):
        parsed = split_claimed(entry.name)
        if parsed is not None and not _checks.alive(parsed[0], since=_claims.named_at(entry)):
            found.append((parsed[1], entry.path))
    return sorted(found)


def recover_claimed(spool: _store.Spool) -> list[str]:
    """Put back every claimed delayed call of a mule that died before it started it.

    :param spool: The spool.
    :returns: Paths of the claimed calls that were running when their mule died (left in place).
    """
    running = []
    for state, path in dead_claims(spool):
        if state == WAITING:
            put_back(spool, path)
        else:
            running.append(path)
    return running


def files(spool: _store.Spool) -> list[str]:
    """Paths of every delayed call kept, of every target (this user's regular files only).

    :param spool: The spool.
    """
    found: list[str] = []
    for target in count(spool):
        found.extend(os.path.join(spool.part(folder(target)), name) for name in pending(spool, target))
    return found


def count(spool: _store.Spool) -> dict[str, int]:
    """Delayed calls kept, by target.

    :param spool: The spool.
    """
    found: dict[str, int] = {}
    try:
        with os.scandir(spool.part(PART)) as entries:
            folders = [entry.name for entry in entries if entry.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return found
    for folder_name in sorted(folders):
        found[target_of(folder_name)] = len(_store._scandir(spool.part(f"{PART}/{folder_name}")))
    return found


def strangers(spool: _store.Spool) -> list[tuple[str, str]]:
    """(name under ``delayed/``, why) of the entries of its folders that look like delayed calls but
    are never read (see :meth:`Spool.strangers <uwsgiconf_mules.protocol.spool.Spool.strangers>`).

    :param spool: The spool.
    """
    found: list[tuple[str, str]] = []
    for target in count(spool):
        where = folder(target)
        found.extend((f"{where[len(PART) + 1:]}/{name}", why) for name, why in spool.strangers(where))
    return found


class Held:
    """Bytes the delayed calls of a spool hold, counted again cheaply: a folder is listed again only
    when its modification time changed (or is younger than a second: a change in the same clock
    tick), at most every twenty times as long as its last listing took (a folder of 100,000 calls
    that changes all the time costs its counter a few percent of a core), and only the files not
    seen yet are measured. Delayed calls count against the spool's limit as queued calls do (see
    ``runtime.spool_watch``).

    :param spool: The spool.
    """

    SLOWER = 20
    """A folder is listed again at most every this many times as long as its last listing took."""

    def __init__(self, spool: _store.Spool) -> None:
        self.spool = spool
        self.folders: dict[str, tuple[int, dict[str, int], int, float]] = {}  # (mtime, sizes, sum, next listing)

    def total(self) -> int:
        """Bytes held in ``delayed/`` now (this user's regular files only)."""
        import time

        try:
            with os.scandir(self.spool.part(PART)) as entries:
                names = [entry.name for entry in entries if entry.is_dir(follow_symlinks=False)]
        except FileNotFoundError:
            names = []
        now, total, seen = time.time_ns(), 0, {}
        for folder_name in names:
            where = self.spool.part(f"{PART}/{folder_name}")
            try:
                mtime = os.stat(where).st_mtime_ns
            except OSError:
                continue
            known = self.folders.get(folder_name)
            changed = known is None or known[0] != mtime or now - mtime < 1_000_000_000
            if changed and (known is None or time.monotonic() >= known[3]):
                began = time.monotonic()
                sizes = self._sizes(where, known[1] if known is not None else {})
                known = (mtime, sizes, sum(sizes.values()), began + self.SLOWER * (time.monotonic() - began))
            assert known is not None
            seen[folder_name] = known
            total += known[2]
        self.folders = seen
        return total

    @staticmethod
    def _sizes(where: str, before: dict[str, int]) -> dict[str, int]:
        """Name -> size of the delayed calls in folder ``where``: names listed without a ``stat``,
        the files not in ``before`` measured (and kept only when they are this user's)."""
        sizes: dict[str, int] = {}
        uid = os.geteuid()
        try:
            with os.scandir(where) as entries:
                for entry in entries:
                    name = entry.name
                    if not name.endswith(".call") or not entry.is_file(follow_symlinks=False):
                        continue
                    size = before.get(name)
                    if size is None:
                        try:
                            info = entry.stat(follow_symlinks=False)
                        except OSError:
                            continue
                        if info.st_uid != uid:
                            continue
                        size = info.st_size
                    sizes[name] = size
        except FileNotFoundError:
            pass
        return sizes
