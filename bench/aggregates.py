"""Aggregates benchmark: the rollup-plus-edges query over HTTP against the plain
`date_trunc ... GROUP BY` over raw rows; then retention, chunked DELETE against dropping a
monthly partition.

    .venv/bin/python bench/aggregates.py            # 10,000,000 readings (~5 min)
    .venv/bin/python bench/aggregates.py --quick    # 432,000 readings, smoke run (~1 min)

Sets up everything itself: a fresh database `irrigation_bench_aggregates` (dropped first if
it exists, dropped again at the end), migrations, a site `bench` and an admin key (the
`irrigation keys create` command), zones of 10 sensors each (Europe/Berlin) written into
the fleet tables, and the readings: 100 sensors x 30 days, one reading every 26 s, made by
`generate_series` in time order (sensors interleaved, as ingestion writes them). The
hourly rollup is built as ingestion builds it, `date_trunc('hour', ts, 'UTC')` with count,
sum, min and max, here in one INSERT ... SELECT ... GROUP BY. Then `irrigation serve`.

Measured, over HTTP, sequential requests on one keep-alive connection (latency, not
throughput): (a) one sensor, 30 days of hour buckets; (b) a 10-sensor zone, 30 days of
hour buckets, combined; (c) one sensor and (d) the zone, a year of day buckets (the data
spans 30 days). Each range ends 7 minutes into an hour and starts 7 minutes into one, so
both edge buckets come from raw rows. Baseline, in the same run on the same rows: the plain
`date_trunc ... GROUP BY` over the raw rows for the same request, through asyncpg (JIT off,
as the service runs it). Every HTTP answer is checked against the baseline's rows.

Retention: a copy of the readings in a table partitioned by month (61 partitions, the
retention window, as production would need) measures (e) deleting the oldest month's rows
with the retention job's chunked DELETE (`readings.retention`) against DETACH + DROP of
that month's partition, with the WAL each writes and the VACUUM the DELETE leaves behind;
and (f) what partitioning costs the hot paths: the aggregate statement and a 10,000-row
ingestion batch on the plain table and on the partitioned copy.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import asyncpg
import httpx
from common import Stack, descendants, percentile
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from irrigation.db import create_sessionmaker
from irrigation.ingest import store
from irrigation.ingest.rows import encode
from irrigation.readings import queries, retention
from irrigation.readings.schemas import Bucket

DATABASE = "irrigation_bench_aggregates"
TZ = "Europe/Berlin"
SENSORS_PER_ZONE = 10

LOAD = """
INSERT INTO sensor_readings (sensor_id, ts, value, quality)
SELECT s.id, t.ts,
       40 + 25 * sin(extract(epoch FROM t.ts) / 7200 + s.phase)
          + (hashint8(extract(epoch FROM t.ts)::bigint + s.phase::bigint) % 1000) / 200.0,
       100
FROM generate_series($1::timestamptz, $2::timestamptz, $3::interval) AS t(ts)
CROSS JOIN (SELECT id, row_number() OVER (ORDER BY id) AS phase FROM sensors) AS s
"""

# Hour by hour, as ingestion writes it (an hour of every sensor shares pages).
ROLLUP = """
INSERT INTO reading_rollups_hourly (sensor_id, bucket, count, sum, min, max)
SELECT sensor_id, date_trunc('hour', ts, 'UTC'), count(*), sum(value), min(value), max(value)
FROM sensor_readings GROUP BY 1, 2 ORDER BY 2, 1
"""

BASELINE = """
SELECT date_trunc($1, ts, $2) AS start, count(*) AS count, avg(value) AS avg,
       min(value) AS min, max(value) AS max
