"""Water use of a zone, pump, water source or the site: sums of the rollup's day rows,
scoped to the caller's site, in day or month buckets (months summed from days).

What counts where (each row says what it counted for when it was written):
  pump, zone    its meter's rows (measured), else its runs (estimated)
  water source  its own meter's rows; else its pumps' meters' and runs' rows
  site          every source as above
"""

import uuid
from datetime import UTC, date, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import (
    TIMESTAMP,
    Date,
    Select,
    case,
    cast,
    false,
    func,
    literal,
    or_,
    select,
    union_all,
)
from sqlalchemy.ext.asyncio import AsyncSession

from irrigation.common.clock import utcnow
from irrigation.common.errors import Invalid, NotFound
from irrigation.fleet.models import Pump, WaterSource, Zone
from irrigation.wateruse.models import Metered, MeterWaterUse, RunWaterUse
from irrigation.wateruse.schemas import (
    MAX_DAYS,
    MAX_MONTHS,
    WaterUse,
    WaterUseBucket,
    WaterUsePeriod,
    WaterUseScope,
)

# Far enough back and ahead for any farm's records; near enough that date arithmetic
# never overflows.
EARLIEST, LATEST = date(1900, 1, 1), date(2200, 12, 31)
DEFAULT_DAYS = 30
DEFAULT_MONTHS = 12


def _month(day: date) -> date:
    return day.replace(day=1)


