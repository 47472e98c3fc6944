"""Schedules firing: each due schedule, at its local times, asks for runs with priority
`scheduled` unless a skip condition holds (pause, rain delay, wet soil, forecast rain,
a water level of 0 %). Weather is fetched before any row is locked: no network call is
awaited while a lock is held. Moisture readings older than the schedule's
`moisture_max_age_s` are ignored: the run goes ahead as if none were known, and says so."""

import asyncio
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from arq.connections import ArqRedis
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from irrigation.auth.models import Site
from irrigation.automation import failures
from irrigation.automation.calendar import When, next_after, occurrences
from irrigation.automation.cycles import cycling_of
from irrigation.automation.decisions import Subject, local, record
from irrigation.automation.et import WaterLevel, compute_water_level, scaled_duration_s
from irrigation.automation.models import Outcome, Reason, RunRequest, Schedule
from irrigation.automation.runqueue import dispatch
from irrigation.automation.triggers import (
    Skip,
    WishMaker,
    automation_gate,
    newest_reading,
    pumps_to_water,
    queue_zone_runs,
    zone_average,
)
from irrigation.automation.wording import seconds_words
from irrigation.common.clock import db_now_expr
from irrigation.fleet.models import Zone
from irrigation.pumps.models import Priority
from irrigation.settings import Settings
from irrigation.weather import Forecast, WeatherProvider, WeatherUnavailable

log = structlog.get_logger(__name__)

MISSED_LOGGED = 10
# Schedules one pass fires at most (the cron runs every 5 s).
FIRE_BATCH = 500


def when_of(schedule: Schedule) -> When:
    return When.parse(schedule.cron, schedule.weekdays, schedule.start_times)


def first_run(schedule: Schedule, tz: str, now: datetime) -> datetime | None:
    return next_after(when_of(schedule), tz, now)


@dataclass(frozen=True)
class Weather:
    forecast: Forecast | None
    error: str | None = None


async def forecasts_for(
    provider: WeatherProvider | None, zones: list[Zone]
) -> dict[uuid.UUID, Weather]:
    """All at once: a slow forecast API costs one timeout per run, not one per zone."""

    async def one(zone: Zone) -> Weather:
        if zone.latitude is None or zone.longitude is None:
            return Weather(None, "the zone has no latitude/longitude")
        if provider is None:
            return Weather(None, "no weather provider is configured")
        try:
            return Weather(await provider.forecast(zone.latitude, zone.longitude))
        except WeatherUnavailable as exc:
            # The provider's error (its address, the network's words) is for our log; the
            # site's decision history says only that there was no forecast.
            log.warning("weather_unavailable", zone_id=str(zone.id), error=str(exc))
            return Weather(None, "weather unavailable")
        except Exception:  # one zone's forecast must not fail every site's schedules
            log.exception("weather_failed", zone_id=str(zone.id))
            return Weather(None, "weather unavailable")

    found = await asyncio.gather(*(one(zone) for zone in zones))
    return {zone.id: weather for zone, weather in zip(zones, found, strict=True)}


def water_level(zone: Zone, weather: Weather, now: datetime) -> WaterLevel | None:
    if not zone.et_scaling or weather.forecast is None or zone.latitude is None:
        return None
    today = weather.forecast.day(now.date())
    if today is None:
        return None
    return compute_water_level(
        today, zone.latitude, zone.et_baseline_mm, zone.et_min_pct, zone.et_max_pct
    )


async def fire_due(
    session: AsyncSession,
    settings: Settings,
    redis: ArqRedis,
    provider: WeatherProvider | None,
) -> int:
    """Fire every schedule whose next run is due; returns how many fired a run."""
    async with session.begin():
        now = (await session.execute(select(db_now_expr()))).scalar_one()
        due = (await session.execute(_due_query(now))).all()
    zones = {zone.id: zone for _, zone in due}
    needs_weather = [z for z in zones.values() if z.et_scaling or z.latitude is not None]
    weather = await forecasts_for(provider, needs_weather)
    fired = 0
    sites: set[uuid.UUID] = set()
    session.expunge_all()  # plain values from here on: a failed schedule rolls back alone
    for schedule_id, zone in due:
        try:
            site = await _fire_one(session, settings, schedule_id, weather.get(zone.id), now)
        except Exception:  # one broken schedule must not stop the others
            log.exception(
                "schedule_failed", schedule_id=str(schedule_id), site_id=str(zone.site_id)
            )
            await failures.failed(session, settings, Schedule, schedule_id)
            continue
        if site is not None:
            fired += 1
            sites.add(site)
    await dispatch.start_sites(session, settings, redis, sites)
    return fired


