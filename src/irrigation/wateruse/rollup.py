"""The water-use rollup job: ended runs and marked meter hours into litres per local day.

`roll_up_water_use` runs every few seconds (arq cron, bulk queue). Each round is one
transaction under a transaction-scoped advisory lock (a round that finds it taken ends:
another is running), so two rounds never compute the same day from different snapshots
and write over each other:

  1. runs: take up to RUN_BATCH marks of `ended_runs` (deleted, skipping the ones a
     transaction still holds) and write each run's share of each local day of its pump's
     zone: runtime x nominal flow (`water_use_runs`, once per run and day);
  2. meters: take up to HOUR_BATCH marks of `pending_flow_hours` the same way, then, in a
     statement of its own (a fresh snapshot, which sees every reading whose mark was taken),
     integrate again every local day that an hour, widened by the largest gap integrated,
     touches (`water_use_meters`, replaced whole).

Rounds follow each other until no mark is left or BUDGET_S has passed."""

import time
import uuid
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import ARRAY, DateTime, Interval, Uuid, bindparam, text
from sqlalchemy.ext.asyncio import AsyncSession

from irrigation.common.clock import utcnow
from irrigation.common.worker_context import worker_context
from irrigation.settings import Settings

log = structlog.get_logger(__name__)

# pg_try_advisory_xact_lock key of the rollup ("water" in ASCII).
ROLLUP_LOCK = 0x7761746572
RUN_BATCH = 500
HOUR_BATCH = 200
# Under the worker's 30 s job timeout, like the retention's.
BUDGET_S = 20.0

_LOCK = text("SELECT pg_try_advisory_xact_lock(:key)")

# A run's local days: from the local date of its start to that of its stop, each day's
# share the part of [started_at, stopped_at) between the day's two local midnights (23 or
# 25 hours apart on a DST day). `started_at` is when the device's state confirmed the run,
# `stopped_at` when it confirmed the stop (or its own auto-off: the latest it can have run).
_RUNS = text("""
WITH claimed AS (
    DELETE FROM ended_runs WHERE activation_id IN (
        SELECT activation_id FROM ended_runs LIMIT :limit FOR UPDATE SKIP LOCKED)
    RETURNING activation_id
), runs AS (
    SELECT a.id, a.site_id, a.pump_id, p.zone_id, a.water_source_id, z.timezone AS tz,
           a.started_at, a.stopped_at, p.nominal_flow_lpm,
           EXISTS (SELECT 1 FROM sensors AS m WHERE m.pump_id = a.pump_id) AS pump_metered,
           EXISTS (SELECT 1 FROM sensors AS m WHERE m.water_source_id = a.water_source_id)
               AS source_metered
    FROM claimed AS c
    JOIN pump_activations AS a ON a.id = c.activation_id
    JOIN pumps AS p ON p.id = a.pump_id
    JOIN zones AS z ON z.id = p.zone_id
    WHERE a.stopped_at > a.started_at
), shares AS (
    SELECT r.*, d.day::date AS day,
           extract(epoch FROM
               least(r.stopped_at, (d.day + interval '1 day') AT TIME ZONE r.tz)
               - greatest(r.started_at, d.day AT TIME ZONE r.tz))::float8 AS runtime_s
    FROM runs AS r CROSS JOIN LATERAL generate_series(
        (r.started_at AT TIME ZONE r.tz)::date::timestamp,
        (r.stopped_at AT TIME ZONE r.tz)::date::timestamp,
        interval '1 day') AS d(day)
), written AS (
    INSERT INTO water_use_runs (activation_id, day, site_id, pump_id, zone_id,
        water_source_id, runtime_s, nominal_flow_lpm, litres, pump_metered, source_metered)
    SELECT id, day, site_id, pump_id, zone_id, water_source_id, runtime_s, nominal_flow_lpm,
           runtime_s / 60 * nominal_flow_lpm, pump_metered, source_metered
    FROM shares WHERE runtime_s > 0
    ON CONFLICT DO NOTHING
    RETURNING 1
)
SELECT (SELECT count(*) FROM claimed), (SELECT count(*) FROM written)
""").bindparams(limit=RUN_BATCH)

