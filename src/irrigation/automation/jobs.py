"""Worker side of automation: the run-queue dispatcher, rule evaluation, schedules, ET."""

import uuid
from typing import Any

from irrigation import queue
from irrigation.automation import scheduling, thresholds
from irrigation.automation.lockouts import Lockouts
from irrigation.automation.runqueue import dispatch
from irrigation.common.worker_context import worker_context


async def dispatch_runs(ctx: dict[str, Any], site_id: str | None = None) -> int:
    """Start what can start in the run queue (one site after a stop; all from the cron).
    The one pass that judges weather lockouts: it has the forecasts."""
    jc = worker_context(ctx)
    site = uuid.UUID(site_id) if site_id else None
    async with jc.sessions() as session:
        return await dispatch.start_waiting(
            session, jc.settings, jc.redis, site, Lockouts(jc.weather)
        )


async def evaluate_zones(ctx: dict[str, Any]) -> int:
    """Evaluate the rules of the zones whose readings changed since the last run."""
    jc = worker_context(ctx)
    key = queue.dirty_zones_key(jc.redis)
    raw: list[bytes] = await jc.redis.spop(key, 10_000)  # type: ignore[misc]
    zones = {uuid.UUID(z.decode() if isinstance(z, bytes) else z) for z in raw or []}
    if not zones:
        return 0
    async with jc.sessions() as session:
        return await thresholds.evaluate_rules(session, jc.settings, jc.redis, zones)


async def sweep_rules(ctx: dict[str, Any]) -> int:
    """Every enabled rule, whether or not readings arrived: catches an evaluation request
    lost with Redis, and a rule held back by a pause or rain delay that has ended."""
    jc = worker_context(ctx)
    async with jc.sessions() as session:
        return await thresholds.evaluate_rules(session, jc.settings, jc.redis)


async def fire_schedules(ctx: dict[str, Any]) -> int:
    jc = worker_context(ctx)
    async with jc.sessions() as session:
        return await scheduling.fire_due(session, jc.settings, jc.redis, jc.weather)


async def refresh_water_levels(ctx: dict[str, Any]) -> int:
    jc = worker_context(ctx)
    async with jc.sessions() as session:
        return await scheduling.refresh_water_levels(session, jc.weather)
