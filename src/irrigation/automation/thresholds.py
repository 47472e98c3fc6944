"""Threshold rules: water a zone when its sensors' average falls below `start_below`.

Evaluated when readings for a zone arrive (de-duplicated through one deferred job) and by
a sweep. The average is one SQL statement over the raw readings of the window."""

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from arq.connections import ArqRedis
from sqlalchemy import ColumnElement, and_, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from irrigation.auth.models import Site
from irrigation.automation.decisions import Subject, local, record
from irrigation.automation.models import Outcome, Reason, RunRequest, RunStatus, ThresholdRule
from irrigation.automation.runqueue import dispatch, enqueue
from irrigation.common.clock import db_now_expr
from irrigation.fleet.models import Pump, Sensor, Zone
from irrigation.ingest.models import SensorReading
from irrigation.pumps.models import Priority
from irrigation.settings import Settings

log = structlog.get_logger(__name__)


def zone_average(zone_id: Any, kind: Any, since: Any, until: datetime) -> ColumnElement[Any]:
    """The average of a zone's sensors of one kind over (since, until], as a subquery."""
    return (
        select(func.avg(SensorReading.value))
        .join(Sensor, Sensor.id == SensorReading.sensor_id)
        .where(
            Sensor.zone_id == zone_id,
            Sensor.kind == kind,
            SensorReading.ts > since,
            SensorReading.ts <= until,
        )
        .scalar_subquery()
    )


@dataclass(frozen=True)
class _Gate:
    reason: Reason
    message: str


def automation_gate(
    now: datetime,
    tz: str,
    paused_until: datetime | None,
    site_rain: datetime | None,
    zone_rain: datetime | None,
    respects_rain_delay: bool = True,
) -> _Gate | None:
    """Why automation may not water this zone now, if it may not."""
    if paused_until is not None and paused_until > now:
        return _Gate(Reason.paused, f"automation is paused until {local(paused_until, tz)}")
    if respects_rain_delay:
        rain = max((t for t in (site_rain, zone_rain) if t is not None), default=None)
        if rain is not None and rain > now:
            return _Gate(Reason.rain_delay, f"rain delay until {local(rain, tz)}")
    return None


async def zone_pumps(
    session: AsyncSession, zone_id: uuid.UUID, pump_id: uuid.UUID | None
) -> list[Pump]:
    """The rule's or schedule's own pump, else every enabled pump of the zone, by name."""
    where = Pump.id == pump_id if pump_id is not None else Pump.zone_id == zone_id
    stmt = select(Pump).where(where)
    if pump_id is None:
        stmt = stmt.where(Pump.enabled)
    return list((await session.execute(stmt.order_by(Pump.name, Pump.id))).scalars())


async def queue_zone_runs(
    session: AsyncSession,
    site_id: uuid.UUID,
    pumps: list[Pump],
    make: "WishMaker",
) -> list[RunRequest]:
    """One request per pump, each after the previous: a zone's pumps water one by one."""
    previous: uuid.UUID | None = None
    requests = []
    for pump in pumps:
        request, _ = await enqueue.add(session, site_id, make(pump, previous))
        requests.append(request)
        previous = request.id
    return requests


class WishMaker:
    """Builds the wish for each pump of a zone-wide run (duration capped per pump)."""

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

    def __call__(self, pump: Pump, after: uuid.UUID | None) -> enqueue.Wish:
        return enqueue.Wish(
            pump_id=pump.id,
            priority=self.priority,
            duration_s=min(self.duration_s, pump.max_runtime_s),
            origin=self.origin,
            deadline=self.deadline,
            reason=self.reason,
            rule_id=self.rule_id,
            schedule_id=self.schedule_id,
            after_id=after,
        )


