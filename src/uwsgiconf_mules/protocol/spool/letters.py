"""What a dispatch mule says and keeps of the messages it refuses: dead letters within their quota
(:class:`DeadLetters`, in the spool's ``dead/``), the note of an untrusted one, and refusals said
once per burst (:class:`Burst`)."""

from __future__ import annotations

import os
import time

from . import DEAD_FILES, FAILED_MARK, LIFECYCLE, MAGIC, UNTRUSTED, UNTRUSTED_MARK
from .store import Spool, _name, _scandir

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: workers and mules import this module, keep it cheap
if TYPE_CHECKING:
    from collections.abc import Callable


def untrusted_note(message: bytes, reason: str) -> str:
    """The note of a dead letter refused by the trust check: the reason, its size and a short
    hash; its bytes are not kept (anyone may have sent them).

    :param message: The message refused.
    :param reason: Why.
    """
    import hashlib

    return f"{UNTRUSTED}{reason}; {len(message)} bytes, sha256 {hashlib.sha256(message).hexdigest()[:16]}"


def grouped(note: str) -> str:
    """The note of a dead letter as listings group it: an untrusted one without its size and hash;
    a failed or interrupted call by task and kind (see ``runtime.policy``).

    :param note: The note.
    """
    if note.startswith(LIFECYCLE):
        return note.partition(" | ")[0].partition(" (")[0]
    return note.rpartition("; ")[0] if note.startswith(UNTRUSTED) and " bytes, sha256 " in note else note


class DeadLetters:
    """``dead/`` within its quota (:attr:`Spool.dead_limit` bytes, :data:`DEAD_FILES` files): past
    it, the oldest are removed (a tenth more, so that this happens once in a while; notes of
    untrusted messages before any dead letter of a real call), said in the log with how many. What
    ``dead/`` holds is counted once, then kept up to date by this process (other mules write there
    too: it is counted again before anything is removed). Safe across threads: a dispatch mule keeps
    dead letters from its loop and from its timer thread (interrupted calls), one at a time under
    :attr:`lock`.

    :param spool: The spool.
    :param emit: Logs one line (a warning).
    """

    def __init__(self, spool: Spool, emit: Callable[[str], None]) -> None:
        import _thread

        self.spool = spool
        self.emit = emit
        self.held: list[int] | None = None  # [bytes, files]
        self.removed = 0
        self.lock = _thread.allocate_lock()

    def keep(self, payload: bytes, note: str, *, durable: bool = True) -> None:
        """Write one dead letter, then keep the quota.

        :param payload: What to keep (kind, key, NUL, body; empty for a note of an untrusted message).
        :param note: Why it is there.
        :param durable: Whether to flush it to disk.
        :raises OSError: when the disk refuses.
        """
        with self.lock:
            if self.held is None:
                self.held = self._count()
            name = _name()[:-len(".call")] + FAILED_MARK if note.startswith(LIFECYCLE[0]) else ""
            self.spool.write("dead", payload, note, durable=durable, name=name)
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
        # Untrusted notes first, then failed calls, then the rest (interrupted calls, refused ones), oldest first.
        sized.sort(key=lambda item: (not item[0].endswith(UNTRUSTED_MARK), not item[0].endswith(FAILED_MARK),
                                     item[0]))
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


OTHERS = "other reasons"
"""What a summary counts the reasons under once it names :attr:`Burst.REASONS` of them."""


class Burst:
    """Lines said once per burst and reason: the first of each reason (up to :attr:`REASONS` of
    them) at once; then, every ``window`` seconds while more come, one line with how many more
    and why (by a thread of its own, started by the first). A burst ends after a quiet window.

    :param emit: Logs one line.
    :param window: Seconds a burst's summary covers.
    :param mule: The id of the mule that says the lines (0 outside mules), read when a summary is said.
    """

    REASONS = 20
    """Most reasons said in full in one burst, and most counted by name in one summary; the others
    are only counted (as :data:`OTHERS`)."""

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
                if why in self.more or len(self.more) < self.REASONS:
                    self.more[why] = self.more.get(why, 0) + 1
                else:  # a flood of reasons (they may quote what was sent): counted, never kept one by one
                    self.more[OTHERS] = self.more.get(OTHERS, 0) + 1
                self.what = what
                return
            self.said.add(why)
            start, self.open = not self.open, True
        self.emit(line)
        if not start:
            return
        from ... import _threads

        try:
            _threads.start(self._later)
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
