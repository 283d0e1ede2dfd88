"""devstack.ncrontab: the timer schedules of the local functions host — next occurrences as NCrontab computes them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from devstack.ncrontab import CronSchedule, IntervalSchedule, ScheduleError, parse


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def occurrences(schedule: str, start: str, n: int) -> list[str]:
    s, t, out = parse(schedule), at(start), []
    for _ in range(n):
        t = s.next_after(t)
        out.append(t.strftime("%Y-%m-%d %a %H:%M:%S"))
    return out


@pytest.mark.parametrize(("schedule", "start", "expected"), [
    ("0 */5 * * * *", "2026-03-01T10:02:30", ["2026-03-01 Sun 10:05:00", "2026-03-01 Sun 10:10:00",
                                              "2026-03-01 Sun 10:15:00"]),
    ("0 */5 * * * *", "2026-03-01T10:05:00", ["2026-03-01 Sun 10:10:00"]),  # strictly after
    ("0 */5 * * * *", "2026-12-31T23:58:59", ["2027-01-01 Fri 00:00:00"]),
    ("5-7 * * * * *", "2026-03-01T10:00:06", ["2026-03-01 Sun 10:00:07", "2026-03-01 Sun 10:01:05"]),
    ("5,8,10 * * * * *", "2026-03-01T10:00:09", ["2026-03-01 Sun 10:00:10", "2026-03-01 Sun 10:01:05"]),
    ("0 0 9 * * Mon-Fri", "2026-03-06T09:00:00", ["2026-03-09 Mon 09:00:00", "2026-03-10 Tue 09:00:00"]),
    ("0 0 9 * * 1-5", "2026-03-06T09:00:00", ["2026-03-09 Mon 09:00:00"]),
    ("0 30 9 1 Jan *", "2026-03-01T00:00:00", ["2027-01-01 Fri 09:30:00"]),
    ("0 0 0 29 February *", "2026-01-01T00:00:00", ["2028-02-29 Tue 00:00:00"]),
    ("0 0 0 * * sunday", "2026-03-01T00:00:00", ["2026-03-08 Sun 00:00:00"]),
    ("0 10-20/5 * * * *", "2026-03-01T10:20:00", ["2026-03-01 Sun 11:10:00"]),
    ("30/15 0 0 * * *", "2026-03-01T00:00:00", ["2026-03-01 Sun 00:00:30", "2026-03-01 Sun 00:00:45",
                                                "2026-03-02 Mon 00:00:30"]),
    ("* * * * * *", "2026-03-01T10:00:00.900", ["2026-03-01 Sun 10:00:01"]),
])
def test_next_occurrences(schedule: str, start: str, expected: list[str]) -> None:
    assert occurrences(schedule, start, len(expected)) == expected


def test_day_of_month_and_day_of_week_restrict_together() -> None:
    """NCrontab ANDs the two day fields (classic cron would fire on every 13th *and* every Friday)."""
    assert occurrences("0 0 0 13 * Fri", "2026-01-01T00:00:00", 2) == ["2026-02-13 Fri 00:00:00",
                                                                      "2026-03-13 Fri 00:00:00"]


def test_timespan_is_an_interval() -> None:
    s = parse("00:00:30")
    assert isinstance(s, IntervalSchedule) and s.interval == timedelta(seconds=30)
    assert s.next_after(at("2026-03-01T10:00:00.250")) == at("2026-03-01T10:00:30.250")
    assert parse("1.02:00:00").interval == timedelta(days=1, hours=2)  # type: ignore[union-attr]


def test_fields_are_parsed_to_value_sets() -> None:
    s = parse("0 */20 8-10 1,15 * 0")
    assert isinstance(s, CronSchedule)
    assert s.minutes == {0, 20, 40} and s.hours == {8, 9, 10} and s.days == {1, 15} and s.weekdays == {0}
    assert s.months == set(range(1, 13)) and s.seconds == {0}


@pytest.mark.parametrize("bad", [
    "0 */5 * * *", "0 0 0 0 0 0 0", "60 * * * * *", "* * 24 * * *", "* * * 0 * *", "* * * * 13 *",
    "* * * * * 7", "*/0 * * * * *", "5-1 * * * * *", "a * * * * *", "* * * * Ja *", "1,,2 * * * * *",
    "00:00:00", "00:61:00", "",
])
def test_invalid_schedules_are_refused(bad: str) -> None:
    with pytest.raises(ScheduleError):
        parse(bad)


def test_a_schedule_that_never_occurs_says_so() -> None:
    with pytest.raises(ScheduleError, match="no occurrence"):
        parse("0 0 0 30 2 *").next_after(at("2026-01-01T00:00:00"))


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError):
        parse("* * * * * *").next_after(datetime(2026, 1, 1))
