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
  log), so dead letters never take the room of queued calls (see :class:`.DeadLetters`).
* ``mules/``: the pid of each running dispatch mule, so that a mule that died without a clean
  stop is reported by the next one; and what each stopping mule kept and lost, so that the next
  start says when calls kept went missing in between (see :meth:`Spool.record_stop`).
* ``status/``: what each dispatch mule is running, with its per-task counters, for ``top``
  (written by :mod:`uwsgiconf_mules.runtime.metrics`, see :meth:`Spool.status_file`).

This module owns that layout: the mules, the counters, ``uwsgiconf-mules spool`` and ``top`` use
the methods of :class:`Spool`, never a path of their own.

Files in a part that are not this user's regular files (a link, another user's file) are never
read; :meth:`Spool.strangers` lists them, and a mule says so once at start.

Every file is written to ``tmp/``, flushed to disk (``fsync``) and renamed into place, so a crash
mid-write leaves no partial call where a mule looks. A file holds ``UCMS1``, a note line (the
target a queued call was sent to, or why a call is dead), then the call without this
instance's token (kind, key, NUL, body: ``_protocol.stored``): the token changes with every start,
and the spool is trusted through its directory's permissions (0700, the uWSGI user).
"""

from __future__ import annotations

# The layout: the names of its parts and files, its limits.
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
FAILED_MARK = "-f.call"
"""End of the file name of a ``failed: `` dead letter: past the quota, these go next, so that a
failure storm cannot push out the ``interrupted`` ones (and the other dead letters)."""

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: workers import this package, keep it cheap
if TYPE_CHECKING:
    from .checks import alive, problem, purge_stale, stale
    from .letters import Burst, DeadLetters, grouped, untrusted_note
    from .store import Spool, read

_LAZY = {
    "alive": "checks", "problem": "checks", "purge_stale": "checks", "stale": "checks",
    "Burst": "letters", "DeadLetters": "letters", "grouped": "letters", "untrusted_note": "letters",
    "Spool": "store", "read": "store",
}
"""Names loaded when first used: a worker that sends checks the spool once a second, and never writes to it."""


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value

__all__ = [
    "ANY",
    "DEAD_FILES",
    "DEAD_SHARE",
    "DEFAULT_LIMIT",
    "LIFECYCLE",
    "MAGIC",
    "PARTS",
    "RESERVE",
    "STALE_AFTER",
    "STATUS_DIR",
    "STOPS",
    "UNTRUSTED",
    "UNTRUSTED_MARK",
    "Burst",
    "DeadLetters",
    "Spool",
    "alive",
    "grouped",
    "problem",
    "purge_stale",
    "read",
    "stale",
    "untrusted_note",
]