def _due_query(now: datetime) -> Any:
    """The due schedules, at most FIRE_BATCH, every site's oldest first: each site's first
    due schedule, then each site's second, ... so no site's backlog (or its schedules
    backed off after failing, which are not due until `retry_at`) delays another's."""
    nth = func.row_number().over(
        partition_by=Schedule.site_id, order_by=(Schedule.next_run_at, Schedule.id)
    )
    ranked = (
        select(Schedule.id, Schedule.zone_id, Schedule.next_run_at, nth.label("nth"))
        .where(Schedule.enabled, Schedule.next_run_at <= now, failures.ready(Schedule, now))
        .subquery()
    )
    return (
        select(ranked.c.id, Zone)
        .join(Zone, Zone.id == ranked.c.zone_id)
        .order_by(ranked.c.nth, ranked.c.next_run_at, ranked.c.id)
        .limit(FIRE_BATCH)
    )


async def _fire_one(
    session: AsyncSession,
    settings: Settings,
    schedule_id: uuid.UUID,
    weather: Weather | None,
    now: datetime,
) -> uuid.UUID | None:
    async with session.begin():
        row = (
            await session.execute(
                select(Schedule, Zone, Site.paused_until, Site.rain_delay_until)
                .join(Zone, Zone.id == Schedule.zone_id)
                .join(Site, Site.id == Schedule.site_id)
                .where(Schedule.id == schedule_id, Schedule.enabled, Schedule.next_run_at <= now)
                .with_for_update(of=Schedule, skip_locked=True)
                .execution_options(populate_existing=True)
            )
        ).one_or_none()
        if row is None:
            return None
        schedule, zone, paused_until, site_rain = row
        if schedule.failures:  # it went through this time (or rolls back with this)
            schedule.failures, schedule.retry_at = 0, None
        first: datetime | None = schedule.next_run_at
        if first is None:
            return None
        when = when_of(schedule)
        due = occurrences(when, zone.timezone, first - timedelta(microseconds=1), now)
        schedule.next_run_at = next_after(when, zone.timezone, now)
        if not due:
            return None
        late = [t for t in due if (now - t).total_seconds() > schedule.max_delay_s]
        subject = Subject(schedule.site_id, zone.id, schedule.pump_id, schedule_id=schedule.id)
        for at in late[-MISSED_LOGGED:]:
            record(
                session,
                subject,
                now,
                Outcome.skipped,
                Reason.missed,
                f"the {local(at, zone.timezone)} run was missed (no worker ran then)",
                detail={"scheduled_for": at.isoformat()},
            )
        on_time = [t for t in due if t not in late]
        if not on_time:
            return None
        at = on_time[-1]
        schedule.last_run_at = at
        level = water_level(zone, weather or Weather(None), now)
        if level is not None:
            zone.water_level_pct, zone.water_level_at = level.pct, now
        detail: dict[str, Any] = {"scheduled_for": at.isoformat()}
        if weather is not None and weather.error is not None:
            detail["weather"] = weather.error
        asked_by = RunRequest.schedule_id == schedule.id
        found = await _skip_reason(
            session, schedule, zone, paused_until, site_rain, weather, level, now, detail
        ) or await pumps_to_water(session, zone.id, schedule.pump_id, asked_by, "schedule")
        if isinstance(found, Skip):
            reason, message = found.reason, found.message
            record(session, subject, now, Outcome.skipped, reason, message, detail=detail)
            return None
        duration = schedule.duration_s
        why = f"schedule {schedule.name or schedule.id} at {local(at, zone.timezone)}"
        cycling = cycling_of(zone)
        if level is not None:
            # Split into cycles, the whole scaled watering runs; unsplit, one run can be no
            # longer than the runtime cap.
            cap = None if cycling.splits else settings.max_runtime_cap_s
            duration = scaled_duration_s(schedule.duration_s, level.pct, cap)
            why += f", water level {level.pct} %"
        if "moisture" in detail:  # the start's decision shows the run's reason
            why += f", soil moisture {detail['moisture']}"
        make = WishMaker(
            Priority.scheduled,
            duration,
            f"schedule:{schedule.id}",
            at + timedelta(seconds=schedule.max_delay_s),
            why,
            schedule_id=schedule.id,
        )
        queued = await queue_zone_runs(session, settings, schedule.site_id, found, make, cycling)
        if isinstance(queued, Skip):
            record(
                session, subject, now, Outcome.skipped, queued.reason, queued.message, detail=detail
            )
            return None
        return schedule.site_id


