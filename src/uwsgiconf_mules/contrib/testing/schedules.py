"""What the declared schedules would fire between two times, with a fake clock: the test support
of schedules (``uwsgiconf_mules.testing.scheduled``, the ``mules_schedules`` fixture).

No clock is read and nothing sleeps: :func:`scheduled` computes the ticks of every schedule in
``(t0, t1]`` (with the library and the rules the mules use), and :meth:`Tick.run` calls the task as
a mule would, once it is a registered task (``mule_offload``): a schedule naming anything else
raises :class:`~uwsgiconf_mules.errors.UnknownTaskError`, as the mule refuses it. Overlap, grace and
missed ticks are the mules' (they depend on how long runs take and when the instance was down):
they are not simulated here.
"""

from __future__ import annotations

import datetime
from typing import Any

from ...declarations import Declarations, schedules as _specs
from ...errors import DeclarationsMissingError, UnknownTaskError
from ...runtime import instance as _instance, tasks as _tasks


class Tick:
    """One tick of a schedule: the call a mule would run.

    :param spec: The schedule.
    :param at: When (an aware datetime, UTC).
    """

    def __init__(self, spec: _specs.ScheduleSpec, at: datetime.datetime) -> None:
        self.spec, self.at = spec, at

    @property
    def name(self) -> str:
        """The schedule's name."""
        return self.spec.name

    @property
    def func(self) -> str:
        """The task, ``package.module:function``."""
        return self.spec.func

    @property
    def args(self) -> tuple[Any, ...]:
        """The call's positional arguments."""
        return self.spec.args

    @property
    def kwargs(self) -> dict[str, Any]:
        """The call's keyword arguments."""
        return dict(self.spec.kwargs)

    def __repr__(self) -> str:
        return f"Tick({self.name!r}, {self.at.isoformat()})"

    def run(self) -> None:
        """Call the task with the schedule's arguments, in this process; its exception propagates.

        :raises UnknownTaskError: when the schedule names a function that is not a registered task.
        """
        func = _tasks.find(self.func.encode())
        if isinstance(func, str):
            raise UnknownTaskError(f"schedule {self.name}: {func}", key=self.func)
        func(*self.spec.args, **self.spec.kwargs)


def _ns(when: datetime.datetime | float) -> int:
    if isinstance(when, datetime.datetime):
        if when.tzinfo is None:
            raise ValueError(f"scheduled() takes aware datetimes (or seconds since the epoch), not the naive {when!r}")
        return int(when.timestamp() * 1e9)
    return int(when * 1e9)


def scheduled(t0: datetime.datetime | float, t1: datetime.datetime | float,
              declarations: Declarations | None = None) -> list[Tick]:
    """The ticks of every declared schedule in ``(t0, t1]``, in time order (then declared order).

    :param t0: Start, excluded: an aware datetime, or seconds since the epoch.
    :param t1: End, included.
    :param declarations: The declarations (default: the process's, as the test modes find them:
        ``UWSGICONF_MULES_CONFIG`` or the record).
    :raises DeclarationsMissingError: when none are known.
    """
    found = declarations if declarations is not None else _instance.declarations()
    if found is None:
        raise DeclarationsMissingError("scheduled() reads the declared schedules, and no declarations are known: "
                                       "set UWSGICONF_MULES_CONFIG or pass declarations=")
    start, end = _ns(t0), _ns(t1)
    ticks = [(tick, index, spec) for index, spec in enumerate(found.schedules)
             for tick in _specs.ticks_between(spec, start, end, limit=100_000)]
    return [Tick(spec, datetime.datetime.fromtimestamp(tick / 1e9, datetime.timezone.utc))
            for tick, _, spec in sorted(ticks, key=lambda item: item[:2])]


def run_scheduled(t0: datetime.datetime | float, t1: datetime.datetime | float,
                  declarations: Declarations | None = None) -> list[Tick]:
    """Run, in order and in this process, every tick of ``(t0, t1]`` (see :func:`scheduled`).

    :param t0: Start, excluded.
    :param t1: End, included.
    :param declarations: As for :func:`scheduled`.
    :returns: The ticks run.
    """
    ticks = scheduled(t0, t1, declarations)
    for tick in ticks:
        tick.run()
    return ticks


class ScheduleClock:
    """What the ``mules_schedules`` fixture gives: :func:`scheduled` and :func:`run_scheduled`
    over the declarations of the test's configuration.

    :param declarations: The declarations.
    """

    def __init__(self, declarations: Declarations) -> None:
        self.declarations = declarations

    def between(self, t0: datetime.datetime | float, t1: datetime.datetime | float) -> list[Tick]:
        """The ticks in ``(t0, t1]`` (see :func:`scheduled`).

        :param t0: Start, excluded.
        :param t1: End, included.
        """
        return scheduled(t0, t1, self.declarations)

    def run(self, t0: datetime.datetime | float, t1: datetime.datetime | float) -> list[Tick]:
        """Run the ticks in ``(t0, t1]`` (see :func:`run_scheduled`).

        :param t0: Start, excluded.
        :param t1: End, included.
        """
        return run_scheduled(t0, t1, self.declarations)
