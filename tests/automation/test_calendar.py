"""When schedules fire: pure tests (no database), with every DST edge spelled out in UTC.

Rule from the issue: times are in the zone's time zone; a 02:30 run on a spring-forward day
still runs once, and a fall-back day does not run it twice.
"""

import re
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from irrigation.automation.calendar import (
    MAX_START_TIMES,
    Weekday,
    When,
    next_after,
    occurrences,
)

BERLIN = "Europe/Berlin"  # 2026-03-29 02:00 CET -> 03:00 CEST; 2026-10-25 03:00 -> 02:00
NEW_YORK = "America/New_York"  # 2026-03-08 02:00 EST -> 03:00 EDT; 2026-11-01 02:00 -> 01:00


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def times(*start_times: str, weekdays: list[str] | None = None) -> When:
    return When.parse(None, weekdays, list(start_times))


def cron(expr: str) -> When:
    return When.parse(expr, None, None)


def fires(when: When, tz: str, after: datetime, until: datetime) -> list[datetime]:
    return occurrences(when, tz, after, until)


# --- Europe/Berlin, spring forward 2026-03-29 (02:00 CET -> 03:00 CEST) ------------------

SPRING_BERLIN = (utc(2026, 3, 27, 12), utc(2026, 3, 30, 12))


@pytest.mark.parametrize("when", [times("02:30"), cron("30 2 * * *")], ids=["times", "cron"])
def test_berlin_spring_forward_gap_time_runs_once(when: When) -> None:
    assert fires(when, BERLIN, *SPRING_BERLIN) == [
        utc(2026, 3, 28, 1, 30),  # 02:30 CET
        utc(2026, 3, 29, 1, 30),  # 02:30 does not exist: runs at 03:30 CEST
        utc(2026, 3, 30, 0, 30),  # 02:30 CEST
    ]


@pytest.mark.parametrize(
    "when", [times("02:30", "03:30"), cron("30 2,3 * * *")], ids=["times", "cron"]
)
def test_berlin_spring_forward_gap_time_coinciding_with_a_real_time_fires_once(
    when: When,
) -> None:
    assert fires(when, BERLIN, *SPRING_BERLIN) == [
        utc(2026, 3, 28, 1, 30),
        utc(2026, 3, 28, 2, 30),
        utc(2026, 3, 29, 1, 30),  # 02:30 (shifted to 03:30 CEST) and 03:30 CEST: one run
        utc(2026, 3, 30, 0, 30),
        utc(2026, 3, 30, 1, 30),
    ]


@pytest.mark.parametrize(
    ("wall", "expected"),
    [
        ("01:59", utc(2026, 3, 29, 0, 59)),  # CET, just before the jump
        ("02:00", utc(2026, 3, 29, 1, 0)),  # gap: 03:00 CEST
        ("02:15", utc(2026, 3, 29, 1, 15)),  # gap: 03:15 CEST
        ("02:59", utc(2026, 3, 29, 1, 59)),  # gap: 03:59 CEST
        ("03:00", utc(2026, 3, 29, 1, 0)),  # CEST
    ],
)
def test_berlin_spring_forward_every_wall_time_of_the_night(wall: str, expected: datetime) -> None:
    day = (utc(2026, 3, 28, 23), utc(2026, 3, 29, 22))
    assert fires(times(wall), BERLIN, *day) == [expected]


def test_gap_times_are_sorted_after_converting() -> None:
    # Generated in wall order 02:30, 03:00, but 02:30 (-> 03:30 CEST) is the later instant.
    day = (utc(2026, 3, 28, 23), utc(2026, 3, 29, 22))
    expected = [utc(2026, 3, 29, 1, 0), utc(2026, 3, 29, 1, 30)]
    assert fires(times("02:30", "03:00"), BERLIN, *day) == expected
    assert fires(cron("0,30 2-3 * * *"), BERLIN, *day) == expected  # 02:00 coincides w/ 03:00
    # The limit keeps the earliest instants, not the first-generated ones.
    assert occurrences(times("02:30", "03:00"), BERLIN, *day, limit=1) == expected[:1]


# --- Europe/Berlin, fall back 2026-10-25 (03:00 CEST -> 02:00 CET) -----------------------

