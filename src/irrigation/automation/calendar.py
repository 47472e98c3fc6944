"""When schedules fire: pure wall-clock arithmetic in a zone's IANA time zone.

A schedule says WHEN in the zone's local time, either as a 5-field cron expression
(``"0 6 * * 1-5"``) or as weekdays + start times (``["mon", "fri"]`` at ``["06:00"]``;
no weekdays means every day). Fire instants are computed by walking NAIVE local wall-clock
times and converting each one to UTC with ``fold=0`` (PEP 495):

* a wall time inside a spring-forward gap (02:30 on a day that jumps 02:00 -> 03:00) maps
  to the instant one hour later on the wall (03:30), so it still runs once;
* an ambiguous wall time in a fall-back fold (02:30 on a day that goes 03:00 -> 02:00) is
  generated once and ``fold=0`` picks its first (daylight-time) instant, so it runs once.

Instants are sorted after converting (gap times are not monotonic) and de-duplicated (a gap
time can coincide with a real later one: 02:30 and 03:30 on a spring-forward day both map
to the same instant, which fires once).

Nothing here reads a clock or touches the database; every function is deterministic.
"""

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, croniter
from croniter.croniter import hash_expression_re

__all__ = [
    "MAX_START_TIMES",
    "Weekday",
    "When",
    "next_after",
    "occurrences",
]

MAX_START_TIMES = 48

# How far around a window's wall-clock bounds to look: more than any DST shift (at most 2 h,
# Antarctica/Troll), so gap and fold times near the bounds are never missed. One-off
# calendar jumps (Pacific/Apia skipping 2011-12-30) are not special-cased.
_MARGIN = timedelta(hours=3)
# A weekday schedule fires at least once a week; one day covers a gap shift at the end.
_WEEKDAY_HORIZON = timedelta(days=8)
# The longest gap between matches of a valid cron expression: 29 February, which skips
# 2100 (2096 -> 2104). croniter jumps over empty months, so a long horizon costs little.
_CRON_HORIZON = timedelta(days=366 * 9)

# Instants are clamped to this range, so local wall times +- _MARGIN stay within datetime's.
_EARLIEST = datetime(1, 1, 2, tzinfo=UTC)
_LATEST = datetime(9999, 12, 30, tzinfo=UTC)

_HHMM = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")
_CRON_FIELDS = ("minute", "hour", "day-of-month", "month", "day-of-week")


class Weekday(StrEnum):
    MON = "mon"
    TUE = "tue"
    WED = "wed"
    THU = "thu"
    FRI = "fri"
    SAT = "sat"
    SUN = "sun"

    @property
    def number(self) -> int:
        """Monday is 0, as in `date.weekday()`."""
        return _WEEKDAY_ORDER.index(self)


_WEEKDAY_ORDER: tuple[Weekday, ...] = tuple(Weekday)


@dataclass(frozen=True)
class When:
    """Either a cron expression, or start times on some weekdays (none: every day).

    Build it with `When.parse` from user input; direct construction is validated too.
    Weekdays and start times are kept sorted, so equal schedules compare equal.
    """

    cron: str | None
    weekdays: tuple[Weekday, ...] = ()
    start_times: tuple[time, ...] = ()

    def __post_init__(self) -> None:
        if self.cron is not None and self.start_times:
            raise ValueError("give either a cron expression or start times, not both")
        if self.cron is None and not self.start_times:
            raise ValueError("give either a cron expression or start times")
        if self.cron is not None:
            if self.weekdays:
                raise ValueError(
                    "weekdays cannot be combined with a cron expression "
                    "(use the cron day-of-week field)"
                )
            _validate_cron(self.cron)
            return
        weekdays = tuple(Weekday(d) for d in self.weekdays)
        for d in weekdays:
            if weekdays.count(d) > 1:
                raise ValueError(f"duplicate weekday {d.value!r}")
        if len(self.start_times) > MAX_START_TIMES:
            raise ValueError(f"at most {MAX_START_TIMES} start times are allowed")
        for t in self.start_times:
            if t.tzinfo is not None or t.second or t.microsecond:
                raise ValueError("start times must be whole minutes of local time (HH:MM)")
            if self.start_times.count(t) > 1:
                raise ValueError(f"duplicate start time {t:%H:%M}")
        object.__setattr__(self, "weekdays", tuple(sorted(weekdays, key=_WEEKDAY_ORDER.index)))
        object.__setattr__(self, "start_times", tuple(sorted(self.start_times)))

    @classmethod
    def parse(
        cls,
        cron: str | None,
        weekdays: Sequence[str] | None,
        start_times: Sequence[str] | None,
    ) -> "When":
        """Validate user input; raises `ValueError` with a message fit for a 422."""
        days = tuple(_parse_weekday(d) for d in weekdays or ())
        times = tuple(_parse_start_time(t) for t in start_times or ())
        return cls(
            cron=cron.strip() if cron is not None else None, weekdays=days, start_times=times
        )