async def _skip_reason(
    session: AsyncSession,
    schedule: Schedule,
    zone: Zone,
    paused_until: datetime | None,
    site_rain: datetime | None,
    weather: Weather | None,
    level: WaterLevel | None,
    now: datetime,
    detail: dict[str, Any],
) -> Skip | None:
    """Why the schedule skips this run: the gates, then its own conditions. A moisture
    reading it had to ignore is noted in `detail` (the decision's, and the run's reason)."""
    tz = zone.timezone
    gate = automation_gate(
        now, tz, paused_until, site_rain, zone.rain_delay_until, schedule.skip_if_rain_delay
    )
    if gate is not None:
        return gate
    if schedule.skip_if_moisture_above is not None:
        since = now - timedelta(seconds=schedule.moisture_max_age_s)
        moisture = (
            await session.execute(select(zone_average(zone.id, "soil_moisture", since, now)))
        ).scalar_one()
        if moisture is None:
            detail.update(
                await _moisture_ignored(session, zone.id, schedule.moisture_max_age_s, now)
            )
        elif moisture > schedule.skip_if_moisture_above:
            return Skip(
                Reason.soil_wet,
                f"soil moisture {moisture:.1f} is above {schedule.skip_if_moisture_above:g}",
            )
    limit = schedule.skip_if_rain_forecast_mm
    if limit is not None and weather is not None and weather.forecast is not None:
        rain = weather.forecast.rain_next_24h_mm(now)
        if rain >= limit:
            return Skip(
                Reason.forecast_rain,
                f"{rain:.1f} mm of rain forecast in the next 24 h (limit {limit:g} mm)",
            )
    if level is not None and level.pct == 0:
        return Skip(Reason.water_level_zero, f"water level is 0 % (ET0 {level.et0_mm:.2f} mm)")
    return None


async def _moisture_ignored(
    session: AsyncSession, zone_id: uuid.UUID, max_age_s: int, now: datetime
) -> dict[str, Any]:
    """No reading young enough: the moisture is unknown, and the run goes ahead (as it did
    before the limit for a zone with no reading at all). Watering on an old reading could
    skip a dry bed on the word of a dead sensor; not watering would stop a schedule, the
    grower's baseline, on a sensor fault. So: run, and say how old the newest reading is."""
    newest = await newest_reading(session, zone_id, "soil_moisture", now)
    if newest is None:
        return {"moisture": "ignored: no reading"}
    age = (now - newest).total_seconds()
    return {
        "moisture": f"ignored: newest reading {seconds_words(age)} old "
        f"(limit {seconds_words(max_age_s)})",
        "moisture_age_s": round(age, 3),
    }


async def refresh_water_levels(session: AsyncSession, provider: WeatherProvider | None) -> int:
    """Recompute the water level of every zone with ET scaling (shown in the zone)."""
    async with session.begin():
        now = (await session.execute(select(db_now_expr()))).scalar_one()
        zones = list((await session.execute(select(Zone).where(Zone.et_scaling))).scalars())
    weather = await forecasts_for(provider, zones)
    changed = 0
    async with session.begin():
        for zone in zones:
            level = water_level(zone, weather[zone.id], now)
            if level is not None:
                await session.execute(
                    update(Zone)
                    .where(Zone.id == zone.id)
                    .values(water_level_pct=level.pct, water_level_at=now)
                )
                changed += 1
    return changed