FALL_BERLIN = (utc(2026, 10, 23, 12), utc(2026, 10, 26, 12))


@pytest.mark.parametrize(
    "when", [times("01:30", "02:30", "03:30"), cron("30 1-3 * * *")], ids=["times", "cron"]
)
def test_berlin_fall_back_each_time_runs_once(when: When) -> None:
    assert fires(when, BERLIN, *FALL_BERLIN) == [
        # 24 October, CEST (+2)
        utc(2026, 10, 23, 23, 30),
        utc(2026, 10, 24, 0, 30),
        utc(2026, 10, 24, 1, 30),
        # 25 October: 01:30 CEST, 02:30 CEST only (not again at 02:30 CET), 03:30 CET
        utc(2026, 10, 24, 23, 30),
        utc(2026, 10, 25, 0, 30),
        utc(2026, 10, 25, 2, 30),
        # 26 October, CET (+1)
        utc(2026, 10, 26, 0, 30),
        utc(2026, 10, 26, 1, 30),
        utc(2026, 10, 26, 2, 30),
    ]


def test_berlin_fall_back_the_repeated_hour_does_not_fire_again() -> None:
    # A window opening during the second pass through 02:00-03:00 (now CET): the 02:30 run
    # already happened at 00:30 UTC, during the first pass.
    second_pass = (utc(2026, 10, 25, 1, 0), utc(2026, 10, 25, 2, 0))  # 02:00-03:00 CET
    assert fires(times("02:30"), BERLIN, *second_pass) == []
    assert fires(cron("30 2 * * *"), BERLIN, *second_pass) == []
    first_pass = (utc(2026, 10, 25, 0, 0), utc(2026, 10, 25, 1, 0))  # 02:00-03:00 CEST
    assert fires(times("02:30"), BERLIN, *first_pass) == [utc(2026, 10, 25, 0, 30)]


# --- America/New_York, 2026-03-08 and 2026-11-01 ------------------------------------------


@pytest.mark.parametrize("when", [times("02:30"), cron("30 2 * * *")], ids=["times", "cron"])
def test_new_york_spring_forward(when: When) -> None:
    assert fires(when, NEW_YORK, utc(2026, 3, 6, 12), utc(2026, 3, 9, 12)) == [
        utc(2026, 3, 7, 7, 30),  # 02:30 EST
        utc(2026, 3, 8, 7, 30),  # 02:30 does not exist: runs at 03:30 EDT
        utc(2026, 3, 9, 6, 30),  # 02:30 EDT
    ]


@pytest.mark.parametrize("when", [times("01:30"), cron("30 1 * * *")], ids=["times", "cron"])
def test_new_york_fall_back(when: When) -> None:
    assert fires(when, NEW_YORK, utc(2026, 10, 30, 12), utc(2026, 11, 2, 12)) == [
        utc(2026, 10, 31, 5, 30),  # 01:30 EDT
        utc(2026, 11, 1, 5, 30),  # 01:30 EDT only, not again at 01:30 EST (06:30 UTC)
        utc(2026, 11, 2, 6, 30),  # 01:30 EST
    ]


def test_new_york_fall_back_night_wall_times() -> None:
    day = (utc(2026, 11, 1, 4), utc(2026, 11, 1, 12))
    assert fires(times("01:00", "01:59", "02:00"), NEW_YORK, *day) == [
        utc(2026, 11, 1, 5, 0),  # 01:00 EDT
        utc(2026, 11, 1, 5, 59),  # 01:59 EDT
        utc(2026, 11, 1, 7, 0),  # 02:00 exists once, in EST
    ]


# --- cron every 30 minutes across DST nights ---------------------------------------------


def _half_hours(after: datetime, until: datetime) -> list[datetime]:
    """Every real :00/:30 instant in (after, until], for zones with whole-hour offsets."""
    t = after.replace(minute=0, second=0, microsecond=0)
    out = []
    while t <= until:
        if t > after and t.minute in (0, 30):
            out.append(t)
        t += timedelta(minutes=30)
    return out


