"""What a threshold rule and a schedule share when they trigger: the zone's readings (their
average, how many, how old), the gates (pause, rain delay), the pumps to water and whether
an earlier run still waits, and the watering's queued runs: per pump, each after the
previous, split into cycles where the zone asks for it."""

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, FromClause, func, select, true
from sqlalchemy.ext.asyncio import AsyncSession

from irrigation.automation.cycles import MAX_CYCLES, Cycling, Step, plan
from irrigation.automation.decisions import local
from irrigation.automation.models import Reason, RunRequest, RunStatus
from irrigation.automation.runqueue import enqueue
from irrigation.fleet.models import Pump, Sensor
from irrigation.ingest.models import SensorReading
from irrigation.pumps.models import Priority
from irrigation.quotas.service import QuotaExceeded
from irrigation.settings import Settings


def _in_window(zone_id: Any, kind: Any, until: datetime) -> tuple[ColumnElement[bool], ...]:
    return (
        Sensor.zone_id == zone_id,
        Sensor.kind == kind,
        SensorReading.ts <= until,
    )


def zone_average(zone_id: Any, kind: Any, since: Any, until: datetime) -> ColumnElement[Any]:
    """The average of a zone's sensors of one kind over [since, until], as a subquery."""
    return (
        select(func.avg(SensorReading.value))
        .join(Sensor, Sensor.id == SensorReading.sensor_id)
        .where(*_in_window(zone_id, kind, until), SensorReading.ts >= since)
        .scalar_subquery()
    )


def zone_window(zone_id: Any, kind: Any, since: Any, until: datetime) -> FromClause:
    """A zone's sensors of one kind over (since, until]: `average`, `count` and `newest`, as
    a lateral subquery (one scan of the window gives all three)."""
    return (
        select(
            func.avg(SensorReading.value).label("average"),
            func.count().label("count"),
            func.max(SensorReading.ts).label("newest"),
        )
        .join(Sensor, Sensor.id == SensorReading.sensor_id)
        .where(*_in_window(zone_id, kind, until), SensorReading.ts > since)
        .lateral("readings_window")
    )


async def newest_reading(
    session: AsyncSession, zone_id: uuid.UUID, kind: str, until: datetime
) -> datetime | None:
    """The time of the zone's newest reading of this kind at or before `until`, however old:
    one probe of the readings' (sensor_id, ts) key per sensor, not a scan of their history."""
    newest = (
        select(SensorReading.ts)
        .where(SensorReading.sensor_id == Sensor.id, SensorReading.ts <= until)
        .order_by(SensorReading.ts.desc())
        .limit(1)
        .lateral("newest")
    )
    stmt = (
        select(func.max(newest.c.ts))
        .select_from(Sensor)
        .join(newest, true())
        .where(Sensor.zone_id == zone_id, Sensor.kind == kind)
    )
    found: datetime | None = (await session.execute(stmt)).scalar_one()
    return found


@dataclass(frozen=True)
class Skip:
    """Why a trigger asks for no water now, and the sentence its decision shows."""

    reason: Reason
    message: str


def automation_gate(
    now: datetime,
    tz: str,
    paused_until: datetime | None,
    site_rain: datetime | None,
    zone_rain: datetime | None,
    respects_rain_delay: bool = True,
) -> Skip | None:
    """Why automation may not water this zone now, if it may not."""
    if paused_until is not None and paused_until > now:
        return Skip(Reason.paused, f"automation is paused until {local(paused_until, tz)}")
    if respects_rain_delay:
        rain = max((t for t in (site_rain, zone_rain) if t is not None), default=None)
        if rain is not None and rain > now:
            return Skip(Reason.rain_delay, f"rain delay until {local(rain, tz)}")
    return None


async def pumps_to_water(
    session: AsyncSession,
    zone_id: uuid.UUID,
    pump_id: uuid.UUID | None,
    asked_by: ColumnElement[bool],
    asker: str,
) -> list[Pump] | Skip:
    """The rule's or schedule's own pump, else every enabled pump of the zone, by name; or
    why not: no enabled pump, or a run it asked for (`asked_by`) still waits."""
    where = Pump.id == pump_id if pump_id is not None else Pump.zone_id == zone_id
    stmt = select(Pump).where(where)
    if pump_id is None:
        stmt = stmt.where(Pump.enabled)
    pumps = list((await session.execute(stmt.order_by(Pump.name, Pump.id))).scalars())
    if not pumps:
        return Skip(Reason.no_pump, "no enabled pump")
    waiting = select(RunRequest.id).where(asked_by, RunRequest.status == RunStatus.waiting)
    if (await session.execute(waiting.limit(1))).first() is not None:
        return Skip(Reason.already_queued, f"the previous run of this {asker} is still waiting")
    return pumps


class WishMaker:
    """Builds the wish for each run request of a zone's watering (automation/cycles.py)."""

    def __init__(
        self,
        priority: Priority,
        duration_s: int,
        origin: str,
        deadline: datetime,
        reason: str,
        rule_id: uuid.UUID | None = None,
        schedule_id: uuid.UUID | None = None,
    ) -> None:
        self.priority, self.duration_s, self.origin = priority, duration_s, origin
        self.deadline, self.reason = deadline, reason
        self.rule_id, self.schedule_id = rule_id, schedule_id

    def __call__(self, step: Step, after: uuid.UUID | None, watering: uuid.UUID) -> enqueue.Wish:
        reason = self.reason
        if step.cut_from_s is not None and step.cycle == 1:
            reason += (
                f"; cut from {step.cut_from_s} s to {step.cycles} cycles of at most "
                f"{step.duration_s} s (at most {MAX_CYCLES} a watering)"
            )
        return enqueue.Wish(
            pump_id=step.pump.id,
            priority=self.priority,
            duration_s=step.duration_s,
            origin=self.origin,
            deadline=self.deadline + timedelta(seconds=step.offset_s),
            reason=reason[:500],
            rule_id=self.rule_id,
            schedule_id=self.schedule_id,
            after_id=after,
            watering_id=watering,
            cycle=step.cycle,
            cycles=step.cycles,
            soak_s=step.soak_s,
        )


async def queue_zone_runs(
    session: AsyncSession,
    settings: Settings,
    site_id: uuid.UUID,
    pumps: list[Pump],
    make: WishMaker,
    cycling: Cycling,
) -> list[RunRequest] | Skip:
    """One watering: a request per pump, each after the previous (a zone's pumps water one
    by one), split into cycles with soaks between by the zone's `cycling`; one watering id
    for all. All or none: over the site's quota of waiting requests, none is queued and the
    answer is why (the caller's other changes, such as a schedule's advance, still commit)."""
    previous: uuid.UUID | None = None
    watering = uuid.uuid4()
    requests = []
    try:
        async with session.begin_nested():
            for step in plan(pumps, make.duration_s, cycling):
                request, _ = await enqueue.add(
                    session, settings, site_id, make(step, previous, watering)
                )
                requests.append(request)
                previous = request.id
    except QuotaExceeded as exc:
        return Skip(Reason.quota_exceeded, exc.detail)
    return requests
