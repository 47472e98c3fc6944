"""Automation configuration: rule and schedule CRUD, rain delays and the site pause."""

import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from irrigation.auth.models import Site
from irrigation.automation.calendar import When, next_after
from irrigation.automation.models import Schedule, ThresholdRule
from irrigation.automation.scheduling import first_run
from irrigation.automation.schemas import (
    ScheduleCreate,
    ScheduleUpdate,
    ThresholdRuleCreate,
    ThresholdRuleUpdate,
)
from irrigation.common import repository as repo
from irrigation.common.clock import db_now
from irrigation.common.errors import Invalid
from irrigation.fleet.models import Pump, Zone
from irrigation.quotas import service as quotas
from irrigation.quotas.schemas import Quota
from irrigation.settings import Settings


async def _pump_of_zone(
    session: AsyncSession, site_id: uuid.UUID, zone_id: uuid.UUID, pump_id: uuid.UUID | None
) -> None:
    if pump_id is None:
        return
    pump = await repo.get_referenced(session, Pump, site_id, pump_id, "pump_id")
    if pump.zone_id != zone_id:
        raise Invalid(f"pump {pump_id} is not in zone {zone_id}", field="body.pump_id")


# Threshold rules -----------------------------------------------------------------------


def _count_of(model: type[ThresholdRule | Schedule], site_id: uuid.UUID) -> Select[Any]:
    return select(func.count()).select_from(model).where(model.site_id == site_id)


async def create_rule(
    session: AsyncSession, settings: Settings, site_id: uuid.UUID, body: ThresholdRuleCreate
) -> ThresholdRule:
    async with session.begin():
        await repo.get_referenced(session, Zone, site_id, body.zone_id, "zone_id")
        await _pump_of_zone(session, site_id, body.zone_id, body.pump_id)
        count = _count_of(ThresholdRule, site_id)
        await quotas.ensure_room(session, settings, site_id, Quota.max_rules, count, "rules")
        rule = ThresholdRule(site_id=site_id, **body.model_dump())
        await repo.flush_new(session, rule)
    return rule


async def update_rule(
    session: AsyncSession,
    site_id: uuid.UUID,
    rule_id: uuid.UUID,
    version: int,
    body: ThresholdRuleUpdate,
) -> ThresholdRule:
    async with session.begin():
        values = body.changes()
        current = await repo.get_owned(session, ThresholdRule, site_id, rule_id, for_update=True)
        if current.version == version:
            low = values.get("start_below", current.start_below)
            high = values.get("stop_above", current.stop_above)
            if low >= high:
                raise Invalid("start_below must be below stop_above", field="body.start_below")
            if values.get("pump_id") is not None:
                await _pump_of_zone(session, site_id, current.zone_id, values["pump_id"])
            values["retry_at"] = None  # backed off after failing: an edit is tried at once
        return await repo.update_versioned(
            session, ThresholdRule, site_id, rule_id, version, values
        )


# Schedules -----------------------------------------------------------------------------


def _when(values: dict[str, Any]) -> When:
    try:
        return When.parse(values.get("cron"), values.get("weekdays"), values.get("start_times"))
    except ValueError as exc:
        raise Invalid(str(exc), field="body.cron") from None


async def create_schedule(
    session: AsyncSession, settings: Settings, site_id: uuid.UUID, body: ScheduleCreate
) -> Schedule:
    async with session.begin():
        zone = await repo.get_referenced(session, Zone, site_id, body.zone_id, "zone_id")
        await _pump_of_zone(session, site_id, body.zone_id, body.pump_id)
        count = _count_of(Schedule, site_id)
        await quotas.ensure_room(
            session, settings, site_id, Quota.max_schedules, count, "schedules"
        )
        schedule = Schedule(site_id=site_id, **body.model_dump(mode="json"))
        schedule.zone_id, schedule.pump_id = body.zone_id, body.pump_id
        schedule.next_run_at = first_run(schedule, zone.timezone, await db_now(session))
        await repo.flush_new(session, schedule)
    return schedule


async def update_schedule(
    session: AsyncSession,
    site_id: uuid.UUID,
    schedule_id: uuid.UUID,
    version: int,
    body: ScheduleUpdate,
) -> Schedule:
    async with session.begin():
        values = body.changes()
        if "weekdays" in values and values["weekdays"] is not None:
            values["weekdays"] = [str(d) for d in values["weekdays"]]
        current = await repo.get_owned(session, Schedule, site_id, schedule_id, for_update=True)
        if current.version == version:
            merged = {
                "cron": current.cron,
                "weekdays": current.weekdays,
                "start_times": current.start_times,
                **values,
            }
            when = _when(merged)
            if values.get("pump_id") is not None:
                await _pump_of_zone(session, site_id, current.zone_id, values["pump_id"])
            zone = await session.get(Zone, current.zone_id)
            assert zone is not None
            enabled = values.get("enabled", current.enabled)
            now = await db_now(session)
            values["next_run_at"] = next_after(when, zone.timezone, now) if enabled else None
            values["retry_at"] = None  # backed off after failing: an edit is tried at once
        return await repo.update_versioned(session, Schedule, site_id, schedule_id, version, values)


# Rain delays and pause -----------------------------------------------------------------


# A pause or rain delay is for a season at most. Unbounded, a control key could write
# 9999-12-31T23:00Z, past what a zone east of UTC can even show.
MAX_UNTIL_AHEAD = timedelta(days=366)


async def _future(session: AsyncSession, until: datetime | None) -> datetime | None:
    if until is None:
        return None
    now = await db_now(session)
    if until <= now:
        raise Invalid("until must be in the future", field="body.until")
    if until > now + MAX_UNTIL_AHEAD:
        raise Invalid(
            f"until must be at most {MAX_UNTIL_AHEAD.days} days ahead",
            field="body.until",
            code="until_too_far",
        )
    return until


async def set_zone_rain_delay(
    session: AsyncSession, site_id: uuid.UUID, zone_id: uuid.UUID, until: datetime | None
) -> Zone:
    async with session.begin():
        zone = await repo.get_owned(session, Zone, site_id, zone_id, for_update=True)
        zone.rain_delay_until = await _future(session, until)
    return zone


async def set_site_state(
    session: AsyncSession, site_id: uuid.UUID, field: str, until: datetime | None
) -> Site:
    async with session.begin():
        site = (
            await session.execute(select(Site).where(Site.id == site_id).with_for_update())
        ).scalar_one()
        setattr(site, field, await _future(session, until))
    return site
