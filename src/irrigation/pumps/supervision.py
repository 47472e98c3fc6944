"""Flow supervision: each running pump's flow against what it should draw, and each idle
water source's flow against its leak threshold, judged from their flow meters' readings.

Judged per site, when readings of the site's meters arrive (`pumps.supervise_flow`,
enqueued by ingestion after its commit, one job per site at a time): a site's meters and
runs cost its own job only, and the work is bounded by the site's running pumps and its
sources with leak detection, a few primary-key probes of the readings each.

A window of readings ends at the meter's newest reading and reaches back `flow_check_s`
(a run) or `leak_after_s` (a leak); it counts only if the reading holding at its start
(the newest at or before it) is itself inside what is judged: after the run's
`flow_settle_s`, or within the source's idle time. A run is stopped through the same
stop as an operator's (marked under the pump's lock, then the fenced, confirmed stop job),
with its cause; a leak is latched on the source, which a halt also closes to new runs."""

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from irrigation import queue
from irrigation.common.clock import db_now_expr
from irrigation.common.worker_context import worker_context
from irrigation.fleet.models import Pump, WaterSource
from irrigation.pumps.commands import latch
from irrigation.pumps.models import (
    FLOW_CAUSES,
    HIGH_FLOW,
    LEAK,
    LOW_FLOW,
    NO_FLOW,
    ActivationStatus,
    DeviceIncident,
)
from irrigation.pumps.service import lock_activation, lock_pump, stop_locked

log = structlog.get_logger(__name__)

# "Near zero": a mean below this share of the expected flow is no flow at all (a dry pump,
# a closed valve, a blocked line), not a weak one, and latches the pump's fault.
NO_FLOW_PCT = 5.0
# The expected flow is the median of the mean flows of the pump's last LEARN_FROM_RUNS
# measured runs, once LEARN_AFTER_RUNS were measured; the nominal flow until then.
LEARN_FROM_RUNS = 10
LEARN_AFTER_RUNS = 3
# What latches the pump's fault besides stopping the run.
LATCHING = (NO_FLOW, HIGH_FLOW)

_RUN_WINDOWS = text("""
SELECT a.id, a.pump_id, p.low_flow_pct, p.high_flow_pct, p.nominal_flow_lpm,
       p.learned_flow_lpm, held.ts, newest.ts, w.readings, w.mean
FROM pump_activations AS a
JOIN pumps AS p ON p.id = a.pump_id
JOIN sensors AS m ON m.pump_id = p.id AND m.site_id = a.site_id
CROSS JOIN LATERAL (
    SELECT ts FROM sensor_readings WHERE sensor_id = m.id ORDER BY ts DESC LIMIT 1
) AS newest
CROSS JOIN LATERAL (
    SELECT ts FROM sensor_readings
    WHERE sensor_id = m.id AND ts <= newest.ts - make_interval(secs => p.flow_check_s)
    ORDER BY ts DESC LIMIT 1
) AS held
CROSS JOIN LATERAL (
    SELECT count(*) AS readings, avg(value) AS mean FROM sensor_readings
    WHERE sensor_id = m.id AND ts >= held.ts AND ts <= newest.ts
) AS w
WHERE a.site_id = :site_id AND a.status = 'running' AND a.stop_requested_at IS NULL
  AND (p.learned_flow_lpm IS NOT NULL OR p.nominal_flow_lpm IS NOT NULL)
  AND held.ts >= a.started_at + make_interval(secs => p.flow_settle_s)
""")

# A source is idle when the newest activation of each of its pumps is over, and was over
# before the window began by that pump's settling time (the line drains as it fills).
_LEAK_WINDOWS = text("""
SELECT ws.id, ws.leak_threshold_lpm, held.ts, newest.ts, w.readings, w.low
FROM water_sources AS ws
JOIN sensors AS m ON m.water_source_id = ws.id AND m.site_id = ws.site_id
CROSS JOIN LATERAL (
    SELECT ts FROM sensor_readings WHERE sensor_id = m.id ORDER BY ts DESC LIMIT 1
) AS newest
CROSS JOIN LATERAL (
    SELECT ts FROM sensor_readings
    WHERE sensor_id = m.id AND ts <= newest.ts - make_interval(secs => ws.leak_after_s)
    ORDER BY ts DESC LIMIT 1
) AS held
CROSS JOIN LATERAL (
    SELECT count(*) AS readings, min(value) AS low FROM sensor_readings
    WHERE sensor_id = m.id AND ts >= held.ts AND ts <= newest.ts
) AS w
WHERE ws.site_id = :site_id AND ws.leak_threshold_lpm IS NOT NULL
  AND ws.leak_detected_at IS NULL
  -- fresh (an import of old readings finds no leak now), and no stale reading holding
  AND newest.ts >= CAST(:now AS timestamptz) - make_interval(secs => ws.leak_after_s)
  AND held.ts >= newest.ts - make_interval(secs => 2 * ws.leak_after_s)
  AND w.low > ws.leak_threshold_lpm
  AND NOT EXISTS (
      SELECT 1 FROM pumps AS p
      CROSS JOIN LATERAL (
          SELECT status, coalesce(stopped_at, created_at) AS ended FROM pump_activations
          WHERE pump_id = p.id ORDER BY created_at DESC LIMIT 1
      ) AS latest
      WHERE p.water_source_id = ws.id
        AND (latest.status IN ('queued', 'starting', 'running')
             OR latest.ended + make_interval(secs => p.flow_settle_s) > held.ts))
""")