_CLAIM_HOURS = text("""
DELETE FROM pending_flow_hours WHERE (sensor_id, hour) IN (
    SELECT sensor_id, hour FROM pending_flow_hours
    ORDER BY sensor_id, hour LIMIT :limit FOR UPDATE SKIP LOCKED)
RETURNING sensor_id, hour
""").bindparams(limit=HOUR_BATCH)

# The trapezoid rule over each local day of the marked meters: consecutive readings (a, b)
# at most :gap apart enclose (va + vb) / 2 x (b - a) litres (L/min x minutes), the part of
# the segment inside the day taken with the values interpolated at its midnights, so a
# segment across midnight is split between the two days. Readings up to :gap outside the
# day are read for that. A pump's meter counts in the calendar of its pump's zone (as the
# pump's runs do), a source's meter in that of its own zone. Days older than the raw
# retention's horizon are left as they are: their readings may be half deleted.
_INTEGRATE = text("""
WITH meter AS (
    SELECT s.id AS sensor_id, s.site_id,
           CASE WHEN s.pump_id IS NOT NULL THEN 'pump' ELSE 'water_source' END AS meters,
           s.pump_id, p.zone_id,
           coalesce(p.water_source_id, s.water_source_id) AS water_source_id,
           coalesce(pz.timezone, sz.timezone) AS tz,
           s.pump_id IS NOT NULL AND EXISTS (
               SELECT 1 FROM sensors AS o WHERE o.water_source_id = p.water_source_id
           ) AS source_metered
    FROM sensors AS s
    JOIN zones AS sz ON sz.id = s.zone_id
    LEFT JOIN pumps AS p ON p.id = s.pump_id
    LEFT JOIN zones AS pz ON pz.id = p.zone_id
    WHERE s.id = ANY(:sensors) AND (s.pump_id IS NOT NULL OR s.water_source_id IS NOT NULL)
), days AS (
    SELECT DISTINCT h.sensor_id, d.day
    FROM unnest(:sensors, :hours) AS h(sensor_id, hour)
    JOIN meter AS m USING (sensor_id)
    CROSS JOIN LATERAL generate_series(
        ((h.hour - :gap) AT TIME ZONE m.tz)::date::timestamp,
        ((h.hour + interval '1 hour' + :gap) AT TIME ZONE m.tz)::date::timestamp,
        interval '1 day') AS d(day)
), spans AS (
    SELECT d.sensor_id, d.day::date AS day, d.day AT TIME ZONE m.tz AS t0,
           (d.day + interval '1 day') AT TIME ZONE m.tz AS t1
    FROM days AS d JOIN meter AS m USING (sensor_id)
    WHERE (d.day AT TIME ZONE m.tz) - :gap >= :horizon
), segments AS (
    SELECT sp.sensor_id, sp.day, sp.t0, sp.t1, r.ts, r.value,
           lead(r.ts) OVER w AS ts2, lead(r.value) OVER w AS v2
    FROM spans AS sp
    CROSS JOIN LATERAL (
        SELECT ts, value FROM sensor_readings
        WHERE sensor_id = sp.sensor_id AND ts >= sp.t0 - :gap AND ts < sp.t1 + :gap
    ) AS r
    WINDOW w AS (PARTITION BY sp.sensor_id, sp.day ORDER BY r.ts)
), clipped AS (
    SELECT sensor_id, day, ts >= t0 AND ts < t1 AS inside, value, v2,
           extract(epoch FROM ts2 - ts)::float8 AS len,
           extract(epoch FROM greatest(ts, t0) - ts)::float8 AS c,
           extract(epoch FROM least(ts2, t1) - ts)::float8 AS d
    FROM segments
), totals AS (
    SELECT sp.sensor_id, sp.day,
           coalesce(t.litres, 0) AS litres, coalesce(t.readings, 0) AS readings
    FROM spans AS sp LEFT JOIN (
        SELECT sensor_id, day, count(*) FILTER (WHERE inside) AS readings,
               sum((2 * value + (v2 - value) * (c + d) / len) / 2 * (d - c) / 60)
                   FILTER (WHERE len <= :gap_s AND c < d) AS litres
        FROM clipped GROUP BY 1, 2
    ) AS t USING (sensor_id, day)
), written AS (
    INSERT INTO water_use_meters AS w (sensor_id, day, site_id, meters, pump_id, zone_id,
        water_source_id, litres, readings, source_metered)
    SELECT t.sensor_id, t.day, m.site_id, m.meters, m.pump_id, m.zone_id,
           m.water_source_id, t.litres, t.readings, m.source_metered
    FROM totals AS t JOIN meter AS m USING (sensor_id)
    WHERE t.readings > 0 OR t.litres > 0
    ORDER BY 1, 2
    ON CONFLICT (sensor_id, day) DO UPDATE SET
        site_id = EXCLUDED.site_id, meters = EXCLUDED.meters, pump_id = EXCLUDED.pump_id,
        zone_id = EXCLUDED.zone_id, water_source_id = EXCLUDED.water_source_id,
        litres = EXCLUDED.litres, readings = EXCLUDED.readings,
        source_metered = EXCLUDED.source_metered
    RETURNING 1
), removed AS (
    DELETE FROM water_use_meters AS w USING totals AS t
    WHERE w.sensor_id = t.sensor_id AND w.day = t.day AND t.readings = 0 AND t.litres = 0
    RETURNING 1
)
SELECT (SELECT count(*) FROM written), (SELECT count(*) FROM removed)
""").bindparams(
    bindparam("sensors", type_=ARRAY(Uuid)),
    bindparam("hours", type_=ARRAY(DateTime(True))),
    bindparam("gap", type_=Interval()),
    bindparam("horizon", type_=DateTime(True)),
)


