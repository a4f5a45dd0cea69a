"""The spool's layout: the names of its parts and files, its limits."""

from __future__ import annotations

MAGIC = b"UCMS1\n"
"""First bytes of every spool file."""
STATUS_DIR = "status"
"""Part of the spool where dispatch mules write their per-task counters (``top`` reads them)."""
PARTS = ("queue", "claimed", "dead", "tmp", "mules", "delayed")  # delayed/: see protocol.spool.delayed
UNTRUSTED = "untrusted: "
"""Start of the note of a dead message refused by the trust check: never replayed."""
LIFECYCLE = ("failed: ", "interrupted: ")
"""Starts of the notes of dead letters of calls that ran: failed on their last attempt, or
interrupted (their mule died during the call)."""
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
STALE_AFTER = 600.0
"""Seconds a spool must have been left unchanged before :func:`stale` calls it stale."""
UNTRUSTED_MARK = "-u.call"
"""End of the file name of a note of an untrusted message: past the quota of ``dead/``, these go
first, so that a flood of forged messages cannot push out the dead letters of real calls."""