def test_cron_half_hourly_across_fall_back_night() -> None:
    """Each wall-clock slot fires once, so the repeated hour is NOT run twice.

    22:00 CEST (20:00 UTC) to 06:00 CET (05:00 UTC) is 9 real hours, 18 half-hour instants,
    but only 8 wall-clock hours: 16 slots (22:30 ... 06:00). The slots 02:00 and 02:30 exist
    twice; each is generated once and runs at its first (CEST) instant, so the real
    half-hours 01:00 and 01:30 UTC (02:00 and 02:30 CET, the repeat) get no run. This is the
    issue's rule ("a fall-back day does not run it twice") applied to every slot, and keeps
    the count equal to the naive wall-clock count, which is what a schedule author reads.
    """
    after, until = utc(2026, 10, 24, 20), utc(2026, 10, 25, 5)
    got = fires(cron("*/30 * * * *"), BERLIN, after, until)
    assert len(got) == 16
    assert got == sorted(set(got))
    assert set(_half_hours(after, until)) - set(got) == {
        utc(2026, 10, 25, 1, 0),
        utc(2026, 10, 25, 1, 30),
    }


def test_cron_half_hourly_across_spring_forward_night() -> None:
    """22:00 CET (21:00 UTC) to 07:00 CEST (05:00 UTC): 8 real hours, 16 instants. The 18
    wall-clock slots include 02:00 and 02:30, which do not exist: they shift to 03:00 and
    03:30 CEST, coinciding with those slots, so each instant fires once and none is lost."""
    after, until = utc(2026, 3, 28, 21), utc(2026, 3, 29, 5)
    got = fires(cron("*/30 * * * *"), BERLIN, after, until)
    assert got == _half_hours(after, until)
    assert len(got) == 16


def test_cron_half_hourly_across_new_york_fall_back_night() -> None:
    # 22:00 EDT (02:00 UTC) to 06:00 EST (11:00 UTC): 9 real hours, 8 wall hours -> 16 slots;
    # the repeated 01:00 and 01:30 EST (06:00 and 06:30 UTC) do not run.
    after, until = utc(2026, 11, 1, 2), utc(2026, 11, 1, 11)
    got = fires(cron("*/30 * * * *"), NEW_YORK, after, until)
    assert len(got) == 16
    assert set(_half_hours(after, until)) - set(got) == {
        utc(2026, 11, 1, 6, 0),
        utc(2026, 11, 1, 6, 30),
    }


# --- invariants over whole years, several zones ------------------------------------------

ZONES = [
    BERLIN,
    NEW_YORK,
    "UTC",
    "Australia/Lord_Howe",  # 30-minute DST shift
    "Antarctica/Troll",  # 2-hour DST shift (+00 -> +02)
    "Asia/Kolkata",  # +05:30, no DST
    "Pacific/Chatham",  # +12:45 / +13:45
]


@pytest.mark.parametrize("tz", ZONES)
@pytest.mark.parametrize("wall", ["00:00", "01:30", "02:00", "02:30", "03:00", "23:59"])
def test_a_daily_time_fires_exactly_once_per_local_day_all_year(tz: str, wall: str) -> None:
    zone = ZoneInfo(tz)
    # The whole local year 2026 (after is exclusive, until inclusive: shift by a second).
    start = datetime(2026, 1, 1, tzinfo=zone).astimezone(UTC) - timedelta(seconds=1)
    end = datetime(2027, 1, 1, tzinfo=zone).astimezone(UTC) - timedelta(seconds=1)
    got = fires(times(wall), tz, start, end)
    # Exactly once per local day, unless a gap time shifts onto the next day (never here).
    assert len(got) == 365
    assert [t.astimezone(zone).date() for t in got] == [
        (datetime(2026, 1, 1) + timedelta(days=i)).date() for i in range(365)
    ]
    assert all(t.tzinfo is UTC for t in got)


