"""What sensor calibration costs ingestion, step by step, in one process (the end-to-end
figure is `bench/ingest.py --calibrated` against `bench/ingest.py`):

- the sensor lookup every batch makes (`service.sensor_specs`, which now also reads the
  batch's calibration steps) against the lookup as it was before calibration (the sensors'
  columns alone), alternating on the same connection, with 0 and with 2 steps per sensor;
- the item checks (`validation.check_items`, which calibrates first) and the COPY rows
  (`rows.encode` + `copy_data`) of a 10,000-reading batch of 100 sensors, uncalibrated and
  with every sensor calibrated.

Each figure is a median, with its ratio to the uncalibrated one measured in the same run.

    .venv/bin/python bench/calibration.py            # ~30 s
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from common import Stack
from sqlalchemy import ARRAY, Uuid, any_, literal, select

from irrigation.db import create_engine, create_sessionmaker
from irrigation.fleet.models import Sensor
from irrigation.ingest.calibration import Calibration
from irrigation.ingest.rows import Columns, encode
from irrigation.ingest.service import sensor_specs
from irrigation.ingest.validation import SensorSpec, check_items
from irrigation.settings import Settings

DATABASE = "irrigation_bench_calibration"
SENSORS = 100
BATCH = 10_000


async def _median_ms(fn: Callable[[], Awaitable[Any]], n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        await fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def _median_sync_ms(fn: Callable[[], Any], n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


async def lookups(stack: Stack, n: int) -> list[tuple[str, float, float]]:
    """(label, before ms, now ms) per number of steps."""
    settings = Settings(database_url=stack.database_url)
    engine = create_engine(settings)
    sessions = create_sessionmaker(engine)
    conn = await stack.connect()
    out = []
    try:
        site, zone = uuid.uuid4(), uuid.uuid4()
        await conn.execute("INSERT INTO sites (id, name) VALUES ($1, 'bench')", site)
        await conn.execute(
            "INSERT INTO zones (id, site_id, name, timezone, version)"
            " VALUES ($1, $2, 'z', 'UTC', 1)",
            zone,
            site,
        )
        ids = [uuid.uuid4() for _ in range(SENSORS)]
        await conn.executemany(
            "INSERT INTO sensors (id, site_id, zone_id, name, kind, unit, version) "
            "VALUES ($1, $2, $3, 's', 'soil_moisture', '%', 1)",
            [(i, site, zone) for i in ids],
        )
        wanted = set(ids)

        async def before() -> None:
            async with sessions() as session:
                await session.execute(
                    select(
                        Sensor.id,
                        Sensor.unit,
                        Sensor.kind,
                        Sensor.min_value,
                        Sensor.max_value,
                        Sensor.zone_id,
                    ).where(
                        Sensor.site_id == site,
                        Sensor.id == any_(literal(list(wanted), ARRAY(Uuid))),
                    )
                )

        async def now() -> None:
            async with sessions() as session:
                await sensor_specs(session, site, wanted)

        for steps in (0, 2):
            if steps:
                await conn.executemany(
                    "INSERT INTO sensor_calibrations (id, site_id, sensor_id, effective_from,"
                    ' gain, "offset") VALUES ($1, $2, $3, now() - make_interval(days => $4),'
                    " 1.5, 2)",
                    [(uuid.uuid4(), site, i, k) for i in ids for k in range(steps)],
                )
            await conn.execute("VACUUM ANALYZE sensors, sensor_calibrations")
            for _ in range(50):  # warm: plans, pool, caches
                await before()
                await now()
            befores, nows = [], []
            for _ in range(n):  # alternating, so a drift of the machine hits both
                befores.append(await _median_ms(before, 1))
                nows.append(await _median_ms(now, 1))
            out.append(
                (f"{steps} steps per sensor", statistics.median(befores), statistics.median(nows))
            )
    finally:
        await conn.close()
        await engine.dispose()
    return out


def batch_steps(n: int) -> list[tuple[str, float, float]]:
    """(label, uncalibrated ms, calibrated ms) for the checks and the COPY rows."""
    now = datetime.now(UTC)
    ids = [uuid.uuid4() for _ in range(SENSORS)]
    times = [now - timedelta(days=3) + timedelta(seconds=25 * (k // SENSORS)) for k in range(BATCH)]
    cols = Columns(
        [ids[k % SENSORS].bytes for k in range(BATCH)],
        times,
        [5 + (k * 7919 % 9000) / 100 for k in range(BATCH)],
        [100] * BATCH,
        ["%"] * BATCH,
    )
    middle = times[BATCH // 2]
    cal = Calibration.of([now - timedelta(days=4), middle], [0.9, 1.05], [2.0, -3.0])
    plain = {i: SensorSpec("%", 0.0, 100.0) for i in ids}
    calibrated = {i: SensorSpec("%", 0.0, 100.0, calibration=cal) for i in ids}
    retention = timedelta(days=30)

    def checks(specs: dict[uuid.UUID, SensorSpec]) -> Callable[[], Any]:
        return lambda: check_items(cols, specs, now, retention)

    def rows(specs: dict[uuid.UUID, SensorSpec]) -> Callable[[], Any]:
        accepted = check_items(cols, specs, now, retention).accepted
        return lambda: encode(accepted).copy_data()

    return [
        (
            "item checks: validation.check_items",
            _median_sync_ms(checks(plain), n),
            _median_sync_ms(checks(calibrated), n),
        ),
        (
            "COPY rows: rows.encode + copy_data",
            _median_sync_ms(rows(plain), n),
            _median_sync_ms(rows(calibrated), n),
        ),
    ]


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lookups", type=int, default=1000, help="lookups timed per variant")
    p.add_argument("--batches", type=int, default=50, help="batches timed per variant")
    args = p.parse_args()
    print(f"calibration benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    async with Stack(DATABASE) as stack:
        found = await lookups(stack, args.lookups)
    print(f"\n| sensor lookup of a {SENSORS}-sensor batch (median) | before | now | ratio |")
    print("| --- | ---: | ---: | ---: |")
    for label, before, now in found:
        print(f"| {label} | {before:.3f} ms | {now:.3f} ms | {now / before:.2f} |")
    print(
        f"\n| per {BATCH:,}-reading batch, {SENSORS} sensors (median) | uncalibrated "
        "| every sensor calibrated | ratio |"
    )
    print("| --- | ---: | ---: | ---: |")
    for label, plain, calibrated in batch_steps(args.batches):
        print(f"| {label} | {plain:.2f} ms | {calibrated:.2f} ms | {calibrated / plain:.2f} |")


if __name__ == "__main__":
    asyncio.run(main())