# A run that ended normally: the mean of its meter's readings from its settling time to its
# stop, if there are at least two.
_MEASURE_RUN = text(f"""
UPDATE pump_activations AS a SET mean_flow_lpm = measured.mean
FROM (
    SELECT avg(r.value) AS mean
    FROM pump_activations AS run
    JOIN pumps AS p ON p.id = run.pump_id
    JOIN sensors AS m ON m.pump_id = run.pump_id
    JOIN sensor_readings AS r ON r.sensor_id = m.id
         AND r.ts >= run.started_at + make_interval(secs => p.flow_settle_s)
         AND r.ts < run.stopped_at
    WHERE run.id = :activation_id
    HAVING count(*) >= 2
) AS measured
WHERE a.id = :activation_id AND a.started_at IS NOT NULL AND a.stopped_at IS NOT NULL
  AND a.status IN ('completed', 'aborted') AND a.error IS NULL
  AND coalesce(a.stop_cause, '') NOT IN ({", ".join(repr(c) for c in (*FLOW_CAUSES, LEAK))})
RETURNING a.pump_id
""")

_LEARN = text(f"""
UPDATE pumps SET learned_flow_lpm = (
    SELECT CASE WHEN count(*) >= {LEARN_AFTER_RUNS}
                THEN percentile_cont(0.5) WITHIN GROUP (ORDER BY recent.mean) END
    FROM (
        SELECT mean_flow_lpm AS mean FROM pump_activations
        WHERE pump_id = :pump_id AND mean_flow_lpm IS NOT NULL
        ORDER BY stopped_at DESC LIMIT {LEARN_FROM_RUNS}
    ) AS recent
)
WHERE id = :pump_id
""")


@dataclass(frozen=True)
class Finding:
    """A running pump's flow outside its band over one window of its meter's readings."""

    activation_id: uuid.UUID
    pump_id: uuid.UUID
    cause: str
    mean_lpm: float
    expected_lpm: float
    expected_from: str  # `learned` or `nominal`
    limit_pct: float
    since: datetime
    until: datetime
    readings: int

    @property
    def pct(self) -> float:
        return 100.0 * self.mean_lpm / self.expected_lpm

    def detail(self) -> dict[str, Any]:
        return {
            "mean_flow_lpm": round(self.mean_lpm, 3),
            "expected_flow_lpm": round(self.expected_lpm, 3),
            "expected_from": self.expected_from,
            "flow_pct": round(self.pct, 1),
            "limit_pct": self.limit_pct,
            "window_from": self.since.isoformat(),
            "window_to": self.until.isoformat(),
            "readings": self.readings,
        }

    def sentence(self) -> str:
        seconds = (self.until - self.since).total_seconds()
        side = "above" if self.cause == HIGH_FLOW else "below"
        return (
            f"mean {self.mean_lpm:.3g} L/min over {seconds:g} s ({self.readings} readings), "
            f"{self.pct:.0f} % of the expected {self.expected_lpm:.3g} L/min "
            f"({self.expected_from}), {side} {self.limit_pct:g} %"
        )


def judge_run(row: Any) -> Finding | None:
    """The finding on one run's window (a row of `_RUN_WINDOWS`), or None: within its band."""
    act_id, pump_id, low_pct, high_pct, nominal, learned, since, until, readings, mean = row
    expected, source = (learned, "learned") if learned is not None else (nominal, "nominal")
    if expected is None or mean is None:
        return None
    mean = float(mean)
    if mean < expected * low_pct / 100:
        if mean < expected * NO_FLOW_PCT / 100:
            cause, limit = NO_FLOW, NO_FLOW_PCT
        else:
            cause, limit = LOW_FLOW, float(low_pct)
    elif mean > expected * high_pct / 100:
        cause, limit = HIGH_FLOW, float(high_pct)
    else:
        return None
    return Finding(
        act_id, pump_id, cause, mean, expected, source, limit, since, until, int(readings)
    )


@dataclass(frozen=True)
class Leak:
    water_source_id: uuid.UUID
    threshold_lpm: float
    low_lpm: float
    since: datetime
    until: datetime
    readings: int

    def detail(self) -> dict[str, Any]:
        return {
            "leak_threshold_lpm": self.threshold_lpm,
            "lowest_flow_lpm": round(self.low_lpm, 3),
            "window_from": self.since.isoformat(),
            "window_to": self.until.isoformat(),
            "readings": self.readings,
        }


