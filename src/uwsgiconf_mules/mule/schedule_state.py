"""The state files of schedules in the spool (``<spool>/schedules/<id>.json``), read and written
under their lock, and the names of the schedules' calls in ``delayed/`` (see
:mod:`uwsgiconf_mules.mule.schedules`, which fires them, and ``uwsgiconf-mules top``, which reads
the counters kept there).
"""

from __future__ import annotations

import contextlib
import json
import os

from ..protocol import spool as _spool
from ..protocol.spool import checks as _checks, delayed as _delayed

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: mules import this module, keep it cheap
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

    from ..declarations import schedules as _specs

__all__ = ["DIR", "locked", "read_state", "schedule_of", "state_path", "tick_name"]

DIR = "schedules"
"""The spool's folder of the schedules' state files."""


def state_path(spool: _spool.Spool, spec: _specs.ScheduleSpec) -> str:
    """The state file of a schedule.

    :param spool: The spool.
    :param spec: The schedule.
    """
    return os.path.join(spool.path, DIR, f"{spec.file_id}.json")


def tick_name(spec: _specs.ScheduleSpec, tick_ns: int) -> str:
    """The file name of a tick's call in ``delayed/`` (one that ``delayed.valid_name`` accepts: pid 0).

    :param spec: The schedule.
    :param tick_ns: The tick.
    """
    return f"{tick_ns:0{_delayed.DUE_DIGITS}d}-0-{spec.file_id}.call"


def schedule_of(file_name: str) -> str | None:
    """The schedule number (``file_id``) in the name of a tick's call, or None for another call.

    :param file_name: A name of ``delayed/`` or ``claimed/``.
    """
    head, _, rest = file_name.removesuffix(".call").rpartition("-0-")
    return rest if head and len(rest) == 13 and rest.isdigit() else None


def read_state(path: str) -> dict[str, Any]:
    """A schedule's state (empty when there is none, or it cannot be read).

    :param path: Its state file.
    """
    try:
        with open(path, "rb") as handle:
            found = json.loads(handle.read() or b"{}")
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


@contextlib.contextmanager
def locked(path: str) -> Iterator[dict[str, Any]]:
    """The state of a schedule, read and written back under its lock (``flock``: the farm's mules
    and two generations of them take turns).

    :param path: Its state file.
    """
    import fcntl

    _checks.private_dir(os.path.dirname(path))
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        data = os.pread(fd, 1 << 16, 0)
        try:
            state = json.loads(data) if data.strip() else {}
        except ValueError:
            state = {}
        before = dict(state)
        yield state
        if state != before:
            text = json.dumps(state, sort_keys=True).encode()
            os.pwrite(fd, text.ljust(len(data)), 0)  # spaces over the old end: killed before the cut, it reads
            os.ftruncate(fd, len(text))
    finally:
        os.close(fd)  # releases the lock