def _months_before(month: date, count: int) -> date:
    index = month.year * 12 + month.month - 1 - count
    return date(index // 12, index % 12 + 1, 1)


def _month_count(first: date, last: date) -> int:
    return (last.year - first.year) * 12 + last.month - first.month + 1


def days_asked(
    bucket: WaterUsePeriod, first: date | None, last: date | None, today: date
) -> tuple[date, date]:
    """The local days [first, last] asked for, with the defaults: up to today, the last 30
    days or the last 12 months (this one included)."""
    for name, value in (("from", first), ("to", last)):
        if value is not None and not EARLIEST <= value <= LATEST:
            raise Invalid(f"{name} must lie between {EARLIEST} and {LATEST}", field=f"query.{name}")
    last = last or max(today, first or today)
    if first is None:
        if bucket == WaterUsePeriod.day:
            first = last - timedelta(days=DEFAULT_DAYS - 1)
        else:
            first = _months_before(_month(last), DEFAULT_MONTHS - 1)
    if first > last:
        raise Invalid("from must not be after to", field="query.from")
    if bucket == WaterUsePeriod.day and (last - first).days + 1 > MAX_DAYS:
        raise Invalid(
            f"more than {MAX_DAYS} day buckets requested; narrow the range or ask for months",
            field="query.from",
            code="too_many_buckets",
        )
    if bucket == WaterUsePeriod.month and _month_count(first, last) > MAX_MONTHS:
        raise Invalid(
            f"more than {MAX_MONTHS} month buckets requested; narrow the range",
            field="query.from",
            code="too_many_buckets",
        )
    return first, last


async def timezone_of(
    session: AsyncSession, site_id: uuid.UUID, scope: WaterUseScope, subject_id: uuid.UUID
) -> str | None:
    """The subject's calendar (None for a source or the site); 404 unless it is the site's."""
    found: Any
    if scope == WaterUseScope.site:
        return None
    if scope == WaterUseScope.zone:
        found = select(Zone.timezone).where(Zone.id == subject_id, Zone.site_id == site_id)
    elif scope == WaterUseScope.pump:
        found = (
            select(Zone.timezone)
            .join(Pump, Pump.zone_id == Zone.id)
            .where(Pump.id == subject_id, Pump.site_id == site_id)
        )
    else:
        found = select(literal(None)).where(
            WaterSource.id == subject_id, WaterSource.site_id == site_id
        )
    row = (await session.execute(found)).first()
    if row is None:
        raise NotFound(f"{scope.value.replace('_', ' ')} not found")
    zone: str | None = row[0]
    return zone


def _parts(
    site_id: uuid.UUID, scope: WaterUseScope, subject_id: uuid.UUID, first: date, last: date
) -> Any:
    """Every day row that counts for the subject: (day, measured, estimated, is an
    estimate, seconds without a flow)."""
    m, r = MeterWaterUse, RunWaterUse
    meters: list[Any] = [m.site_id == site_id, m.day >= first, m.day <= last]
    # A run of a pump with a meter is counted by the meter's rows.
    runs: list[Any] = [r.site_id == site_id, r.day >= first, r.day <= last, ~r.pump_metered]
    if scope == WaterUseScope.pump:
        meters += [m.meters == Metered.pump, m.pump_id == subject_id]
        runs += [r.pump_id == subject_id]
    elif scope == WaterUseScope.zone:
        meters += [m.meters == Metered.pump, m.zone_id == subject_id]
        runs += [r.zone_id == subject_id]
    else:
        # A source with a meter of its own is counted by that meter alone.
        meters += [or_(m.meters == Metered.water_source, ~m.source_metered)]
        runs += [~r.source_metered]
        if scope == WaterUseScope.water_source:
            meters += [m.water_source_id == subject_id]
            runs += [r.water_source_id == subject_id]
    measured = select(
        m.day,
        m.litres.label("measured"),
        literal(0.0).label("estimated"),
        false().label("is_estimate"),
        literal(0.0).label("without_flow_s"),
    ).where(*meters)
    estimated = select(
        r.day,
        literal(0.0),
        func.coalesce(r.litres, 0.0),
        r.litres.is_not(None),
        case((r.litres.is_(None), r.runtime_s), else_=0.0),
    ).where(*runs)
    return union_all(measured, estimated).subquery("parts")


def _sums(parts: Any, bucket: WaterUsePeriod) -> Select[Any]:
    start = parts.c.day
    if bucket == WaterUsePeriod.month:
        start = cast(func.date_trunc("month", cast(parts.c.day, TIMESTAMP)), Date)
    start = start.label("start")
    return (
        select(
            start,
            func.sum(parts.c.measured),
            func.sum(parts.c.estimated),
            func.bool_or(parts.c.is_estimate),
            func.sum(parts.c.without_flow_s),
        )
        .group_by(start)
        .order_by(start)
    )


def _starts(bucket: WaterUsePeriod, first: date, last: date) -> list[date]:
    if bucket == WaterUsePeriod.day:
        return [first + timedelta(days=n) for n in range((last - first).days + 1)]
    return [_months_before(_month(last), n) for n in reversed(range(_month_count(first, last)))]


def _bucket(
    start: date, measured: float, estimated: float, is_estimate: bool, without_s: float
) -> WaterUseBucket:
    return WaterUseBucket(
        start=start,
        litres=round(measured + estimated, 3),
        measured_litres=round(measured, 3),
        estimated_litres=round(estimated, 3),
        estimated=is_estimate,
        runtime_without_flow_s=round(without_s, 3),
    )


async def water_use(
    session: AsyncSession,
    site_id: uuid.UUID,
    scope: WaterUseScope,
    subject_id: uuid.UUID,
    bucket: WaterUsePeriod,
    first: date | None,
    last: date | None,
) -> WaterUse:
    """The subject's water use from `first` to `last` (local days, both counted)."""
    zone = await timezone_of(session, site_id, scope, subject_id)
    # "Today" in the subject's calendar; a source's or the site's spans zones: UTC's.
    today = utcnow().astimezone(ZoneInfo(zone) if zone else UTC).date()
    first, last = days_asked(bucket, first, last, today)
    rows = await session.execute(_sums(_parts(site_id, scope, subject_id, first, last), bucket))
    found = {start: row for start, *row in rows}
    buckets = [
        _bucket(start, *found.get(start, (0.0, 0.0, False, 0.0)))
        for start in _starts(bucket, first, last)
    ]
    measured = sum(b.measured_litres for b in buckets)
    estimated = sum(b.estimated_litres for b in buckets)
    total = _bucket(first, measured, estimated, any(b.estimated for b in buckets), 0.0)
    return WaterUse(
        scope=scope,
        id=subject_id,
        bucket=bucket,
        from_=first,
        to=last,
        timezone=zone,
        litres=total.litres,
        measured_litres=total.measured_litres,
        estimated_litres=total.estimated_litres,
        estimated=total.estimated,
        runtime_without_flow_s=round(sum(b.runtime_without_flow_s for b in buckets), 3),
        buckets=buckets,
    )
