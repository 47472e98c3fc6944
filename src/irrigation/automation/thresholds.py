"""Threshold rules: water a zone when its sensors' average falls below `start_below`.

Evaluated when readings for a zone arrive (de-duplicated through one deferred job) and by
a sweep. The average, the count and the newest reading's time are one SQL statement over
the raw readings of the window; stale data (too few readings, the newest too old) never
drives watering."""

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from arq.connections import ArqRedis
from sqlalchemy import func, select, true
from sqlalchemy.ext.asyncio import AsyncSession

from irrigation.auth.models import Site
from irrigation.automation import failures
from irrigation.automation.cycles import cycling_of
from irrigation.automation.decisions import Subject, record
from irrigation.automation.models import Outcome, Reason, RunRequest, ThresholdRule
from irrigation.automation.runqueue import dispatch
from irrigation.automation.triggers import (
    Skip,
    WishMaker,
    automation_gate,
    pumps_to_water,
    queue_zone_runs,
    zone_window,
)
from irrigation.automation.wording import seconds_words
from irrigation.common.clock import db_now_expr
from irrigation.fleet.models import Zone
from irrigation.pumps.models import Priority
from irrigation.settings import Settings

log = structlog.get_logger(__name__)


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
        window = zone_window(ThresholdRule.zone_id, ThresholdRule.sensor_kind, since, now)
        stmt = (
            select(
                ThresholdRule.id,
                ThresholdRule.site_id,
                window.c.average,
                window.c.count,
                window.c.newest,
            )
            .join(window, true())
            .where(ThresholdRule.enabled, failures.ready(ThresholdRule, now))
        )
        if zone_ids is not None:
            stmt = stmt.where(ThresholdRule.zone_id.in_(zone_ids))
        rows = (await session.execute(stmt)).all()
    triggered = 0
    sites: set[uuid.UUID] = set()
    for rule_id, site_id, average, count, newest in rows:
        try:
            site = await _evaluate_one(
                session, settings, rule_id, Window(average, count, newest), now
            )
        except Exception:  # one broken rule must not stop the others
            log.exception("rule_failed", rule_id=str(rule_id), site_id=str(site_id))
            await failures.failed(session, settings, ThresholdRule, rule_id)
            continue
        if site is not None:
            triggered += 1
            sites.add(site)
    await dispatch.start_sites(session, settings, redis, sites)
    return triggered


@dataclass(frozen=True)
class Window:
    """What a rule's window of readings shows."""

    average: float | None
    count: int
    newest: datetime | None


@dataclass(frozen=True)
class Stale:
    """Why a rule's readings may not drive watering, and the sentence its decision shows."""

    message: str
    detail: dict[str, Any]


def stale_because(
    window: Window,
    now: datetime,
    min_readings: int,
    max_age_s: int,
    window_s: int,
    kind: str,
) -> Stale | None:
    """Why the window's readings are stale, if they are: fewer than `min_readings`, or the
    newest more than `max_age_s` old (exactly `max_age_s` old is fresh)."""
    what = kind.replace("_", " ")
    age = (now - window.newest).total_seconds() if window.newest is not None else None
    detail: dict[str, Any] = {
        "readings": window.count,
        "min_readings": min_readings,
        "newest_age_s": None if age is None else round(age, 3),
        "max_age_s": max_age_s,
    }
    if window.count == 0:
        message = f"no {what} reading in the last {seconds_words(window_s)}"
    elif window.count < min_readings:
        plural = "" if window.count == 1 else "s"
        message = (
            f"{window.count} {what} reading{plural} in the last {seconds_words(window_s)}, "
            f"fewer than {min_readings}"
        )
    elif age is not None and age > max_age_s:
        message = (
            f"the newest {what} reading is {seconds_words(age)} old "
            f"(limit {seconds_words(max_age_s)})"
        )
    else:
        return None
    return Stale(f"stale sensor data: {message}", detail)


async def _evaluate_one(
    session: AsyncSession,
    settings: Settings,
    rule_id: uuid.UUID,
    window: Window,
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
        if rule.failures:  # it went through this time (or rolls back with this)
            rule.failures, rule.retry_at = 0, None
        value = window.average
        rule.last_value = value
        rule.last_evaluated_at = now
        subject = Subject(rule.site_id, rule.zone_id, rule.pump_id, rule_id=rule.id)
        stale = stale_because(
            window, now, rule.min_readings, rule.max_age_s, rule.window_s, rule.sensor_kind
        )
        if stale is not None:
            # Neither triggers nor re-arms; said once when the data goes stale, not per sweep.
            if rule.last_skip_reason != Reason.stale_sensor:
                rule.last_skip_reason = reason = Reason.stale_sensor
                record(
                    session,
                    subject,
                    now,
                    Outcome.skipped,
                    reason,
                    stale.message,
                    detail=stale.detail,
                )
            return None
        if rule.last_skip_reason == Reason.stale_sensor:
            rule.last_skip_reason = None  # fresh again: the next stale spell is news again
        if value is None:
            return None
        if not rule.armed:
            if value > rule.stop_above:
                rule.armed = True  # risen above the upper line: may trigger again
                rule.last_skip_reason = None
            return None
        if value >= rule.start_below:
            return None
        what = f"{rule.sensor_kind} {value:.1f} < {rule.start_below:g}"
        gate = automation_gate(now, zone.timezone, paused_until, site_rain, zone.rain_delay_until)
        asked_by = RunRequest.rule_id == rule.id
        found = gate or await pumps_to_water(session, rule.zone_id, rule.pump_id, asked_by, "rule")
        if not isinstance(found, Skip):
            make = WishMaker(
                Priority.threshold,
                rule.duration_s,
                f"rule:{rule.id}",
                now + timedelta(seconds=settings.threshold_run_deadline_s),
                f"threshold rule {rule.name or rule.id}: {what}",
                rule_id=rule.id,
            )
            cycling = cycling_of(zone)
            queued = await queue_zone_runs(session, settings, rule.site_id, found, make, cycling)
            if isinstance(queued, Skip):
                found = queued
        if isinstance(found, Skip):
            # Its earlier run still waiting is no news; any other reason is logged once.
            if found.reason != Reason.already_queued and rule.last_skip_reason != found.reason:
                rule.last_skip_reason = found.reason
                message = f"{found.message} ({what})"
                record(session, subject, now, Outcome.skipped, found.reason, message)
            return None
        rule.armed = False
        rule.last_triggered_at = now
        rule.last_skip_reason = None
        return rule.site_id