@pytest.mark.parametrize("tz", [BERLIN, NEW_YORK, "Australia/Lord_Howe", "Antarctica/Troll"])
@pytest.mark.parametrize(
    "when",
    [
        times("01:30", "02:00", "02:30", "03:00", "03:30"),
        times("02:30", weekdays=["sun"]),
        cron("*/30 0-4 * * *"),
        cron("15 2 * * 0"),
    ],
    ids=["times", "sunday-times", "cron-30min", "cron-sunday"],
)
@pytest.mark.parametrize(
    # Both DST changes of every zone here: EU/Troll 29 Mar + 25 Oct, US 8 Mar + 1 Nov,
    # Lord Howe 5 Apr + 4 Oct.
    ("start", "end"),
    [(utc(2026, 3, 1), utc(2026, 4, 15)), (utc(2026, 9, 25), utc(2026, 11, 10))],
    ids=["spring", "autumn"],
)
def test_windows_split_anywhere_and_next_after_chain_agree(
    tz: str, when: When, start: datetime, end: datetime
) -> None:
    whole = occurrences(when, tz, start, end, limit=100_000)
    assert whole == sorted(set(whole))
    # Split the period at odd instants (every 7h13m lands in and around each DST night).
    pieces: list[datetime] = []
    a = start
    while a < end:
        b = min(a + timedelta(hours=7, minutes=13), end)
        pieces += fires(when, tz, a, b)
        a = b
    assert pieces == whole
    # Chaining next_after reproduces the same list.
    chain = []
    t = next_after(when, tz, start)
    while t is not None and t <= end:
        chain.append(t)
        t = next_after(when, tz, t)
    assert chain == whole


# --- weekdays -----------------------------------------------------------------------------

# Monday 2026-03-02 00:00 CET to Monday 2026-03-16 00:00 CET: two whole local weeks.
MARCH_2_TO_15 = (utc(2026, 3, 1, 23), utc(2026, 3, 15, 23))


def test_weekdays_filter() -> None:
    got = fires(times("06:00", weekdays=["mon", "wed", "fri"]), BERLIN, *MARCH_2_TO_15)
    assert got == [utc(2026, 3, d, 5) for d in (2, 4, 6, 9, 11, 13)]  # 06:00 CET
    assert {t.astimezone(ZoneInfo(BERLIN)).strftime("%a") for t in got} == {"Mon", "Wed", "Fri"}


def test_weekday_is_the_local_day_not_the_utc_day() -> None:
    # 00:30 on a Monday in Berlin is 23:30 UTC on the Sunday.
    got = fires(times("00:30", weekdays=["mon"]), BERLIN, *MARCH_2_TO_15)
    assert got == [utc(2026, 3, 1, 23, 30), utc(2026, 3, 8, 23, 30)]


@pytest.mark.parametrize("weekdays", [None, [], [d.value for d in Weekday]])
def test_no_weekdays_means_every_day(weekdays: list[str] | None) -> None:
    got = fires(times("06:00", "18:30", weekdays=weekdays), BERLIN, *MARCH_2_TO_15)
    assert len(got) == 28
    assert got[:2] == [utc(2026, 3, 2, 5), utc(2026, 3, 2, 17, 30)]


def test_parse_normalises() -> None:
    a = When.parse(None, ["FRI", " mon"], ["18:30", "06:00"])
    b = When.parse(None, ["mon", "fri"], ["06:00", "18:30"])
    assert a == b
    assert a.weekdays == (Weekday.MON, Weekday.FRI)
    assert a.start_times == (time(6, 0), time(18, 30))
    assert a.cron is None
    assert When.parse(" 0 6 * * 1-5 ", [], []) == When(cron="0 6 * * 1-5")
    assert Weekday.MON.number == 0
    assert Weekday.SUN.number == 6


# --- next_after ---------------------------------------------------------------------------


def test_next_after_is_strict_and_crosses_a_week() -> None:
    monday = times("06:00", weekdays=["mon"])
    assert next_after(monday, "UTC", utc(2026, 3, 2, 5, 59)) == utc(2026, 3, 2, 6)
    assert next_after(monday, "UTC", utc(2026, 3, 2, 6)) == utc(2026, 3, 9, 6)
    assert next_after(monday, "UTC", utc(2026, 3, 8, 23)) == utc(2026, 3, 9, 6)
    assert next_after(cron("0 6 * * 1"), "UTC", utc(2026, 3, 2, 6)) == utc(2026, 3, 9, 6)