async def roll_up_water_use(ctx: dict[str, Any]) -> int:
    """arq cron job: the marks taken (runs and meter hours) in this run."""
    jc = worker_context(ctx)
    async with jc.sessions() as session:
        return await roll_up(session, jc.settings)


async def roll_up(session: AsyncSession, settings: Settings, budget_s: float = BUDGET_S) -> int:
    """Rounds until no mark is left, another rollup holds the lock, or the budget is spent;
    how many marks were taken."""
    deadline = time.monotonic() + budget_s
    taken = 0
    while True:
        async with session.begin():
            if not (await session.execute(_LOCK, {"key": ROLLUP_LOCK})).scalar_one():
                return taken
            runs: int = (await session.execute(_RUNS)).one()[0]
            hours = await _integrate(session, settings)
        taken += runs + hours
        if (runs < RUN_BATCH and hours < HOUR_BATCH) or time.monotonic() > deadline:
            if taken:
                log.info("water_use_rolled_up", marks=taken)
            return taken


async def _integrate(session: AsyncSession, settings: Settings) -> int:
    claimed = (await session.execute(_CLAIM_HOURS)).all()
    if not claimed:
        return 0
    sensors: list[uuid.UUID] = [sensor_id for sensor_id, _ in claimed]
    hours: list[datetime] = [hour for _, hour in claimed]
    gap = timedelta(seconds=settings.water_use_max_gap_s)
    horizon = utcnow() - timedelta(days=settings.raw_retention_days) + timedelta(hours=1)
    await session.execute(
        _INTEGRATE,
        {
            "sensors": sensors,
            "hours": hours,
            "gap": gap,
            "gap_s": float(settings.water_use_max_gap_s),
            "horizon": horizon,
        },
    )
    return len(claimed)