async def evaluate_rules(
    session: AsyncSession,
    settings: Settings,
    redis: ArqRedis,
    zone_ids: set[uuid.UUID] | None = None,
) -> int:
    """Evaluate the enabled rules (of these zones, or all); returns how many triggered."""
    async with session.begin():
        now = (await session.execute(select(db_now_expr()))).scalar_one()
        since = now - func.make_interval(0, 0, 0, 0, 0, 0, ThresholdRule.window_s)
        stmt = select(
            ThresholdRule.id,
            zone_average(ThresholdRule.zone_id, ThresholdRule.sensor_kind, since, now),
        ).where(ThresholdRule.enabled)
        if zone_ids is not None:
            stmt = stmt.where(ThresholdRule.zone_id.in_(zone_ids))
        values = (await session.execute(stmt)).all()
    triggered = 0
    sites: set[uuid.UUID] = set()
    for rule_id, value in values:
        try:
            site = await _evaluate_one(session, settings, rule_id, value, now)
        except Exception:  # one broken rule must not stop the others
            log.exception("rule_failed", rule_id=str(rule_id))
            continue
        if site is not None:
            triggered += 1
            sites.add(site)
    for site_id in sites:
        await dispatch.start_waiting(session, settings, redis, site_id)
    return triggered


async def _evaluate_one(
    session: AsyncSession,
    settings: Settings,
    rule_id: uuid.UUID,
    value: float | None,
    now: datetime,
) -> uuid.UUID | None:
    async with session.begin():
        row = (
            await session.execute(
                select(ThresholdRule, Zone, Site.paused_until, Site.rain_delay_until)
                .join(Zone, Zone.id == ThresholdRule.zone_id)
                .join(Site, Site.id == ThresholdRule.site_id)
                .where(ThresholdRule.id == rule_id, ThresholdRule.enabled)
                .with_for_update(of=ThresholdRule, skip_locked=True)
                .execution_options(populate_existing=True)
            )
        ).one_or_none()
        if row is None:
            return None  # disabled meanwhile, or another evaluator holds it
        rule, zone, paused_until, site_rain = row
        rule.last_value = value
        rule.last_evaluated_at = now
        if value is None:
            return None
        if not rule.armed:
            if value > rule.stop_above:
                rule.armed = True  # risen above the upper line: may trigger again
                rule.last_skip_reason = None
            return None
        if value >= rule.start_below:
            return None
        subject = Subject(rule.site_id, rule.zone_id, rule.pump_id, rule_id=rule.id)
        what = f"{rule.sensor_kind} {value:.1f} < {rule.start_below:g}"
        gate = automation_gate(now, zone.timezone, paused_until, site_rain, zone.rain_delay_until)
        if gate is not None:
            if rule.last_skip_reason != gate.reason:
                rule.last_skip_reason = gate.reason
                record(
                    session, subject, now, Outcome.skipped, gate.reason, f"{gate.message} ({what})"
                )
            return None
        pumps = await zone_pumps(session, rule.zone_id, rule.pump_id)
        if not pumps:
            if rule.last_skip_reason != Reason.no_pump:
                rule.last_skip_reason = Reason.no_pump
                message = f"no enabled pump ({what})"
                record(session, subject, now, Outcome.skipped, Reason.no_pump, message)
            return None
        if await _still_waiting(session, rule.id):
            return None
        make = WishMaker(
            Priority.threshold,
            rule.duration_s,
            f"rule:{rule.id}",
            now + timedelta(seconds=settings.threshold_run_deadline_s),
            f"threshold rule {rule.name or rule.id}: {what}",
            rule_id=rule.id,
        )
        await queue_zone_runs(session, rule.site_id, pumps, make)
        rule.armed = False
        rule.last_triggered_at = now
        rule.last_skip_reason = None
        return rule.site_id


async def _still_waiting(session: AsyncSession, rule_id: uuid.UUID) -> bool:
    stmt = select(RunRequest.id).where(
        and_(RunRequest.rule_id == rule_id, RunRequest.status == RunStatus.waiting)
    )
    return (await session.execute(stmt.limit(1))).first() is not None