FROM sensor_readings
WHERE sensor_id = ANY($3) AND ts >= $4 AND ts < $5
GROUP BY 1 ORDER BY 1
"""


@dataclass(frozen=True)
class Params:
    sensors: int
    days: int
    step_s: int
    http_requests: int
    baseline_runs: int

    @staticmethod
    def of(args: argparse.Namespace) -> Params:
        if args.quick:
            return Params(sensors=20, days=30, step_s=120, http_requests=40, baseline_runs=8)
        return Params(sensors=100, days=30, step_s=26, http_requests=300, baseline_runs=20)

    @property
    def readings(self) -> int:
        return self.sensors * (self.days * 86400 // self.step_s)


@dataclass(frozen=True)
class Case:
    name: str
    bucket: Bucket
    days: int
    zone: bool


CASES = [
    Case("sensor, 30 days hourly", Bucket.hour, 30, zone=False),
    Case("zone of 10, 30 days hourly", Bucket.hour, 30, zone=True),
    Case("sensor, 1 year daily", Bucket.day, 365, zone=False),
    Case("zone of 10, 1 year daily", Bucket.day, 365, zone=True),
]


@dataclass
class Fleet:
    zones: list[tuple[uuid.UUID, list[uuid.UUID]]]

    def target(self, case: Case, i: int) -> tuple[str, list[uuid.UUID]]:
        """The i-th request's path and sensor ids (rotating over zones and sensors)."""
        zone_id, sensor_ids = self.zones[i % len(self.zones)]
        if case.zone:
            return f"/v1/zones/{zone_id}/aggregates", sensor_ids
        sensor_id = sensor_ids[(i // len(self.zones)) % len(sensor_ids)]
        return f"/v1/sensors/{sensor_id}/aggregates", [sensor_id]


@dataclass(frozen=True)
class Line:
    """One row of the summary table."""

    figure: str
    value: str
    baseline: str = ""
    ratio: str = ""


def table(lines: Sequence[Line]) -> str:
    rows = ["| figure | value | baseline | ratio |", "| --- | ---: | ---: | ---: |"]
    rows += [f"| {x.figure} | {x.value} | {x.baseline} | {x.ratio} |" for x in lines]
    return "\n".join(rows)


def p50_p95(values: Sequence[float]) -> str:
    return f"{percentile(values, 50) * 1000:.1f} / {percentile(values, 95) * 1000:.1f} ms"


def log(message: str) -> None:
    print(message, flush=True)


async def timed(work: Callable[[], Awaitable[Any]]) -> float:
    t0 = time.perf_counter()
    await work()
    return time.perf_counter() - t0


# Set-up ---------------------------------------------------------------------------------


async def load(stack: Stack, p: Params, end: datetime) -> Fleet:
    conn = await stack.connect()
    try:
        site_id = await conn.fetchval("SELECT id FROM sites WHERE name = 'bench'")
        zones: list[tuple[uuid.UUID, list[uuid.UUID]]] = []
        for z in range(p.sensors // SENSORS_PER_ZONE):
            zone_id = uuid.uuid4()
            await conn.execute(
                "INSERT INTO zones (id, site_id, name, timezone, version) "
                "VALUES ($1, $2, $3, $4, 1)",
                zone_id,
                site_id,
                f"zone {z}",
                TZ,
            )
            ids = [uuid.uuid4() for _ in range(SENSORS_PER_ZONE)]
            await conn.executemany(
                "INSERT INTO sensors (id, site_id, zone_id, name, kind, unit, version) "
                "VALUES ($1, $2, $3, $4, 'soil_moisture', '%', 1)",
                [(sid, site_id, zone_id, f"moisture {z}.{i}") for i, sid in enumerate(ids)],
            )
            zones.append((zone_id, ids))
        first = end - timedelta(days=p.days)
        t0 = time.perf_counter()
        # A bulk load: the key is built once after the rows, and the FK checks are off.
        await conn.execute("ALTER TABLE sensor_readings DROP CONSTRAINT pk_sensor_readings")
        await conn.execute("SET session_replication_role = replica")
        await conn.execute(
            LOAD, first, end - timedelta(microseconds=1), timedelta(seconds=p.step_s)
        )
        await conn.execute("RESET session_replication_role")
        await conn.execute(
            "ALTER TABLE sensor_readings ADD CONSTRAINT pk_sensor_readings "
            "PRIMARY KEY (sensor_id, ts)"
        )
        loaded = time.perf_counter() - t0
        t0 = time.perf_counter()
        await conn.execute(ROLLUP)
        rolled = time.perf_counter() - t0
        await conn.execute("VACUUM ANALYZE sensor_readings")
        await conn.execute("VACUUM ANALYZE reading_rollups_hourly")
        count = await conn.fetchval("SELECT count(*) FROM sensor_readings")
        hours = await conn.fetchval("SELECT count(*) FROM reading_rollups_hourly")
        size = await conn.fetchval(
            "SELECT pg_size_pretty(pg_total_relation_size('sensor_readings'))"
        )
        log(
            f"loaded {count:,} readings ({size}) in {loaded:.1f} s; "
            f"{hours:,} rollup hours in {rolled:.1f} s"
        )
    finally:
        await conn.close()
    return Fleet(zones)


# Aggregates -----------------------------------------------------------------------------


def window(case: Case, end: datetime) -> tuple[datetime, datetime]:
    """Ends 7 minutes into the last hour of data; starts 7 minutes into an hour."""
    stop = end - timedelta(minutes=53)
    return stop - timedelta(days=case.days), stop


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of a process and its children, from /proc."""
    total = 0.0
    for one in [pid, *descendants(pid)]:
        with contextlib.suppress(OSError), open(f"/proc/{one}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


@dataclass
class HttpRun:
    latencies: list[float]
    cpu_per_request: float
    """The API process's CPU time per request: what a quiet machine would see as its
    share of the latency (the shared machine's noise adds to wall time, not to this)."""
    first: dict[str, Any]


async def http_run(
    client: httpx.AsyncClient,
    api_pid: int,
    request: Callable[[int], tuple[str, dict[str, str]]],
    n: int,
) -> HttpRun:
    latencies: list[float] = []
    first: dict[str, Any] = {}
    for i in range(-5, n):  # five warm-up requests
        if i == 0:
            cpu0 = cpu_seconds(api_pid)
        path, params = request(i)
        t0 = time.perf_counter()
        response = await client.get(path, params=params)
        elapsed = time.perf_counter() - t0
        if response.status_code != 200:
            raise RuntimeError(f"{path}: {response.status_code} {response.text[:500]}")
        if i >= 0:
            latencies.append(elapsed)
        if i == 0:
            first = response.json()
    return HttpRun(latencies, (cpu_seconds(api_pid) - cpu0) / n, first)


def aggregate_request(
    fleet: Fleet, case: Case, end: datetime
) -> Callable[[int], tuple[str, dict[str, str]]]:
    start, stop = window(case, end)
    params = {"bucket": case.bucket.value, "start": start.isoformat(), "end": stop.isoformat()}
    return lambda i: (fleet.target(case, i)[0], params)


async def baseline_latencies(
    conn: asyncpg.Connection, fleet: Fleet, case: Case, end: datetime, n: int
) -> tuple[list[float], list[asyncpg.Record]]:
    start, stop = window(case, end)
    latencies: list[float] = []
    rows: list[asyncpg.Record] = []
    for i in range(-1, n):
        _, ids = fleet.target(case, i)
        t0 = time.perf_counter()
        result = await conn.fetch(BASELINE, case.bucket.value, TZ, ids, start, stop)
        if i >= 0:
            latencies.append(time.perf_counter() - t0)
        if i == 0:
            rows = result
    return latencies, rows


async def in_process_latencies(
    sessions: async_sessionmaker[AsyncSession], fleet: Fleet, case: Case, end: datetime, n: int
) -> list[float]:
    """The service's query alone (SQLAlchemy session, no HTTP): where the time goes."""
    start, stop = window(case, end)
    latencies: list[float] = []
    for i in range(-3, n):
        _, ids = fleet.target(case, i)
        async with sessions() as session:
            t0 = time.perf_counter()
            await queries.aggregate(
                session, ids, case.bucket, TZ, start, stop, start - timedelta(days=1)
            )
            if i >= 0:
                latencies.append(time.perf_counter() - t0)
    return latencies


def check_same(case: Case, answer: dict[str, Any], rows: Sequence[asyncpg.Record]) -> None:
    points = answer["points"]
    if len(points) != len(rows):
        raise AssertionError(f"{case.name}: {len(points)} points, baseline {len(rows)} rows")
    for point, row in zip(points, rows, strict=True):
        same_start = datetime.fromisoformat(point["start"]) == row["start"]
        same = (point["count"], point["min"], point["max"]) == (
            row["count"],
            row["min"],
            row["max"],
        )
        close = math.isclose(point["avg"], row["avg"], rel_tol=1e-9)
        if not (same_start and same and close):
            raise AssertionError(f"{case.name}: {point} != {dict(row)}")


async def explain(
    sessions: async_sessionmaker[AsyncSession], fleet: Fleet, case: Case, end: datetime
) -> str:
    start, stop = window(case, end)
    _, ids = fleet.target(case, 0)
    statement, params = queries.aggregate_statement(
        ids, case.bucket, TZ, start, stop, start - timedelta(days=1)
    )
    async with sessions() as session:
        await session.execute(text("SET LOCAL jit = off"))
        plan = await session.execute(
            text("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + statement.text), params
        )
        return "\n".join(row[0] for row in plan)


async def explain_baseline(
    conn: asyncpg.Connection, fleet: Fleet, case: Case, end: datetime
) -> str:
    start, stop = window(case, end)
    _, ids = fleet.target(case, 0)
    rows = await conn.fetch(
        "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + BASELINE, case.bucket.value, TZ, ids, start, stop
    )
    return "\n".join(row[0] for row in rows)


def sqlalchemy_url(stack: Stack) -> str:
    return stack.database_url.replace("postgresql://", "postgresql+asyncpg://", 1)


async def aggregates(stack: Stack, key: str, p: Params, fleet: Fleet, end: datetime) -> list[Line]:
    api, url = await stack.start_api(workers=1)
    lines: list[Line] = []
    engine = create_async_engine(sqlalchemy_url(stack))
    sessions = create_sessionmaker(engine)
    conn = await stack.connect()
    await conn.execute("SET jit = off")
    try:
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120) as client:
            # The floor: an authenticated GET of one row, the fixed cost of any request.
            floor = await http_run(
                client,
                api.pid,
                lambda i: (f"/v1/zones/{fleet.zones[i % len(fleet.zones)][0]}", {}),
                p.http_requests,
            )
            lines.append(
                Line(
                    "floor: GET /v1/zones/{id} (auth + one row), HTTP p50 / p95",
                    p50_p95(floor.latencies),
                    f"API CPU {floor.cpu_per_request * 1000:.1f} ms a request",
                )
            )
            log(f"{lines[-1].figure}: {lines[-1].value}, {lines[-1].baseline}")
            for case in CASES:
                run = await http_run(
                    client, api.pid, aggregate_request(fleet, case, end), p.http_requests
                )
                http = run.latencies
                sql = await in_process_latencies(sessions, fleet, case, end, p.http_requests)
                base, rows = await baseline_latencies(conn, fleet, case, end, p.baseline_runs)
                check_same(case, run.first, rows)
                ratio = (
                    f"{percentile(base, 50) / percentile(http, 50):.1f}x / "
                    f"{percentile(base, 95) / percentile(http, 95):.1f}x"
                )
                cpu = f"API CPU {run.cpu_per_request * 1000:.1f} ms a request"
                lines.append(
                    Line(f"{case.name}: HTTP p50 / p95", p50_p95(http), p50_p95(base), ratio)
                )
                lines.append(
                    Line(f"{case.name}: the query alone (in process), p50 / p95", p50_p95(sql), cpu)
                )
                log(
                    f"{case.name}: HTTP {p50_p95(http)} (p50 / p95), {cpu}; the query alone "
                    f"{p50_p95(sql)}; raw GROUP BY {p50_p95(base)}; raw / HTTP {ratio}; "
                    f"{len(run.first['points'])} points, the same as the raw GROUP BY's"
                )
        zone_case = CASES[1]
        log(f"\nEXPLAIN (ANALYZE, BUFFERS) of '{zone_case.name}', the service's statement:")
        log(await explain(sessions, fleet, zone_case, end))
        log(f"\nEXPLAIN (ANALYZE, BUFFERS) of '{zone_case.name}', the raw GROUP BY baseline:")
        log(await explain_baseline(conn, fleet, zone_case, end))
    finally:
        await conn.close()
        await engine.dispose()
        stack.stop(api)
    return lines


# Retention ------------------------------------------------------------------------------


def month_floor(moment: datetime) -> datetime:
    return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def next_month(moment: datetime) -> datetime:
    return month_floor(month_floor(moment) + timedelta(days=32))


async def wal_lsn(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn"))


async def partitioned_copy(conn: asyncpg.Connection, end: datetime) -> list[datetime]:
    """`readings_by_month`: the readings table's columns, key and foreign key, partitioned
    by month over the whole retention window; the readings copied in. Returns the
    partitions' lower bounds."""
    await conn.execute(
        """
        CREATE TABLE readings_by_month (LIKE sensor_readings INCLUDING DEFAULTS)
            PARTITION BY RANGE (ts);
        ALTER TABLE readings_by_month ADD CONSTRAINT pk_readings_by_month
            PRIMARY KEY (sensor_id, ts);
        ALTER TABLE readings_by_month ADD CONSTRAINT fk_readings_by_month_sensor_id_sensors
            FOREIGN KEY (sensor_id) REFERENCES sensors (id) ON DELETE RESTRICT;
        """
    )
    months: list[datetime] = []
    month = month_floor(end - timedelta(days=1825))
    while month <= end:
        upper = next_month(month)
        await conn.execute(
            f"CREATE TABLE readings_{month:%Y%m} PARTITION OF readings_by_month "
            f"FOR VALUES FROM ('{month.isoformat()}') TO ('{upper.isoformat()}')"
        )
        months.append(month)
        month = upper
    t0 = time.perf_counter()
    await conn.execute("SET session_replication_role = replica")
    await conn.execute("INSERT INTO readings_by_month SELECT * FROM sensor_readings")
    await conn.execute("RESET session_replication_role")
    await conn.execute("VACUUM ANALYZE readings_by_month")
    copied_s = time.perf_counter() - t0
    log(f"copied the readings into {len(months)} monthly partitions in {copied_s:.1f} s")
    return months


async def hot_path_costs(
    stack: Stack, conn: asyncpg.Connection, fleet: Fleet, end: datetime, runs: int
) -> list[Line]:
    """The aggregate statement and an ingestion batch, plain table against partitioned."""
    case = CASES[1]
    start, stop = window(case, end)
    _, ids = fleet.target(case, 0)
    statement, params = queries.aggregate_statement(
        ids, case.bucket, TZ, start, stop, start - timedelta(days=1)
    )
    tables = ("sensor_readings", "readings_by_month")
    engine = create_async_engine(sqlalchemy_url(stack))
    sessions = create_sessionmaker(engine)
    read: dict[str, list[float]] = {t: [] for t in tables}
    try:
        for i in range(-3, runs * 5):
            for table in tables:
                sql = text(statement.text.replace("sensor_readings", table))
                async with sessions() as session:
                    await session.execute(text("SET LOCAL jit = off"))
                    elapsed = await timed(lambda s=session, q=sql: s.execute(q, params))
                if i >= 0:
                    read[table].append(elapsed)
    finally:
        await engine.dispose()
    # 10,000 new readings a batch (100 sensors x 100 instants past the data), as ingestion
    # writes them: the same COPY and rollup statement, the readings table swapped.
    sensors = [sid for _, zone in fleet.zones for sid in zone][:100]
    write: dict[str, list[float]] = {t: [] for t in tables}
    for i in range(runs):
        for k, table in enumerate(tables):
            base = end + timedelta(hours=1 + 2 * i + k)
            batch = [(sid, base + timedelta(seconds=s)) for s in range(100) for sid in sensors]
            batch.sort()
            encoded = encode(
                [
                    SimpleNamespace(sensor_id=sid, ts=ts, value=50.0, quality=100)
                    for sid, ts in batch
                ]
            )
            async with conn.transaction():
                elapsed = await timed(
                    lambda table=table, encoded=encoded: store.write_rows(conn, encoded, table)
                )
            write[table].append(elapsed)
    plain, parted = tables
    rows = len(sensors) * 100
    lines = [
        Line(
            "zone 30 days hourly statement on the partitioned copy, p50 / p95",
            p50_p95(read[parted]),
            f"plain table: {p50_p95(read[plain])}",
            f"{percentile(read[parted], 50) / percentile(read[plain], 50):.2f}",
        ),
        Line(
            f"ingestion batch of {rows:,} into the partitioned copy, p50 / p95",
            p50_p95(write[parted]),
            f"plain table: {p50_p95(write[plain])}",
            f"{percentile(write[parted], 50) / percentile(write[plain], 50):.2f}",
        ),
    ]
    for line in lines:
        log(f"{line.figure}: {line.value}; {line.baseline}; ratio {line.ratio}")
    return lines


async def deletion(
    stack: Stack, conn: asyncpg.Connection, months: list[datetime], first: datetime, p: Params
) -> list[Line]:
    """The oldest month holding readings, removed both ways."""
    month = month_floor(first)
    cutoff = next_month(month)
    rows = await conn.fetchval("SELECT count(*) FROM sensor_readings WHERE ts < $1", cutoff)
    await conn.execute("VACUUM sensor_readings")  # a clean start, as autovacuum leaves it

    engine = create_async_engine(sqlalchemy_url(stack))
    try:
        wal0, t0 = await wal_lsn(conn), time.perf_counter()
        purge = await retention.purge_expired_readings(
            create_sessionmaker(engine), cutoff, budget_s=3600
        )
        deleted_s, wal1 = time.perf_counter() - t0, await wal_lsn(conn)
    finally:
        await engine.dispose()
    if purge.deleted != rows or not purge.is_complete:
        raise AssertionError(f"{purge} after {rows} readings")
    t0 = time.perf_counter()
    await conn.execute("VACUUM sensor_readings")
    vacuum_s, wal2 = time.perf_counter() - t0, await wal_lsn(conn)

    partition = f"readings_{month:%Y%m}"
    in_partition = await conn.fetchval(f"SELECT count(*) FROM {partition}")
    assert in_partition == rows, (in_partition, rows)
    wal3, t0 = await wal_lsn(conn), time.perf_counter()
    await conn.execute(f"ALTER TABLE readings_by_month DETACH PARTITION {partition} CONCURRENTLY")
    await conn.execute(f"DROP TABLE {partition}")
    dropped_s, wal4 = time.perf_counter() - t0, await wal_lsn(conn)

    rate = rows / deleted_s
    month_rows = p.sensors * 30 * 86400 // 26  # a month of these sensors at one reading / 26 s
    mb = 1024 * 1024
    log(
        f"oldest month, {rows:,} readings: chunked DELETE {deleted_s:.1f} s "
        f"({rate:,.0f} readings/s, {purge.chunks} chunks, WAL {(wal1 - wal0) / mb:,.0f} MB), "
        f"then VACUUM {vacuum_s:.1f} s (WAL {(wal2 - wal1) / mb:,.0f} MB); "
        f"DETACH CONCURRENTLY + DROP {dropped_s * 1000:.0f} ms (WAL {(wal4 - wal3) / 1024:,.0f} kB)"
    )
    log(
        f"a month of {p.sensors} sensors at one reading / 26 s is {month_rows:,} readings: "
        f"{month_rows / rate:,.0f} s of chunked DELETE (+ VACUUM), spread over the hourly runs "
        f"({month_rows / rate / (30 * 24):.2f} s a run), against one DROP a month"
    )
    return [
        Line(
            f"remove the oldest month ({rows:,} readings): chunked DELETE",
            f"{deleted_s:.1f} s + VACUUM {vacuum_s:.1f} s",
            f"DETACH CONCURRENTLY + DROP: {dropped_s * 1000:.0f} ms",
            f"{(deleted_s + vacuum_s) / dropped_s:,.0f}",
        ),
        Line(
            "WAL written: chunked DELETE + VACUUM",
            f"{(wal2 - wal0) / mb:,.1f} MB",
            f"DETACH + DROP: {(wal4 - wal3) / mb:,.2f} MB",
            f"{(wal2 - wal0) / max(1, wal4 - wal3):,.0f}",
        ),
        Line("chunked DELETE rate", f"{rate:,.0f} readings/s", f"{purge.chunks} chunks"),
    ]


async def retention_phase(stack: Stack, p: Params, fleet: Fleet, end: datetime) -> list[Line]:
    conn = await stack.connect()
    try:
        await conn.execute("SET jit = off")
        months = await partitioned_copy(conn, end)
        lines = await hot_path_costs(stack, conn, fleet, end, p.baseline_runs)
        lines += await deletion(stack, conn, months, end - timedelta(days=p.days), p)
    finally:
        await conn.close()
    return lines


# Main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smoke run with fewer readings")
    return parser.parse_args(argv)


async def run(args: argparse.Namespace) -> int:
    p = Params.of(args)
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    log(f"{p.readings:,} readings: {p.sensors} sensors x {p.days} days, one every {p.step_s} s")
    async with Stack(DATABASE) as stack:
        key = stack.create_key("bench")
        fleet = await load(stack, p, end)
        lines = await aggregates(stack, key, p, fleet, end)
        log("")
        lines += await retention_phase(stack, p, fleet, end)
    log("\n" + table(lines))
    return 0


def main() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    sys.exit(asyncio.run(run(parse_args())))


if __name__ == "__main__":
    main()