def _parse_weekday(value: str) -> Weekday:
    try:
        return Weekday(value.strip().lower())
    except ValueError:
        allowed = ", ".join(d.value for d in Weekday)
        raise ValueError(f"invalid weekday {value!r}: expected one of {allowed}") from None


def _parse_start_time(value: str) -> time:
    match = _HHMM.fullmatch(value)
    if match is None:
        raise ValueError(f"invalid start time {value!r}: expected HH:MM between 00:00 and 23:59")
    return time(int(match[1]), int(match[2]))


def _validate_cron(expr: str) -> None:
    fields = expr.split()
    if len(fields) != len(_CRON_FIELDS):
        raise ValueError(
            f"invalid cron expression {expr!r}: expected exactly 5 fields "
            f"({' '.join(_CRON_FIELDS)}); seconds, years and @-aliases are not supported"
        )
    for part in ",".join(fields).lower().split(","):
        if hash_expression_re.match(part):
            raise ValueError(
                f"invalid cron expression {expr!r}: hashed/random (H/R) values are not supported"
            )
    # strict: also reject dates that never exist ("0 0 30 2 *").
    if not croniter.is_valid(expr, strict=True):
        raise ValueError(f"invalid cron expression {expr!r}")


def _zone(tz: str) -> ZoneInfo:
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {tz!r}") from None


def _require_aware(value: datetime, name: str) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime")


def _wall(instant: datetime, zone: ZoneInfo) -> datetime:
    """The naive local wall-clock reading of an aware instant."""
    return instant.astimezone(zone).replace(tzinfo=None)


def _walls(when: When, start: datetime, end: datetime) -> Iterator[datetime]:
    """Naive wall-clock fire times with start < wall <= end, ascending."""
    if when.cron is not None:
        yield from _cron_walls(when.cron, start, end)
        return
    days = {d.number for d in when.weekdays}
    day: date = start.date()
    while True:
        if not days or day.weekday() in days:
            for t in when.start_times:
                wall = datetime.combine(day, t)
                if wall > end:
                    return
                if wall > start:
                    yield wall
        day += timedelta(days=1)


def _cron_walls(expr: str, start: datetime, end: datetime) -> Iterator[datetime]:
    # Naive datetimes: croniter does plain calendar arithmetic, no DST involved.
    # Bounding the years between matches stops a search for a rare date at the window's end.
    it = croniter(expr, start, max_years_between_matches=end.year - start.year + 1)
    while True:
        try:
            wall = it.get_next(datetime)
        except (CroniterBadDateError, ValueError, OverflowError):
            # No match within the years allowed, or the search ran past year 9999.
            return
        if wall > end:
            return
        yield wall


def occurrences(
    when: When, tz: str, after: datetime, until: datetime, limit: int = 1000
) -> list[datetime]:
    """Fire instants (aware, UTC) with after < t <= until: sorted, unique, at most `limit`
    (the earliest ones)."""
    _require_aware(after, "after")
    _require_aware(until, "until")
    if limit < 1:
        raise ValueError("limit must be at least 1")
    zone = _zone(tz)
    after, until = max(after, _EARLIEST), min(until, _LATEST)
    if until <= after:
        return []
    end = _wall(until, zone) + _MARGIN
    stop = end
    found: set[datetime] = set()
    for wall in _walls(when, _wall(after, zone) - _MARGIN, end):
        if wall > stop:
            break
        instant = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
        if after < instant <= until:
            found.add(instant)
            if len(found) == limit and stop == end:
                # A wall more than _MARGIN later maps to a later instant than any found so
                # far (offsets differ by less than _MARGIN), so the earliest `limit`
                # instants are all among the walls up to here.
                stop = min(end, wall + _MARGIN)
    return sorted(found)[:limit]


def next_after(when: When, tz: str, after: datetime) -> datetime | None:
    """The first fire instant strictly after `after` (aware, UTC), or None if there is none
    within the look-ahead horizon (8 days for weekday schedules, 9 years for cron)."""
    _require_aware(after, "after")
    horizon = _CRON_HORIZON if when.cron is not None else _WEEKDAY_HORIZON
    until = _LATEST if after >= _LATEST - horizon else after + horizon
    found = occurrences(when, tz, after, until, limit=1)
    return found[0] if found else None
