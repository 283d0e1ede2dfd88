"""Timer-trigger schedules as the Functions host reads them, for devstack.functions_host.

- NCRONTAB, six fields `{second} {minute} {hour} {day} {month} {day-of-week}`, each `*`, a number, a range `a-b`,
  a list `a,b,…`, and steps `*/n` or `a-b/n` (`a/n` means `a-max/n`). Months and days of the week also take English
  names, case-insensitive, full or three-letter (`Jan`, `monday`); days of the week are 0–6 from Sunday.
  As in the NCrontab library the host uses, a time matches only if *every* field matches: day-of-month and
  day-of-week restrict together (classic cron ORs them when both are restricted).
- A TimeSpan `hh:mm:ss` (or `d.hh:mm:ss`): an interval, the next occurrence one interval after the last one.

Times are UTC (the host's default without WEBSITE_TIME_ZONE, which is not emulated).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

_MONTHS = ["january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
           "november", "december"]
_DAYS = ["sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday"]
# (name, lowest, highest, names by value offset)
_FIELDS: tuple[tuple[str, int, int, list[str] | None], ...] = (
    ("second", 0, 59, None), ("minute", 0, 59, None), ("hour", 0, 23, None), ("day", 1, 31, None),
    ("month", 1, 12, _MONTHS), ("day-of-week", 0, 6, _DAYS))
_TIMESPAN = re.compile(r"^(?:(\d+)\.)?(\d{1,2}):(\d{2}):(\d{2})$")
_SEARCH_LIMIT = timedelta(days=366 * 5)  # a schedule with no occurrence in 5 years has none (e.g. `0 0 0 30 2 *`)


class ScheduleError(ValueError):
    pass


def _value(token: str, field: str, low: int, high: int, names: list[str] | None) -> int:
    if token.isdigit():
        number = int(token)
    elif names is not None:
        matches = [i for i, n in enumerate(names) if len(token) >= 3 and n.startswith(token.lower())]
        if len(matches) != 1:
            raise ScheduleError(f"{field}: {token!r} is not a number or a {field} name")
        number = matches[0] + low
    else:
        raise ScheduleError(f"{field}: {token!r} is not a number")
    if not low <= number <= high:
        raise ScheduleError(f"{field}: {number} is outside {low}-{high}")
    return number


def _field(text: str, field: str, low: int, high: int, names: list[str] | None) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        if not part:
            raise ScheduleError(f"{field}: empty list item in {text!r}")
        base, slash, step_text = part.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) == 0:
                raise ScheduleError(f"{field}: step {step_text!r} must be a positive number")
            step = int(step_text)
        if base == "*":
            start, end = low, high
        elif "-" in base:
            a, _, b = base.partition("-")
            start, end = _value(a, field, low, high, names), _value(b, field, low, high, names)
            if start > end:
                raise ScheduleError(f"{field}: range {base!r} runs backwards")
        else:
            start = _value(base, field, low, high, names)
            end = high if slash else start
        values.update(range(start, end + 1, step))
    return frozenset(values)


@dataclass(frozen=True)
class CronSchedule:
    seconds: frozenset[int]
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    text: str

    def matches(self, t: datetime) -> bool:
        return (t.second in self.seconds and t.minute in self.minutes and t.hour in self.hours
                and self._day_matches(t))

    def _day_matches(self, t: datetime) -> bool:
        return t.month in self.months and t.day in self.days and (t.isoweekday() % 7) in self.weekdays

    def next_after(self, after: datetime) -> datetime:
        """The first occurrence strictly after `after` (an aware datetime; the answer is UTC)."""
        start = _utc(after).replace(microsecond=0) + timedelta(seconds=1)
        t, limit = start, start + _SEARCH_LIMIT
        while t < limit:
            if not self._day_matches(t):
                t = (t + timedelta(days=1)).replace(hour=0, minute=0, second=0)
            elif t.hour not in self.hours:
                t = (t + timedelta(hours=1)).replace(minute=0, second=0)
            elif t.minute not in self.minutes:
                t = (t + timedelta(minutes=1)).replace(second=0)
            elif t.second not in self.seconds:
                t += timedelta(seconds=1)
            else:
                return t
        raise ScheduleError(f"schedule {self.text!r} has no occurrence within five years of {start.isoformat()}")


@dataclass(frozen=True)
class IntervalSchedule:
    interval: timedelta
    text: str

    def next_after(self, after: datetime) -> datetime:
        return _utc(after) + self.interval


Schedule = CronSchedule | IntervalSchedule


def _utc(t: datetime) -> datetime:
    if t.tzinfo is None:
        raise ValueError("give an aware datetime")
    return t.astimezone(UTC)


def parse(text: str) -> Schedule:
    """An NCRONTAB expression (six fields) or a TimeSpan interval; ScheduleError says what is wrong."""
    text = text.strip()
    span = _TIMESPAN.match(text)
    if span:
        days, hours, minutes, seconds = (int(g) if g else 0 for g in span.groups())
        if hours > 23 or minutes > 59 or seconds > 59:
            raise ScheduleError(f"TimeSpan {text!r} is out of range")
        interval = timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
        if interval <= timedelta(0):
            raise ScheduleError(f"TimeSpan {text!r} must be positive")
        return IntervalSchedule(interval, text)
    fields = text.split()
    if len(fields) != 6:
        raise ScheduleError(f"{text!r}: an NCRONTAB expression has six fields "
                            "({second} {minute} {hour} {day} {month} {day-of-week}), "
                            f"this one has {len(fields)}")
    parsed = [_field(f, name, low, high, names) for f, (name, low, high, names) in zip(fields, _FIELDS, strict=True)]
    return CronSchedule(parsed[0], parsed[1], parsed[2], parsed[3], parsed[4], parsed[5], text)