def test_next_after_crosses_month_and_year_ends() -> None:
    assert next_after(times("23:30"), BERLIN, utc(2026, 1, 31, 23)) == utc(2026, 2, 1, 22, 30)
    # Saturday 2026-02-28 has passed; next Saturday is 7 March.
    saturday = times("08:00", weekdays=["sat"])
    assert next_after(saturday, BERLIN, utc(2026, 2, 28, 8)) == utc(2026, 3, 7, 7)
    # Midnight of the 1st in Berlin is 23:00 UTC on the last day of the month before.
    assert next_after(cron("0 0 1 * *"), BERLIN, utc(2026, 1, 15)) == utc(2026, 1, 31, 23)
    assert next_after(cron("0 0 1 1 *"), "UTC", utc(2026, 6, 1)) == utc(2027, 1, 1)
    assert next_after(times("00:00"), "UTC", utc(2026, 12, 31, 0, 1)) == utc(2027, 1, 1)


def test_next_after_across_dst() -> None:
    # After the spring jump, 02:30 runs at 03:30 CEST the same morning.
    assert next_after(times("02:30"), BERLIN, utc(2026, 3, 29, 1)) == utc(2026, 3, 29, 1, 30)
    # After the first 01:30 of the fall-back day, the next run is tomorrow, not in an hour.
    assert next_after(times("01:30"), NEW_YORK, utc(2026, 11, 1, 5, 30)) == utc(2026, 11, 2, 6, 30)


def test_next_after_leap_day() -> None:
    leap = cron("0 0 29 2 *")
    assert next_after(leap, "UTC", utc(2026, 3, 1)) == utc(2028, 2, 29)
    assert next_after(leap, BERLIN, utc(2026, 3, 1)) == utc(2028, 2, 28, 23)
    assert next_after(leap, "UTC", utc(2028, 2, 29)) == utc(2032, 2, 29)
    # 2100 is not a leap year: eight years between matches.
    assert next_after(leap, "UTC", utc(2096, 3, 1)) == utc(2104, 2, 29)
    # None left before the end of datetime's range.
    assert next_after(leap, "UTC", utc(9996, 3, 1)) is None
    assert next_after(times("06:00"), "UTC", utc(9999, 12, 31)) is None


def test_next_after_accepts_any_aware_timezone() -> None:
    after = datetime(2026, 3, 2, 6, 59, tzinfo=ZoneInfo(BERLIN))  # 05:59 UTC
    assert next_after(times("07:00"), BERLIN, after) == utc(2026, 3, 2, 6)


# --- window bounds and limits ---------------------------------------------------------------


def test_window_is_after_exclusive_until_inclusive() -> None:
    daily = times("06:00")
    assert fires(daily, "UTC", utc(2026, 3, 2, 6), utc(2026, 3, 3, 6)) == [utc(2026, 3, 3, 6)]
    assert fires(daily, "UTC", utc(2026, 3, 2, 6), utc(2026, 3, 2, 6)) == []
    assert fires(daily, "UTC", utc(2026, 3, 3), utc(2026, 3, 2)) == []


def test_limit_keeps_the_earliest() -> None:
    every_minute = cron("* * * * *")
    week = (utc(2026, 3, 1), utc(2026, 3, 8))
    got = occurrences(every_minute, BERLIN, *week)
    assert len(got) == 1000  # default limit
    assert got[0] == utc(2026, 3, 1, 0, 1)
    assert got[-1] == utc(2026, 3, 1) + timedelta(minutes=1000)
    assert occurrences(times("06:00"), "UTC", *week, limit=3) == [
        utc(2026, 3, d, 6) for d in (1, 2, 3)
    ]
    assert len(occurrences(every_minute, BERLIN, *week, limit=20_000)) == 7 * 24 * 60


@pytest.mark.parametrize("limit", [0, -1])
def test_limit_must_be_positive(limit: int) -> None:
    with pytest.raises(ValueError, match="limit must be at least 1"):
        occurrences(times("06:00"), "UTC", utc(2026, 3, 1), utc(2026, 3, 8), limit=limit)


