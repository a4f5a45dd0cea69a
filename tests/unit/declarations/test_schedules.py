"""Schedules declared with the mules: their checks, their record, their ticks (cronsim, a fixed clock,
across DST changes)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from uwsgiconf_mules import MulesConfigurationError, Section
from uwsgiconf_mules.declarations import parse_record
from uwsgiconf_mules.declarations.schedules import (
    ScheduleSpec,
    last_tick,
    next_ticks,
    parse_schedule,
    schedule_spec,
    ticks_between,
)

PARIS = ZoneInfo("Europe/Paris")


def ns(when: datetime) -> int:
    return int(when.timestamp()) * 1_000_000_000


def at(tick: int, tz: ZoneInfo = PARIS) -> str:
    return datetime.fromtimestamp(tick / 1e9, tz).isoformat()


def section() -> Section:
    built = Section()
    built.workers.set_mules_params(mules=['feeder.py', None, None],
                                   farms=[built.workers.mule_farm('reports', [2, 3]),
                                          built.workers.mule_farm('feed', [1])])
    return built


def test_a_schedule_is_carried_by_the_record_and_read_back_equal() -> None:
    built = section()
    built.workers.schedule('app.tasks:nightly', cron='0 3 * * MON-FRI', farm='reports', tz='Europe/Paris',
                           args=[1, 'x'], kwargs={'deep': {'a': [1, None]}}, missed='once', grace=5)
    built.workers.schedule('app.tasks:poll', every=timedelta(minutes=5), mule=3, overlap=True, host_env='ONE_HOST')
    declarations = built.mules_declarations
    assert declarations is not None
    back = parse_record(declarations.record())
    assert back.schedules == declarations.schedules and back.record() == declarations.record()
    nightly, poll = back.schedules
    assert (nightly.cron, nightly.tz, nightly.args, nightly.kwargs, nightly.missed, nightly.grace) == (
        '0 3 * * MON-FRI', 'Europe/Paris', (1, 'x'), {'deep': {'a': [1, None]}}, 'once', 5.0)
    assert (poll.every, poll.target, poll.overlap, poll.host_env) == (300.0, 'mule:3', True, 'ONE_HOST')
    assert parse_schedule(poll.record()) == poll


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"cron": "0 25 * * *", "farm": "reports"}, "field 2 (hour) '25' is not valid"),
    ({"cron": "61 * * * *", "farm": "reports"}, "field 1 (minute) '61'"),
    ({"cron": "0 3 32 * *", "farm": "reports"}, "field 3 (day-of-month) '32'"),
    ({"cron": "0 3 * FOO *", "farm": "reports"}, "field 4 (month) 'FOO'"),
    ({"cron": "0 3 * * FUN", "farm": "reports"}, "field 5 (day-of-week) 'FUN'"),
    ({"cron": "0 3 * *", "farm": "reports"}, "has 4 field(s)"),
    ({"cron": "0 0 3 * * *", "farm": "reports"}, "has 6 field(s)"),
    ({"every": 0.5, "farm": "reports"}, "every must be a timedelta or seconds from 1"),
    ({"every": 5, "cron": "* * * * *", "farm": "reports"}, "give cron= or every=, one of them"),
    ({"every": 5}, "give farm= or mule=, one of them"),
    ({"every": 5, "farm": "nope"}, "farm 'nope' is not declared (farms: feed, reports)"),
    ({"every": 5, "farm": "feed"}, "farm 'feed' has programmed mules only"),
    ({"every": 5, "mule": 1}, "mule 1 is not a dispatch mule"),
    ({"every": 5, "farm": "reports", "tz": "UTC"}, "tz applies to cron expressions only"),
    ({"cron": "* * * * *", "farm": "reports", "tz": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
    ({"every": 5, "farm": "reports", "args": [object()]}, "args and kwargs must be JSON values"),
    ({"every": 5, "farm": "reports", "args": [(1, 2)]}, "args and kwargs must be JSON values"),
    ({"every": 5, "farm": "reports", "missed": "all"}, "missed must be one of skip, once"),
    ({"every": 5, "farm": "reports", "overlap": 1}, "overlap must be True or False"),
    ({"every": 5, "farm": "reports", "host_env": "A-B"}, "host_env must be an environment variable's name"),
    ({"every": 5, "farm": "reports", "name": "a|b"}, "schedule name must be"),
])
def test_a_bad_schedule_is_refused_at_compile_naming_what_is_wrong(kwargs: dict[str, object], message: str) -> None:
    built = section()
    with pytest.raises(MulesConfigurationError) as caught:
        built.workers.schedule('app.tasks:job', **kwargs)  # type: ignore[arg-type]
    assert message in str(caught.value)
    assert "app.tasks:job" in str(caught.value) or "name" in message
    assert built.mules_declarations is not None and built.mules_declarations.schedules == ()  # nothing kept


def test_the_function_path_is_checked_and_names_are_unique() -> None:
    built = section()
    with pytest.raises(MulesConfigurationError, match=r"schedule function must be 'package\.module:function'"):
        built.workers.schedule('app.tasks.job', every=5, farm='reports')
    built.workers.schedule('app.tasks:job', every=5, farm='reports')
    with pytest.raises(MulesConfigurationError, match="declared twice: give each schedule of one function its own"):
        built.workers.schedule('app.tasks:job', every=10, farm='reports')
    built.workers.schedule('app.tasks:job', every=10, farm='reports', name='job-10')
    assert [spec.name for spec in built.mules_declarations.schedules] == ['app.tasks:job', 'job-10']


def test_a_routed_farm_takes_schedules_when_a_dispatch_mule_fires_them() -> None:
    built = Section()
    built.workers.set_mules_params(mules=1)
    built.workers.set_offload_backends(reports='rq://127.0.0.1:6379/0')
    built.workers.schedule('app.tasks:job', every=5, farm='reports')
    alone = Section()
    alone.workers.set_offload_backends(reports='rq://127.0.0.1:6379/0')
    with pytest.raises(MulesConfigurationError, match="declare at least one"):
        alone.workers.schedule('app.tasks:job', every=5, farm='reports')


def spec(**kwargs: object) -> ScheduleSpec:
    return schedule_spec('app:job', farm='f', **kwargs)  # type: ignore[arg-type]


def test_intervals_are_aligned_to_the_epoch() -> None:
    five = spec(every=300)
    start = ns(datetime(2026, 1, 1, 10, 2, 17, tzinfo=timezone.utc))
    assert [at(tick, ZoneInfo("UTC")) for tick in next_ticks(five, start, 2)] == [
        "2026-01-01T10:05:00+00:00", "2026-01-01T10:10:00+00:00"]
    assert next_ticks(five, ns(datetime(2026, 1, 1, 10, 5, tzinfo=timezone.utc)))[0] == \
        ns(datetime(2026, 1, 1, 10, 10, tzinfo=timezone.utc))  # strictly after
    assert last_tick(five, start) == ns(datetime(2026, 1, 1, 10, 0, tzinfo=timezone.utc))
    assert len(ticks_between(five, start, start + 3600 * 10**9)) == 12


def test_cron_across_the_spring_dst_change_runs_a_skipped_time_once_after_the_jump() -> None:
    # Europe/Paris, 2026-03-29: 02:00 CET -> 03:00 CEST; 02:30 does not exist that day.
    daily = spec(cron='30 2 * * *', tz='Europe/Paris')
    start = ns(datetime(2026, 3, 27, 12, 0, tzinfo=PARIS))
    assert [at(tick) for tick in next_ticks(daily, start, 4)] == [
        "2026-03-28T02:30:00+01:00", "2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00",
        "2026-03-31T02:30:00+02:00"]
    hourly = spec(cron='0 * * * *', tz='Europe/Paris')
    night = ticks_between(hourly, ns(datetime(2026, 3, 29, 0, 30, tzinfo=PARIS)),
                          ns(datetime(2026, 3, 29, 4, 30, tzinfo=PARIS)))
    assert [at(tick) for tick in night] == ["2026-03-29T01:00:00+01:00", "2026-03-29T03:00:00+02:00",
                                            "2026-03-29T04:00:00+02:00"]  # 3 runs in 3 hours of real time


def test_cron_across_the_autumn_dst_change_runs_a_repeated_time_once() -> None:
    # 2026-10-25: 03:00 CEST -> 02:00 CET; 02:30 happens twice, runs once.
    daily = spec(cron='30 2 * * *', tz='Europe/Paris')
    ticks = ticks_between(daily, ns(datetime(2026, 10, 24, 12, 0, tzinfo=PARIS)),
                          ns(datetime(2026, 10, 26, 12, 0, tzinfo=PARIS)))
    assert len(ticks) == 2
    assert ticks[1] - ticks[0] in (24 * 3600 * 10**9, 25 * 3600 * 10**9)
    assert at(ticks[0]) == "2026-10-25T02:30:00+02:00"
    assert at(ticks[1]) == "2026-10-26T02:30:00+01:00"


def test_cron_names_steps_and_ranges_against_the_library() -> None:
    weekdays = spec(cron='*/20 9-10 * JAN MON-FRI', tz='UTC')
    start = ns(datetime(2026, 1, 2, 10, 30, tzinfo=timezone.utc))  # a Friday
    assert [at(tick, ZoneInfo("UTC")) for tick in next_ticks(weekdays, start, 3)] == [
        "2026-01-02T10:40:00+00:00", "2026-01-05T09:00:00+00:00", "2026-01-05T09:20:00+00:00"]
    assert last_tick(weekdays, start) == ns(datetime(2026, 1, 2, 10, 20, tzinfo=timezone.utc))


def test_the_host_flag_says_where_a_schedule_fires() -> None:
    flagged = spec(every=5, host_env='SHOP_SCHEDULES')
    assert flagged.enabled({'SHOP_SCHEDULES': '1'}) and flagged.enabled({'SHOP_SCHEDULES': 'yes'})
    assert not flagged.enabled({}) and not flagged.enabled({'SHOP_SCHEDULES': '0'})
    assert spec(every=5).enabled({})
