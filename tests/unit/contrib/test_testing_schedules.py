"""What the declared schedules fire between two times, with a fake clock (testing.scheduled)."""

from __future__ import annotations

import sys
import types
from datetime import datetime, timezone

import pytest

from uwsgiconf_mules import Section
from uwsgiconf_mules.errors import UnknownTaskError
from uwsgiconf_mules.runtime import mule_offload
from uwsgiconf_mules.testing import ScheduleClock, run_scheduled, scheduled

UTC = timezone.utc


def declarations() -> object:
    section = Section()
    section.workers.set_mules_params(farms=section.workers.mule_farm('f', 1))
    section.workers.schedule('sched_tasks:hourly', cron='0 * * * *', farm='f', tz='UTC', args=['h'])
    section.workers.schedule('sched_tasks:hourly', name='quarter', every=900, farm='f', kwargs={'tag': 'q'})
    section.workers.schedule('sched_tasks:missing', every=3600, farm='f', name='missing')
    return section.mules_declarations


def test_the_ticks_between_two_times_in_order() -> None:
    ticks = scheduled(datetime(2026, 1, 1, 10, 0, tzinfo=UTC), datetime(2026, 1, 1, 11, 0, tzinfo=UTC),
                      declarations())  # type: ignore[arg-type]
    assert [(tick.name, tick.at.strftime("%H:%M")) for tick in ticks] == [
        ("quarter", "10:15"), ("quarter", "10:30"), ("quarter", "10:45"),
        ("sched_tasks:hourly", "11:00"), ("quarter", "11:00"), ("missing", "11:00")]
    assert ticks[3].args == ("h",) and ticks[4].kwargs == {"tag": "q"}
    with pytest.raises(ValueError, match="aware datetimes"):
        scheduled(datetime(2026, 1, 1), datetime(2026, 1, 2), declarations())  # type: ignore[arg-type]


def test_running_them_calls_the_registered_task_and_refuses_any_other(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("sched_tasks")
    calls = []

    def hourly(label: str = "", tag: str = "") -> None:
        calls.append((label, tag))

    hourly.__module__, hourly.__qualname__ = "sched_tasks", "hourly"
    module.hourly = mule_offload('f')(hourly)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "sched_tasks", module)
    clock = ScheduleClock(declarations())  # type: ignore[arg-type]
    start = datetime(2026, 1, 1, 10, 0, tzinfo=UTC).timestamp()
    assert len(run_scheduled(start, start + 1800, clock.declarations)) == 2
    assert calls == [("", "q"), ("", "q")]
    with pytest.raises(UnknownTaskError, match="schedule missing: unknown task sched_tasks:missing"):
        clock.run(start, start + 3600)
    assert calls[-2:] == [("h", ""), ("", "q")]  # run in order until the unknown one