def test_naive_datetimes_are_rejected() -> None:
    naive, aware = datetime(2026, 3, 1), utc(2026, 3, 1)
    daily = times("06:00")
    with pytest.raises(ValueError, match="after must be a timezone-aware datetime"):
        occurrences(daily, "UTC", naive, aware)
    with pytest.raises(ValueError, match="until must be a timezone-aware datetime"):
        occurrences(daily, "UTC", aware, naive)
    with pytest.raises(ValueError, match="after must be a timezone-aware datetime"):
        next_after(daily, "UTC", naive)


@pytest.mark.parametrize("tz", ["Mars/Olympus", "", "../etc/passwd"])
def test_unknown_time_zone(tz: str) -> None:
    with pytest.raises(ValueError, match="unknown time zone"):
        occurrences(times("06:00"), tz, utc(2026, 3, 1), utc(2026, 3, 2))


# --- validation -----------------------------------------------------------------------------

FORTY_NINE = [f"{h:02d}:{m:02d}" for h in range(24) for m in (0, 30)] + ["23:59"]


@pytest.mark.parametrize(
    ("cron_expr", "weekdays", "start_times", "message"),
    [
        (None, None, None, "give either a cron expression or start times"),
        (None, ["mon"], [], "give either a cron expression or start times"),
        ("0 6 * * *", None, ["06:00"], "give either a cron expression or start times, not both"),
        ("0 6 * * *", ["mon"], None, "weekdays cannot be combined with a cron expression"),
        ("0 6 * *", None, None, "expected exactly 5 fields"),
        ("0 0 6 * * *", None, None, "expected exactly 5 fields"),  # seconds / 6 fields
        ("0 6 * * * 2027", None, None, "expected exactly 5 fields"),
        ("@daily", None, None, "expected exactly 5 fields"),
        ("", None, None, "expected exactly 5 fields"),
        ("60 6 * * *", None, None, "invalid cron expression '60 6 * * *'"),
        ("0 24 * * *", None, None, "invalid cron expression '0 24 * * *'"),
        ("0 6 * * mon-xyz", None, None, "invalid cron expression"),
        ("0 0 30 2 *", None, None, "invalid cron expression '0 0 30 2 *'"),  # never fires
        ("H 6 * * *", None, None, "hashed/random (H/R) values are not supported"),
        ("0 R * * *", None, None, "hashed/random (H/R) values are not supported"),
        (None, None, ["6:00"], "invalid start time '6:00': expected HH:MM"),
        (None, None, ["24:00"], "invalid start time '24:00'"),
        (None, None, ["12:60"], "invalid start time '12:60'"),
        (None, None, ["06:00:00"], "invalid start time '06:00:00'"),
        (None, None, ["noon"], "invalid start time 'noon'"),
        (None, None, [""], "invalid start time ''"),
        (None, None, ["06:00", "07:00", "06:00"], "duplicate start time 06:00"),
        (None, None, FORTY_NINE, f"at most {MAX_START_TIMES} start times are allowed"),
        (None, ["mon", "funday"], ["06:00"], "invalid weekday 'funday': expected one of mon,"),
        (None, ["mon", "Mon"], ["06:00"], "duplicate weekday 'mon'"),
    ],
)
def test_validation_errors(
    cron_expr: str | None,
    weekdays: list[str] | None,
    start_times: list[str] | None,
    message: str,
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        When.parse(cron_expr, weekdays, start_times)


def test_valid_schedules() -> None:
    assert len(When.parse(None, None, FORTY_NINE[:MAX_START_TIMES]).start_times) == 48
    for expr in ["0 6 * * 1-5", "0 6 * * MON-FRI", "*/15 5-8 * * *", "0 0 L * *", "0 6 * * 7"]:
        assert When.parse(expr, None, None).cron == expr
    assert When.parse(None, None, ["00:00", "23:59"]).start_times == (time(0), time(23, 59))


def test_direct_construction_is_validated() -> None:
    with pytest.raises(ValueError, match="start times must be whole minutes"):
        When(cron=None, start_times=(time(6, 0, 30),))
    with pytest.raises(ValueError, match="invalid cron expression"):
        When(cron="not a cron")
    assert When(cron=None, weekdays=(Weekday.FRI, Weekday.MON), start_times=(time(6),)) == (
        When.parse(None, ["mon", "fri"], ["06:00"])
    )
