"""The ids of results (see :mod:`.results`): 32 hex digits, the time the call was made in
milliseconds, its ``result_ttl`` in seconds, and 48 random bits. A reader tells an expired result
from the id alone, and waits no longer than the result lives."""

from __future__ import annotations

import os
import time

from ..errors import TaskOptionError

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: workers and mules import this module, keep it cheap
if TYPE_CHECKING:
    from collections.abc import Callable

_HEX = frozenset("0123456789abcdef")
ID_SIZE = 32
"""Length of an id."""
MAX_TTL = 0xFFFFFFFF
"""The longest ``result_ttl``, in seconds (what an id carries)."""

POOL = 4096
"""Ids whose random bits are read at once (one ``os.urandom`` per 4096 ids, and after a fork)."""
_random: list[str] = []  # the random digits of the next ids, 12 each: list.pop is one C call, safe from threads


def _refill() -> str:
    """The random digits of one id, once :data:`_random` has new ones (it was empty)."""
    digits = os.urandom(6 * POOL).hex()
    _random.extend([digits[at:at + 12] for at in range(12, 12 * POOL, 12)])
    return digits[:12]


def new_id(ttl: int) -> str:
    """A new result id: the time in milliseconds, ``ttl``, 48 random bits (32 hex digits).

    :param ttl: The result's time to live, in seconds.
    """
    return id_maker(ttl)()


def id_maker(ttl: int) -> Callable[[], str]:
    """What makes the ids of one ``ttl``'s calls (a task's, on its hot path): :func:`new_id`, whose
    first 20 digits are made once per millisecond.

    :param ttl: The results' time to live, in seconds.
    """
    make = timed_id_maker(ttl)
    return lambda: make()[0]


def timed_id_maker(ttl: int) -> Callable[[], tuple[str, float]]:
    """:func:`id_maker` whose ids come with when they expire (``time.time()``, what
    :func:`id_times` gives: when the call was made plus ``ttl``), worked out once per millisecond
    with their first 20 digits: the handle of an offload checks it without parsing the id.

    :param ttl: The results' time to live, in seconds.
    """
    digits = f"{ttl:08x}"
    head: list[tuple[int, str, float]] = [(-1, "", 0.0)]  # (millisecond, its 20 digits, expiry): threads swap it whole
    clock, pop, getpid = time.time, _random.pop, os.getpid

    def make() -> tuple[str, float]:
        now = int(clock() * 1000)
        made = head[0]
        if made[0] != now:
            if _owner[0] != getpid():  # once a millisecond: forked without Python's at-fork handlers (uWSGI)
                _forked()
            head[0] = made = (now, f"{now:012x}{digits}", now / 1000 + ttl)
        try:
            return made[1] + pop(), made[2]
        except IndexError:
            return made[1] + _refill(), made[2]

    return make


_owner = [os.getpid()]  # the process whose random digits _random holds


def _forked() -> None:
    _owner[0] = os.getpid()
    _random.clear()  # the parent's random digits are not this process's: read new ones


os.register_at_fork(after_in_child=_forked)


def id_times(result_id: str) -> tuple[float, int] | None:
    """(when the call was made, its ttl) that an id of a farm of mules carries; None for any other text.

    :param result_id: The id.
    """
    if len(result_id) != ID_SIZE or not _HEX.issuperset(result_id):  # int(x, 16) takes "0x", "_", "+", spaces
        return None
    try:
        return int(result_id[:12], 16) / 1000, int(result_id[12:20], 16)
    except ValueError:
        return None


def check_ttl(key: str, value: object) -> int:
    """A task's ``result_ttl``, checked: whole seconds from 1 to :data:`MAX_TTL`.

    :param key: The task key, for the error.
    :param value: The ``result_ttl`` given.
    :raises TaskOptionError: naming the task (a ``UsageError`` and a ``ValueError``).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 1 <= value <= MAX_TTL:  # NaN too
        raise TaskOptionError(f"task {key}: result_ttl must be a number of seconds from 1 to {MAX_TTL}, not {value!r}",
                              task=key, option="result_ttl")
    return int(value)
