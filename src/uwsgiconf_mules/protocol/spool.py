"""The spool: calls kept on disk across reloads, stops and deploys, and calls that could not run.

A directory per uWSGI instance (``set_mules_params(spool_dir=...)``, or a default the builders
derive, see :func:`default_dir`), with three parts:

* ``queue/``: calls that were queued in a mule queue when uWSGI reloaded or stopped. Each
  dispatch mule, told to stop, moves what is queued in its queues here (see
  :mod:`uwsgiconf_mules.mule.loop`); dispatch mules of the next instance run them, oldest first,
  each claimed by exactly one mule (a rename into ``claimed/``).
* ``claimed/``: calls a mule is running. One left behind by a mule that died belongs to nobody:
  it moves to ``dead/`` with the reason, never back to ``queue/`` (it may have run).
* ``dead/``: calls that reached a mule but could not run (unknown key, import failure), with the
  reason; ``uwsgiconf-mules spool replay`` moves them back to ``queue/`` after a fix. Messages
  refused by the trust check are noted there too, marked ``untrusted`` and never replayed: their
  size, a short hash and the reason, never their bytes (they may be anyone's). ``dead/`` has a
  quota of its own (:data:`DEAD_SHARE`, :data:`DEAD_FILES`; the oldest go first, counted in the
  log), so dead letters never take the room of queued calls (see :class:`DeadLetters`).
* ``mules/``: the pid of each running dispatch mule, so that a mule that died without a clean
  stop is reported by the next one; and what each stopping mule kept and lost, so that the next
  start says when calls kept went missing in between (see :meth:`Spool.record_stop`).

Files in a part that are not this user's regular files (a link, another user's file) are never
read; :meth:`Spool.strangers` lists them, and a mule says so once at start.

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
    from collections.abc import Callable, Iterator

MAGIC = b"UCMS1\n"
"""First bytes of every spool file."""
STATUS_DIR = "status"
"""Part of the spool where dispatch mules write their per-task counters (``top`` reads them)."""
PARTS = ("queue", "claimed", "dead", "tmp", "mules")
UNTRUSTED = "untrusted: "
"""Start of the note of a dead message refused by the trust check: never replayed."""
ANY = "any"
"""Target note of a queued call whose queue is not known: any dispatch mule runs it."""
DEFAULT_LIMIT = 256 * 1024 * 1024
"""Bytes ``queue/`` may hold; past it, calls are not spooled (with a log line and a count)."""
DEAD_SHARE = 8
"""``dead/`` may hold the limit divided by this, in bytes, on top of the limit of ``queue/``."""
DEAD_FILES = 10_000
"""Most dead letters kept; past it (or past its bytes), the oldest are removed."""
RESERVE = 64 * 1024
"""Bytes a stopping mule leaves free on the spool's disk, for the record of what it kept and lost."""
STOPS = ".stop"
"""Suffix of the record a stopping mule leaves in ``mules/``: what it kept, what it lost."""

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
        _check_ancestors(self.path)
        made = not os.path.lexists(self.path)
        for path in (self.path, *(self.part(name) for name in PARTS)):
            _private_dir(path)
        self.made = self.made or made
        return made

    def strangers(self, part: str = "queue") -> list[tuple[str, str]]:
        """(name, why) of the entries of ``part`` that look like spool files but are never read:
        links, files of another user's, anything not a regular file.

        :param part: A part.
        """
        found = []
        try:
            with os.scandir(self.part(part)) as entries:
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

    def write(self, part: str, payload: bytes, note: str = ANY, *, durable: bool = True) -> str:
        """Write one call durably into ``part`` (write, fsync, rename, fsync the directory).

        :param part: ``queue`` or ``dead``.
        :param payload: The envelope without this instance's prefix: kind, key, NUL, body.
        :param note: One line: the target (``mule:N``, ``farm:NAME``, :data:`ANY`) for ``queue``,
            why it is there for ``dead``.
        :param durable: Whether to flush it to disk (False: a note of something never replayed).
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


def untrusted_note(message: bytes, reason: str) -> str:
    """The note of a dead letter refused by the trust check: the reason, its size and a short
    hash; its bytes are not kept (anyone may have sent them).

    :param message: The message refused.
    :param reason: Why.
    """
    import hashlib

    return f"{UNTRUSTED}{reason}; {len(message)} bytes, sha256 {hashlib.sha256(message).hexdigest()[:16]}"


def grouped(note: str) -> str:
    """The note of a dead letter as listings group it: an untrusted one without its size and hash.

    :param note: The note.
    """
    return note.rpartition("; ")[0] if note.startswith(UNTRUSTED) and " bytes, sha256 " in note else note


class DeadLetters:
    """``dead/`` within its quota (:attr:`Spool.dead_limit` bytes, :data:`DEAD_FILES` files): past
    it, the oldest are removed (a tenth more, so that this happens once in a while), said in the
    log with how many. What ``dead/`` holds is counted once, then kept up to date by this
    process (other mules write there too: it is counted again before anything is removed).

    :param spool: The spool.
    :param emit: Logs one line (a warning).
    """

    def __init__(self, spool: Spool, emit: Callable[[str], None]) -> None:
        self.spool = spool
        self.emit = emit
        self.held: list[int] | None = None  # [bytes, files]
        self.removed = 0

    def keep(self, payload: bytes, note: str, *, durable: bool = True) -> None:
        """Write one dead letter, then keep the quota.

        :param payload: What to keep (kind, key, NUL, body; empty for a note of an untrusted message).
        :param note: Why it is there.
        :param durable: Whether to flush it to disk.
        :raises OSError: when the disk refuses.
        """
        if self.held is None:
            self.held = self._count()
        self.spool.write("dead", payload, note, durable=durable)
        self.held[0] += len(MAGIC) + len(note.encode("utf-8", "replace")) + 1 + len(payload)
        self.held[1] += 1
        if self.held[0] > self.spool.dead_limit or self.held[1] > DEAD_FILES:
            self._prune()

    def _count(self) -> list[int]:
        entries = _scandir(self.spool.part("dead"))
        total = 0
        for entry in entries:
            try:
                total += entry.stat(follow_symlinks=False).st_size
            except OSError:
                continue
        return [total, len(entries)]

    def _prune(self) -> None:
        limit, files = self.spool.dead_limit * 9 // 10, DEAD_FILES * 9 // 10
        sized = []
        for entry in _scandir(self.spool.part("dead")):
            try:
                sized.append((entry.name, entry.path, entry.stat(follow_symlinks=False).st_size))
            except OSError:
                continue
        sized.sort()
        total, count, removed = sum(size for _, _, size in sized), len(sized), 0
        for _, path, size in sized:
            if total <= limit and count <= files:
                break
            try:
                os.unlink(path)
            except OSError:
                continue
            total, count, removed = total - size, count - 1, removed + 1
        self.held = [total, count]
        if removed:
            self.removed += removed
            self.emit(f"uwsgiconf-mules: the dead letters of the spool {self.spool.path} reached their quota "
                      f"({self.spool.dead_limit} bytes, {DEAD_FILES} files): removed the {removed} oldest "
                      f"({self.removed} so far)")


class Burst:
    """Lines said once per burst and reason: the first of each reason (up to :attr:`REASONS` of
    them) at once; then, every ``window`` seconds while more come, one line with how many more
    and why (by a thread of its own, started by the first). A burst ends after a quiet window.

    :param emit: Logs one line.
    :param window: Seconds a burst's summary covers.
    :param mule: The id of the mule that says the lines (0 outside mules), read when a summary is said.
    """

    REASONS = 20
    """Most reasons said in full in one burst; the others are only counted."""

    def __init__(self, emit: Callable[[str], None], window: float = 1.0, mule: Callable[[], int] = int) -> None:
        import _thread

        self.emit = emit
        self.mule = mule
        self.window = window
        self.lock = _thread.allocate_lock()
        self.open = False  # whether a burst is under way (its thread runs)
        self.said: set[str] = set()  # the reasons said in full in this burst
        self.more: dict[str, int] = {}  # what came after their first line: why -> how many
        self.what = "message(s)"

    def note(self, line: str, why: str, what: str = "message(s)") -> None:
        """Say ``line`` now, or count it in the burst's next summary.

        :param line: The whole line, said when its reason was not said in this burst yet.
        :param why: Its reason, for the summary.
        :param what: What is counted, for the summary.
        """
        with self.lock:
            if why in self.said or len(self.said) >= self.REASONS:
                self.more[why] = self.more.get(why, 0) + 1
                self.what = what
                return
            self.said.add(why)
            start, self.open = not self.open, True
        self.emit(line)
        if not start:
            return
        import _thread

        try:
            _thread.start_new_thread(self._later, ())
        except RuntimeError:  # no thread to be had: each line is said
            with self.lock:
                self.open = False
                self.said.clear()

    def flush(self) -> bool:
        """Say the summary of what came since the last line, if anything.

        :returns: Whether anything had come.
        """
        with self.lock:
            more, self.more = self.more, {}
        if more:
            reasons = "; ".join(f"{count} x {why}" for why, count in sorted(more.items(), key=lambda i: -i[1]))
            self.emit(f"uwsgiconf-mules: mule {self.mule()}: {sum(more.values())} more {self.what} refused in the "
                      f"last {self.window:g} s: {reasons}")
        return bool(more)

    def _later(self) -> None:
        while True:
            time.sleep(self.window)
            if not self.flush():
                with self.lock:
                    if not self.more:
                        self.open = False
                        self.said.clear()
                        return


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
    _check_private(path, os.lstat(path))


def _check_private(path: str, info: os.stat_result) -> None:
    if not stat.S_ISDIR(info.st_mode):
        raise PermissionError(f"spool: {path} is not a directory (a link or a file)")
    if info.st_uid != os.geteuid():
        raise PermissionError(f"spool: {path} belongs to uid {info.st_uid}, not to this user ({os.geteuid()})")
    if info.st_mode & 0o022:
        raise PermissionError(f"spool: {path} can be written by others (mode {info.st_mode & 0o777:o})")


def _check_ancestors(path: str) -> None:
    """Refuse a spool below a directory that someone else could rename it out of: one writable
    by others without the sticky bit, or one of another user's (root's is fine), whatever its
    mode: its owner can always change it."""
    parent = os.path.dirname(os.path.abspath(path))
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
        _check_ancestors(os.path.join(existing, "x") if existing != path else path)
        if existing == path:
            for part in (path, *(os.path.join(path, name) for name in PARTS)):
                if os.path.lexists(part):
                    _check_private(part, os.lstat(part))
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