async def supervise_flow(ctx: dict[str, Any], site_id: str) -> str:
    """Judge the site's running pumps and idle sources on their meters' newest readings:
    stop runs whose flow is out of band, latch leaks (and halt sources that ask for it)."""
    jc = worker_context(ctx)
    site = uuid.UUID(site_id)
    async with jc.sessions() as session:
        async with session.begin():
            now = (await session.execute(select(db_now_expr()))).scalar_one()
            params = {"site_id": site, "now": now}
            findings = [
                f
                for row in (await session.execute(_RUN_WINDOWS, params)).all()
                if (f := judge_run(row)) is not None
            ]
            leaks = [
                Leak(source_id, threshold, float(low), since, until, int(readings))
                for source_id, threshold, since, until, readings, low in (
                    await session.execute(_LEAK_WINDOWS, params)
                ).all()
            ]
        stops: list[tuple[uuid.UUID, str]] = []
        for finding in findings:
            if await _stop_for_flow(session, site, finding):
                stops.append((finding.activation_id, finding.cause))
        for leak in leaks:
            stops += [(act_id, LEAK) for act_id in await _latch_leak(session, site, leak)]
    # After the commits, as an operator's stop: the job tells the device and confirms it.
    for act_id, cause in stops:
        await queue.enqueue_stop(jc.redis, act_id, cause)
    return f"{len(findings)} run(s) stopped, {len(leaks)} leak(s)"


async def _stop_for_flow(session: AsyncSession, site_id: uuid.UUID, finding: Finding) -> bool:
    """Mark the run for its stop under the pump's lock, if it still runs unstopped (the
    window was read without a lock), with the finding as a device incident; `no_flow` and
    `high_flow` latch the pump's fault in the same transaction."""
    async with session.begin():
        pump, now = await lock_pump(session, finding.pump_id, site_id)
        if pump.active_activation_id != finding.activation_id:
            return False
        activation = await lock_activation(session, finding.activation_id)
        if (
            activation.status != ActivationStatus.running
            or activation.stop_requested_at is not None
        ):
            return False
        why = finding.sentence()
        if finding.cause in LATCHING:
            latch(pump, finding.cause, why, now)
        session.add(
            DeviceIncident(
                site_id=site_id,
                pump_id=pump.id,
                kind=finding.cause,
                at=now,
                command_id=activation.command_id,
                detail={"activation_id": str(activation.id), **finding.detail()},
            )
        )
        await stop_locked(session, pump, now, finding.cause, **finding.detail())
    log.warning(
        "flow_stop",
        cause=finding.cause,
        activation_id=str(finding.activation_id),
        pump_id=str(finding.pump_id),
        detail=why,
    )
    return True


async def _latch_leak(session: AsyncSession, site_id: uuid.UUID, leak: Leak) -> list[uuid.UUID]:
    """Latch the leak on the source (and with `halt_on_leak`, halt it: its active runs are
    stopped, admissions refused). Locks the source, then its pumps in id order: the order
    of every admission. Returns the runs the stop job must stop on their devices."""
    async with session.begin():
        source = (
            await session.execute(
                select(WaterSource)
                .where(WaterSource.id == leak.water_source_id, WaterSource.site_id == site_id)
                .with_for_update(key_share=True)
                .execution_options(populate_existing=True)
            )
        ).scalar_one_or_none()
        if source is None or source.leak_detected_at is not None:
            return []
        now = (await session.execute(select(db_now_expr()))).scalar_one()
        source.leak_detected_at = now
        source.leak_flow_lpm = leak.low_lpm
        stopping: list[uuid.UUID] = []
        if source.halt_on_leak:
            source.halted_at = now
            # Idle when the window was read; a run admitted since is stopped too.
            pumps = (
                await session.execute(
                    select(Pump)
                    .where(Pump.water_source_id == source.id, Pump.site_id == site_id)
                    .order_by(Pump.id)
                    .with_for_update(key_share=True)
                    .execution_options(populate_existing=True)
                )
            ).scalars()
            for pump in pumps:
                stopped = await stop_locked(session, pump, now, LEAK, **leak.detail())
                if stopped is not None and stopped.status != ActivationStatus.aborted:
                    stopping.append(stopped.id)
    log.warning(
        "leak_detected",
        water_source_id=str(leak.water_source_id),
        halted=source.halted_at is not None,
        **leak.detail(),
    )
    return stopping


async def learn_flow(session: AsyncSession, activation_id: uuid.UUID) -> None:
    """After a run's stop is recorded: its mean flow, if it ended normally and its pump has
    a meter, and the pump's expected flow learned again from its last measured runs.
    Best effort, in a transaction of its own: the stop is already recorded."""
    await learn_flows(session, [activation_id])


async def learn_flows(session: AsyncSession, activation_ids: Sequence[uuid.UUID]) -> None:
    """`learn_flow` for the runs a batch stopped, in one transaction of their own (one
    failure drops what the batch learned: the next runs learn again)."""
    try:
        async with session.begin():
            for activation_id in activation_ids:
                measured = await session.execute(_MEASURE_RUN, {"activation_id": activation_id})
                pump_id = measured.scalar_one_or_none()
                if pump_id is not None:
                    await session.execute(_LEARN, {"pump_id": pump_id})
    except DBAPIError as exc:  # a lock not granted in time: the next runs learn again
        log.warning("flow_learning_failed", activations=len(activation_ids), error=str(exc))
