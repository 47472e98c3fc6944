"""Batch ingestion benchmark: POST /v1/readings end to end, against a raw COPY baseline.

    .venv/bin/python bench/ingest.py            # full run (1,000,000 readings per variant)
    .venv/bin/python bench/ingest.py --quick    # smoke run (< 30 s)

Sets up everything itself: a fresh database `irrigation_bench_ingest` (dropped first if it
exists, dropped again at the end), migrations, a site with an admin key, and the API
(`irrigation serve --workers N`, once per `--api-workers` value) as a child process. Over
the API it creates 100 soil-moisture sensors (unit %) in 4 zones (`--metered`: flow meters,
each attached to a pump of its own). Then:

(a) end to end: C client processes (one keep-alive connection each, one request in flight
    each) post pre-serialized 10,000-reading batches (built before the clock starts) until
    `--total` readings are in: readings/s, latencies, and the API's peak RSS (psutil, the
    server process and its children, every 100 ms). Right before each HTTP run, on the
    same emptied tables: the baseline, bare asyncpg `copy_records_to_table` of the same
    rows, in the same 10,000-row batches over C connections, into an identical bare table
    (same columns and primary key; no rollup, no foreign key). Ratio = HTTP / baseline.
(b) breakdown: K batches one after another, in this process, through the service's own
    functions with a timer around each step (parse, sensor lookup, item checks, job row,
    the binary COPY rows (`rows.encode`), the COPY into sensor_readings and the rollup +
    last_seen statement (`store.ROLLUP_AND_SEEN`) on the asyncpg connection, the rest of
    `store.insert_readings` and `store.roll_up`, quarantine, answer, commit, Redis cache),
    against the same K batches posted one at a time over HTTP; the difference is
    HTTP/uvicorn overhead.
    `service.ingest_batch` uninstrumented is timed too, as a check that the steps add up.
(c) alternatives (DB only, asyncpg, C connections, same batches, one transaction each):
    the app's write path, `store.write_rows` (binary COPY into sensor_readings, then the
    rollup statement), and its fallback for batches that meet stored readings (temp COPY +
    `store.INSERT_FROM_TEMP` returning the inserted rows, then the same rollup statement:
    `store.write_conflicting`, priced here on fresh rows); against the historical variants:
    the unnest statement the app used until session 4 (`UNNEST_STATEMENT`) vs COPY into a
    temporary table then `INSERT ... SELECT ... ON CONFLICT DO NOTHING` with the same
    rollup CTEs, each with and without the foreign key sensor_readings.sensor_id, with and
    without `synchronous_commit=off`, plus the statement without its CTEs, to price them.

Readings: sensor s, slot j at `now - 3 days + 25 s * j` (so all in the past), value and
quality in range; every (sensor_id, ts) once. Layout `mixed`: every batch covers all 100
sensors (100 consecutive slots each); `partitioned`: client c owns sensors c, c+C, ...
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import gc
import json
import multiprocessing
import os
import platform
import queue
import re
import statistics
import sys
import threading
import time
import types
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.context import SpawnProcess
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil  # type: ignore[import-untyped]
import redis.asyncio as aioredis
from common import (
    CpuMeter,
    Proc,
    Stack,
    finish_py_spy,
    free_port,
    profile_summary,
    py_spy,
    wait_http,
)

DATABASE = "irrigation_bench_ingest"
BATCH = 10_000
SENSORS = 100
ZONES = 4
STEP_S = 25
BARE_TABLE = "bench_bare_readings"
TEMP_TABLE = "bench_ingest_tmp"
COLUMNS = ("sensor_id", "ts", "value", "quality")

Row = tuple[uuid.UUID, datetime, float, int]
Slot = tuple[int, int]
"""(sensor index, time slot j)"""


# The data set ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DataSpec:
    """Everything a process needs to rebuild the same batches."""

    sensor_ids: tuple[str, ...]
    base_ts: float
    total: int
    clients: int
    layout: str
    connection: str = "keepalive"
    """`keepalive`: one connection per client for the whole run; `per-batch`: a new one
    for every batch (`Connection: close`), so each lands on whichever worker accepts it."""

    @property
    def batches(self) -> int:
        return self.total // BATCH


def _chunks(group: Sequence[int], count: int) -> list[list[Slot]]:
    """`count` batches over the sensors of `group`, slot-major: batch k holds the next
    consecutive slots of every sensor of the group."""
    out: list[list[Slot]] = []
    current: list[Slot] = []
    j = 0
    while len(out) < count:
        for s in group:
            current.append((s, j))
            if len(current) == BATCH:
                out.append(current)
                current = []
                if len(out) == count:
                    break
        j += 1
    return out


def client_batches(spec: DataSpec, client: int) -> list[list[Slot]]:
    """The batches client `client` sends: the global batches b with b % C == client."""
    mine = len(range(client, spec.batches, spec.clients))
    if spec.layout == "mixed":
        return _chunks(range(len(spec.sensor_ids)), spec.batches)[client :: spec.clients]
    group = range(client, len(spec.sensor_ids), spec.clients)
    return _chunks(group, mine)


def _value(s: int, j: int) -> float:
    return (500 + (s * 7919 + j * 104729) % 9000) / 100  # 5.00 .. 94.99 %


def _quality(s: int, j: int) -> int:
    return 80 + (s + j) % 21


class Rows:
    """Slots to JSON bodies (as a device sends them) or to COPY rows."""

    def __init__(self, spec: DataSpec) -> None:
        self.spec = spec
        self.uuids = [uuid.UUID(s) for s in spec.sensor_ids]
        self._ts: dict[int, datetime] = {}

    def ts(self, j: int) -> datetime:
        found = self._ts.get(j)
        if found is None:
            found = self._ts[j] = datetime.fromtimestamp(self.spec.base_ts + STEP_S * j, UTC)
        return found

    def body(self, slots: Sequence[Slot]) -> bytes:
        ids = self.spec.sensor_ids
        items = [
            f'{{"sensor_id":"{ids[s]}","ts":"{self.ts(j).isoformat()}",'
            f'"value":{_value(s, j)!r},"unit":"%","quality":{_quality(s, j)}}}'
            for s, j in slots
        ]
        return ('{"readings":[' + ",".join(items) + "]}").encode()

    def rows(self, slots: Sequence[Slot]) -> list[Row]:
        """Sorted by (sensor_id, ts), as the statement sorts them."""
        out = [(self.uuids[s], self.ts(j), _value(s, j), _quality(s, j)) for s, j in slots]
        out.sort(key=lambda r: (r[0], r[1]))
        return out


# Client processes -----------------------------------------------------------------------


@dataclass
class ClientResult:
    client: int
    statuses: list[int]
    latencies: list[float]
    inserted: int
    started: float
    finished: float
    cpu_s: float
    errors: list[str]


@dataclass(frozen=True)
class Command:
    url: str
    key: str
    start_at: float
    only: tuple[int, ...] | None = None
    """Indexes of this client's batches to send (None: all)."""


def _client_main(spec: DataSpec, index: int, commands: Any, results: Any) -> None:
    """One client process: builds its bodies once, then runs each command it is given."""
    rows = Rows(spec)
    bodies = [rows.body(slots) for slots in client_batches(spec, index)]
    json.loads(bodies[0])  # valid JSON, or fail now rather than as 422s
    results.put(("ready", index, len(bodies), sum(map(len, bodies))))
    while (command := commands.get()) is not None:
        results.put(("done", index, _client_run(bodies, index, command, spec.connection)))


def _client_run(
    bodies: list[bytes], index: int, command: Command, connection: str = "keepalive"
) -> ClientResult:
    headers = {"authorization": f"Bearer {command.key}", "content-type": "application/json"}
    if connection == "per-batch":
        headers["connection"] = "close"
    statuses: list[int] = []
    latencies: list[float] = []
    errors: list[str] = []
    inserted = 0
    chosen = bodies if command.only is None else [bodies[i] for i in command.only]
    with httpx.Client(base_url=command.url, headers=headers, timeout=300) as client:
        client.get("/healthz")  # the connection is open before the clock starts
        time.sleep(max(0.0, command.start_at - time.time()))
        started, cpu0 = time.time(), time.process_time()
        for body in chosen:
            sent = time.perf_counter()
            try:
                response = client.post("/v1/readings", content=body)
            except httpx.HTTPError as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            latencies.append(time.perf_counter() - sent)
            statuses.append(response.status_code)
            if response.status_code == 200:
                inserted += int(response.json()["inserted"])
            elif len(errors) < 5:
                errors.append(f"{response.status_code}: {response.text[:300]}")
        finished, cpu = time.time(), time.process_time() - cpu0
    return ClientResult(index, statuses, latencies, inserted, started, finished, cpu, errors)


class ClientPool:
    """C spawned client processes, each holding its pre-serialized batches."""

    def __init__(self, spec: DataSpec) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.spec = spec
        self.results: Any = ctx.Queue()
        self.commands: list[Any] = [ctx.Queue() for _ in range(spec.clients)]
        self.procs: list[SpawnProcess] = [
            ctx.Process(target=_client_main, args=(spec, i, self.commands[i], self.results))
            for i in range(spec.clients)
        ]
        for p in self.procs:
            p.start()
        self.body_bytes = 0

    def _get(self, timeout_s: float) -> Any:
        try:
            return self.results.get(timeout=timeout_s)
        except queue.Empty:
            dead = [p.pid for p in self.procs if not p.is_alive()]
            msg = f"client processes silent for {timeout_s} s (dead: {dead})"
            raise RuntimeError(msg) from None

    async def ready(self) -> None:
        for _ in self.procs:
            kind, _, _, size = await asyncio.to_thread(self._get, 600)
            assert kind == "ready"
            self.body_bytes += size

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]

    async def run(
        self, url: str, key: str, clients: Sequence[int] | None = None, only: Sequence[int] = ()
    ) -> tuple[float, list[ClientResult]]:
        """Start the clients together; (wall-clock start, their results)."""
        chosen = list(range(self.spec.clients)) if clients is None else list(clients)
        start_at = time.time() + 0.5
        for i in chosen:
            self.commands[i].put(Command(url, key, start_at, tuple(only) if only else None))
        out = []
        for _ in chosen:
            kind, _, result = await asyncio.to_thread(self._get, 1800)
            assert kind == "done"
            out.append(result)
        return start_at, out

    def close(self) -> None:
        for q in self.commands:
            with contextlib.suppress(Exception):
                q.put(None)
        for p in self.procs:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join(5)


# Server memory --------------------------------------------------------------------------


class RssSampler:
    """Peak RSS of a process and its descendants, sampled every `interval_s` in a thread."""

    def __init__(self, pid: int, interval_s: float = 0.1) -> None:
        self.root = psutil.Process(pid)
        self.interval_s = interval_s
        self.peak_total = 0
        self.peak_single = 0
        self.first_total = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> tuple[int, int]:
        total = single = 0
        with contextlib.suppress(psutil.NoSuchProcess):
            for p in [self.root, *self.root.children(recursive=True)]:
                with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                    rss = p.memory_info().rss
                    total += rss
                    single = max(single, rss)
        return total, single

    def _loop(self) -> None:
        while not self._stop.is_set():
            total, single = self._sample()
            if not self.samples:
                self.first_total = total
            self.samples += 1
            self.peak_total = max(self.peak_total, total)
            self.peak_single = max(self.peak_single, single)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def mb(n: float) -> str:
    return f"{n / 2**20:,.0f} MB"


# Database helpers -----------------------------------------------------------------------


async def reset(conn: asyncpg.Connection, cache: tuple[str, str] | None = None) -> None:
    """Empty readings, rollups, jobs and the bare table; a checkpoint, so that no phase
    pays for the previous one's dirty pages. With `cache` (Redis URL, namespace): the hot
    cache's keys too, or every run after the first would re-send instants the cache
    already holds, which takes the script's merge instead of its append."""
    if cache is not None:
        client = aioredis.Redis.from_url(cache[0])
        try:
            async for key in client.scan_iter(f"{cache[1]}:sensor:*", count=1000):
                await client.delete(key)
        finally:
            await client.aclose()
    await conn.execute(
        "TRUNCATE sensor_readings, reading_rollups_hourly, quarantined_readings, "
        f"ingestion_jobs, pending_flow_hours, {BARE_TABLE}"
    )
    await conn.execute("UPDATE sensors SET last_seen_at = NULL")
    await conn.execute("VACUUM ANALYZE sensors")
    await conn.execute("CHECKPOINT")


async def fk_name(conn: asyncpg.Connection) -> str | None:
    name: str | None = await conn.fetchval(
        """SELECT conname FROM pg_constraint
           WHERE conrelid = 'sensor_readings'::regclass AND contype = 'f'"""
    )
    return name


async def set_fk(conn: asyncpg.Connection, on: bool) -> None:
    name = await fk_name(conn)
    if on and name is None:
        await conn.execute(
            "ALTER TABLE sensor_readings ADD CONSTRAINT fk_sensor_readings_sensor_id_sensors "
            "FOREIGN KEY (sensor_id) REFERENCES sensors (id) ON DELETE RESTRICT"
        )
    elif not on and name is not None:
        await conn.execute(f'ALTER TABLE sensor_readings DROP CONSTRAINT "{name}"')


async def close_all(conns: Sequence[asyncpg.Connection]) -> None:
    """Close and wait until the backends are gone: a backend that exits inside the next
    phase would take its CPU seconds out of that phase's PostgreSQL figure."""
    pids = [c.get_server_pid() for c in conns]
    for c in conns:
        await c.close()
    for _ in range(500):  # at most 10 s
        if not any(psutil.pid_exists(p) for p in pids):
            break
        await asyncio.sleep(0.02)


UNNEST_STATEMENT = """
WITH input AS (
    SELECT sensor_id, to_timestamp(epoch) AS ts, value, quality
    FROM unnest($1::uuid[], $2::float8[], $3::float8[], $4::int2[])
        AS t(sensor_id, epoch, value, quality)
), ins AS (
    INSERT INTO sensor_readings (sensor_id, ts, value, quality)
    SELECT sensor_id, ts, value, quality FROM input ORDER BY sensor_id, ts
    ON CONFLICT (sensor_id, ts) DO NOTHING
    RETURNING sensor_id, ts, value
), roll AS (
    INSERT INTO reading_rollups_hourly AS r (sensor_id, bucket, count, sum, min, max)
    SELECT sensor_id, date_trunc('hour', ts, 'UTC'), count(*), sum(value), min(value), max(value)
    FROM ins GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (sensor_id, bucket) DO UPDATE SET
        count = r.count + EXCLUDED.count,
        sum = r.sum + EXCLUDED.sum,
        min = LEAST(r.min, EXCLUDED.min),
        max = GREATEST(r.max, EXCLUDED.max)
), seen AS (
    UPDATE sensors AS s SET last_seen_at = GREATEST(s.last_seen_at, m.latest)
    FROM (SELECT sensor_id, max(ts) AS latest FROM ins GROUP BY 1) AS m
    WHERE s.id = m.sensor_id
)
SELECT count(*) FROM ins
"""
"""The statement the app used until session 4 (unnest arrays, ON CONFLICT, rollup and
last_seen CTEs), formerly `store.INSERT_READINGS`: kept here for the historical variants of
phase (c)."""

SHAPE_CHANGED = "UNNEST_STATEMENT changed shape: update bench/ingest.py"


def _once(text: str, old: str, new: str) -> str:
    if text.count(old) != 1:
        raise RuntimeError(SHAPE_CHANGED)
    return text.replace(old, new)


def _sql_variants() -> dict[str, str]:
    """The app's statement until session 4, and bench-only variants derived from it."""
    full = UNNEST_STATEMENT
    final = re.search(r"\n\)\s*\n(SELECT [^\n]* FROM ins)\s*$", full)
    if final is None:
        raise RuntimeError(SHAPE_CHANGED)
    returning = final.group(1)  # what the app reads back, the same for every variant
    unnest = re.compile(
        r"SELECT sensor_id, to_timestamp\(epoch\) AS ts, value, quality\s+FROM unnest\(.*?\)"
        r"\s+AS t\(sensor_id, epoch, value, quality\)",
        re.S,
    )
    input_cte = unnest.search(full)
    if input_cte is None or "), seen AS (" not in full:
        raise RuntimeError(SHAPE_CHANGED)
    return {
        "unnest": full,
        "temp": unnest.sub(f"SELECT sensor_id, ts, value, quality FROM {TEMP_TABLE}", full),
        "unnest_insert_only": f"""
            WITH input AS ({input_cte.group(0)})
            , ins AS (
                INSERT INTO sensor_readings (sensor_id, ts, value, quality)
                SELECT sensor_id, ts, value, quality FROM input ORDER BY sensor_id, ts
                ON CONFLICT (sensor_id, ts) DO NOTHING
                RETURNING sensor_id, ts, value
            )
            {returning}""",
        # As before session 2: sorted by Python, no ORDER BY in the statement.
        "unnest_python_sort": _once(
            full,
            "SELECT sensor_id, ts, value, quality FROM input ORDER BY sensor_id, ts\n",
            "SELECT sensor_id, ts, value, quality FROM input\n",
        ),
        # The full statement minus the sensors.last_seen_at CTE.
        "unnest_no_seen": full.split("), seen AS (")[0] + ")\n" + returning,
    }


# Phase (a): end to end ------------------------------------------------------------------


@dataclass
class Run:
    label: str
    readings: int
    wall_s: float
    cpu: dict[str, float] = field(default_factory=dict)
    pg_cpu_s: float = 0.0
    """CPU seconds of exactly the PostgreSQL backends that served this run."""
    driver_cpu_s: float = 0.0
    """CPU seconds of the process(es) that drove them: the bench (DB only) or the API."""

    @property
    def rate(self) -> float:
        return self.readings / self.wall_s

    @property
    def batches(self) -> float:
        return self.readings / BATCH

    @property
    def pg_ms(self) -> float:
        """PostgreSQL backend CPU per 10,000-reading batch: next to wall-clock rates, the
        figure that other people's load on this shared machine moves least."""
        return self.pg_cpu_s * 1000 / self.batches

    @property
    def driver_ms(self) -> float:
        return self.driver_cpu_s * 1000 / self.batches


def cpu_seconds(pids: Sequence[int]) -> dict[int, float]:
    out = {}
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            t = psutil.Process(pid).cpu_times()
            out[pid] = t.user + t.system
    return out


async def backend_pids(admin: asyncpg.Connection, application: str) -> list[int]:
    rows = await admin.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND application_name = $2",
        DATABASE,
        application,
    )
    return [r["pid"] for r in rows]


@dataclass
class HttpRun(Run):
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    rss_peak_total: int = 0
    rss_peak_single: int = 0
    rss_idle: int = 0
    client_cpu_s: float = 0.0
    job_ms: list[int] = field(default_factory=list)


async def copy_baseline(
    url: str, batches: list[list[list[Row]]], label: str, api_pid: int | None
) -> Run:
    """Each connection COPYs its batches, one COPY (autocommit) per batch."""
    conns = [await asyncpg.connect(url) for _ in batches]
    meter = CpuMeter({"api": [api_pid]} if api_pid else {}, DATABASE)
    try:

        async def lane(conn: asyncpg.Connection, mine: list[list[Row]]) -> None:
            for rows in mine:
                await conn.copy_records_to_table(BARE_TABLE, records=rows, columns=COLUMNS)

        pids = [c.get_server_pid() for c in conns]
        pg0 = cpu_seconds(pids)
        cpu0 = time.process_time()
        meter.start()
        t0 = time.perf_counter()
        await asyncio.gather(*(lane(c, m) for c, m in zip(conns, batches, strict=True)))
        wall = time.perf_counter() - t0
        driver = time.process_time() - cpu0
        cpu = meter.stop(client_cpu_s=driver)
        pg = sum(cpu_seconds(pids).values()) - sum(pg0.values())
        count: int = await conns[0].fetchval(f"SELECT count(*) FROM {BARE_TABLE}")
    finally:
        await close_all(conns)
    total = sum(len(r) for m in batches for r in m)
    if count != total:
        raise RuntimeError(f"baseline copied {count} rows, expected {total}")
    return Run(label, total, wall, cpu, pg, driver)


async def http_run(
    clients: ClientPool, url: str, key: str, api_pid: int, label: str, admin: asyncpg.Connection
) -> HttpRun:
    children = psutil.Process(api_pid).children(recursive=True)
    roles = {"api": [api_pid]} if not children else {f"api:{c.pid}": [c.pid] for c in children}
    meter = CpuMeter(roles, DATABASE)
    api_pids = [api_pid, *(c.pid for c in children)]
    with RssSampler(api_pid) as rss:
        await asyncio.sleep(0.3)
        idle = rss.peak_total
        pg0 = cpu_seconds(await backend_pids(admin, "irrigation"))
        api0 = sum(cpu_seconds(api_pids).values())
        meter.start()
        start_at, results = await clients.run(url, key)
        cpu = meter.stop(client_cpu_s=sum(r.cpu_s for r in results))
        api_cpu = sum(cpu_seconds(api_pids).values()) - api0
        pg_after = cpu_seconds(await backend_pids(admin, "irrigation"))
        pg = sum(v - pg0.get(pid, 0.0) for pid, v in pg_after.items())
    wall = max(r.finished for r in results) - start_at
    statuses: dict[int, int] = {}
    for r in results:
        for s in r.statuses:
            statuses[s] = statuses.get(s, 0) + 1
    errors = [e for r in results for e in r.errors]
    inserted = sum(r.inserted for r in results)
    if errors or inserted != clients.spec.total:
        raise RuntimeError(f"{label}: inserted {inserted} of {clients.spec.total}; {errors[:5]}")
    rows = await admin.fetch("SELECT processing_time_ms FROM ingestion_jobs")
    return HttpRun(
        label,
        inserted,
        wall,
        cpu,
        pg,
        api_cpu,
        latencies=[x for r in results for x in r.latencies],
        statuses=statuses,
        rss_peak_total=rss.peak_total,
        rss_peak_single=rss.peak_single,
        rss_idle=idle,
        client_cpu_s=sum(r.cpu_s for r in results),
        job_ms=[r["processing_time_ms"] for r in rows],
    )


def pct(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


# Phase (b): where the time goes ---------------------------------------------------------

STEPS = (
    ("parse", "Pydantic parse: validation.parse_batch(bytes)"),
    ("lookup", "sensor lookup: service.sensor_specs"),
    ("checks", "item checks: validation.check_items"),
    ("encode", "binary COPY rows: rows.encode (dedupe, sort, pack)"),
    ("copy", "COPY into sensor_readings alone (asyncpg copy_to_table)"),
    ("rollup_sql", "rollup + last_seen statement alone (store.ROLLUP_AND_SEEN)"),
    (
        "write_rest",
        "store.insert_readings and store.roll_up minus both statements: savepoints, Python"
        " rollup aggregation",
    ),
    ("quarantine", "quarantine insert: store.insert_quarantine (0 items here)"),
    ("txn", "rest of the transaction: BEGIN, job row INSERT, answer, COMMIT"),
    ("cache", "Redis: HotCache.record"),
)


class _TimedDriver:
    """The asyncpg connection as store.py gets it, timing each statement by its SQL, and
    each COPY (`copy_to_table`) as the step "copy"."""

    def __init__(self, conn: Any, timers: dict[str, float], names: dict[str, str]) -> None:
        self._conn = conn
        self._timers = timers
        self._names = names

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._conn, name)
        if name not in ("fetch", "fetchval", "fetchrow", "execute", "copy_to_table"):
            return attr

        async def timed(query: str, *args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return await attr(query, *args, **kwargs)
            finally:
                # copy_to_table's first argument is the table, not SQL.
                step = "copy" if name == "copy_to_table" else self._names.get(query, "other_sql")
                self._timers[step] = self._timers.get(step, 0.0) + time.perf_counter() - t0

        return timed


class InProcess:
    """The app's own objects, in this process, on the bench database and Redis namespace.
    The real service.ingest_batch runs; timers are wrapped around the functions it calls
    (in this process only: src is untouched), so the breakdown follows the code as it is."""

    def __init__(self, job: BreakdownJob) -> None:
        from irrigation.app import create_app
        from irrigation.settings import Settings

        self.settings = Settings(
            database_url=job.database_url,
            redis_url=job.redis_url,
            redis_namespace=job.namespace,
            log_level="WARNING",
        )
        # The whole app, as in the server: its objects are on the heap the GC walks, and
        # the GC tuned as `irrigation serve` tunes it (app.create_served_app).
        self.app = create_app(self.settings)
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)
        self.engine = self.app.state.engine
        self.sessionmaker = self.app.state.sessionmaker
        self.cache = self.app.state.hot_cache
        self.key = job.key
        self.timers: dict[str, float] = {}
        self.timing = False

    async def close(self) -> None:
        await self.app.state.redis.aclose()
        await self.engine.dispose()

    async def site_id(self) -> uuid.UUID:
        from irrigation.auth import service as auth_service

        async with self.sessionmaker() as session:
            found = await auth_service.authenticate(session, self.key)
        assert found is not None
        site: uuid.UUID = found.site_id
        return site

    def _wrap(self, owner: Any, name: str, step: str, *, optional: bool = False) -> None:
        if not hasattr(owner, name):
            if optional:
                return
            raise RuntimeError(f"{owner!r} has no {name}: update bench/ingest.py")
        original = getattr(owner, name)
        timers = self.timers

        async def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return await original(*args, **kwargs)
            finally:
                timers[step] = timers.get(step, 0.0) + time.perf_counter() - t0

        def timed_sync(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                timers[step] = timers.get(step, 0.0) + time.perf_counter() - t0

        is_async = asyncio.iscoroutinefunction(original)
        setattr(owner, name, timed if is_async else timed_sync)

    def instrument(self) -> None:
        from irrigation.ingest import service, store

        self._wrap(service, "sensor_specs", "lookup")
        self._wrap(service, "check_items", "checks")
        # The name service.py calls (imported there from rows.py); sync.
        self._wrap(service, "encode", "encode")
        self._wrap(store, "insert_readings", "insert_readings")
        self._wrap(store, "roll_up", "roll_up")
        self._wrap(store, "insert_quarantine", "quarantine")
        self._wrap(service, "_ingest_once", "ingest_once")
        self._wrap(self.cache, "record", "cache")
        names = {store.ROLLUP_AND_SEEN: "rollup_sql"}
        original_driver = store._driver
        timers = self.timers

        async def driver(session: Any) -> Any:
            return _TimedDriver(await original_driver(session), timers, names)

        store._driver = driver

    async def instrumented(self, body: bytes, site_id: uuid.UUID) -> dict[str, float]:
        """One batch through parse_batch and service.ingest_batch, with the timers on."""
        from irrigation.ingest import service
        from irrigation.ingest.validation import parse_batch

        self.timers.clear()
        t0 = time.perf_counter()
        parsed = parse_batch(body)
        parse_s = time.perf_counter() - t0
        async with self.sessionmaker() as session:
            await service.ingest_batch(
                session, self.settings, self.cache, site_id, parsed, idem=None
            )
        t = dict(self.timers)
        if "copy" not in t:
            raise RuntimeError("the COPY was not run: update bench/ingest.py")
        # All timed inside _ingest_once (encode: inside write_checked).
        inner = ("lookup", "checks", "encode", "insert_readings", "roll_up", "quarantine")
        return {
            "parse": parse_s,
            "lookup": t.get("lookup", 0.0),
            "checks": t.get("checks", 0.0),
            "encode": t.get("encode", 0.0),
            "copy": t["copy"],
            "rollup_sql": t.get("rollup_sql", 0.0),
            "write_rest": t["insert_readings"]
            + t.get("roll_up", 0.0)
            - t["copy"]
            - t.get("rollup_sql", 0.0),
            "quarantine": t.get("quarantine", 0.0),
            "txn": t["ingest_once"] - sum(t.get(k, 0.0) for k in inner),
            "cache": t.get("cache", 0.0),
        }

    async def whole(self, body: bytes, site_id: uuid.UUID) -> float:
        """parse_batch and the real service.ingest_batch, before the timers go on."""
        from irrigation.ingest import service
        from irrigation.ingest.validation import parse_batch

        t0 = time.perf_counter()
        parsed = parse_batch(body)
        async with self.sessionmaker() as session:
            await service.ingest_batch(
                session, self.settings, self.cache, site_id, parsed, idem=None
            )
        return time.perf_counter() - t0


@dataclass
class Breakdown:
    batches: int
    steps: dict[str, list[float]]
    whole: list[float]
    http: list[float]
    http_job_ms: list[int]

    def mean(self, name: str) -> float:
        return statistics.mean(self.steps[name])

    @property
    def steps_total(self) -> float:
        """Means add up (medians do not): the cyclic GC's full collections land on a few
        batches only, and their cost belongs in the per-batch figure."""
        return sum(self.mean(name) for name, _ in STEPS)

    @property
    def overhead(self) -> float:
        return statistics.mean(self.http) - self.steps_total


@dataclass(frozen=True)
class BreakdownJob:
    spec: DataSpec
    count: int
    repeat: int
    database_url: str
    redis_url: str
    namespace: str
    key: str


@dataclass
class ChildResult:
    steps: dict[str, list[float]]
    whole: list[float]
    proposals: list[Proposal]


def _breakdown_child(job: BreakdownJob) -> ChildResult:
    """Runs in a fresh process: the bench's own data (a million COPY rows) must not sit on
    the heap that the cyclic GC walks while the steps are timed."""
    return asyncio.run(_breakdown_async(job))


async def _breakdown_async(job: BreakdownJob) -> ChildResult:
    rows = Rows(job.spec)
    bodies = [rows.body(slots) for slots in client_batches(job.spec, 0)[: job.count]]
    admin = await asyncpg.connect(job.database_url)
    app = InProcess(job)
    try:
        site_id = await app.site_id()
        cache = (job.redis_url, job.namespace)
        await reset(admin, cache)
        await app.whole(bodies[0], site_id)  # warm-up: imports, pool, statement cache
        await reset(admin, cache)
        whole = [await app.whole(body, site_id) for body in bodies]
        await reset(admin, cache)
        app.instrument()
        steps: dict[str, list[float]] = {name: [] for name, _ in STEPS}
        for body in bodies:
            for name, seconds in (await app.instrumented(body, site_id)).items():
                steps[name].append(seconds)
        stored: int = await admin.fetchval("SELECT count(*) FROM sensor_readings")
        if stored != len(bodies) * BATCH:
            raise RuntimeError(f"breakdown stored {stored}, expected {len(bodies) * BATCH}")
    finally:
        await app.close()
        await admin.close()
    return ChildResult(steps, whole, proposals(bodies, job.repeat))


async def breakdown(
    stack: Stack,
    key: str,
    clients: ClientPool,
    url: str,
    admin: asyncpg.Connection,
    count: int,
    repeat: int,
) -> tuple[Breakdown, list[Proposal]]:
    """The same `count` batches (client 0's first ones), on emptied tables each time:
    instrumented and uninstrumented in a fresh process, then over HTTP one at a time."""
    count = min(count, len(range(0, clients.spec.batches, clients.spec.clients)))
    job = BreakdownJob(
        clients.spec, count, repeat, stack.database_url, stack.redis_url, stack.namespace, key
    )
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
        child = await asyncio.get_running_loop().run_in_executor(pool, _breakdown_child, job)
    await reset(admin, (stack.redis_url, stack.namespace))
    _, results = await clients.run(url, key, clients=[0], only=range(count))
    if results[0].errors:
        raise RuntimeError(f"breakdown over HTTP: {results[0].errors}")
    job_ms = [r["processing_time_ms"] for r in await admin.fetch("SELECT * FROM ingestion_jobs")]
    return Breakdown(count, child.steps, child.whole, results[0].latencies, job_ms), child.proposals


# Phase (c): the alternatives ------------------------------------------------------------


@dataclass(frozen=True)
class Alternative:
    label: str
    kind: str
    """Key of _sql_variants(), "copy" (the bare-table COPY baseline), "current" (the app's
    store.write_rows) or "current_fallback" (its path for batches that meet stored readings:
    store.write_conflicting)."""
    fk: bool = False
    """With the readings -> sensors foreign key the app dropped in migration 0006."""
    sync_off: bool = False


ALTERNATIVES = (
    Alternative("raw COPY, bare table (baseline)", "copy"),
    Alternative(
        "current: COPY into sensor_readings + rollup statement (store.write_rows)", "current"
    ),
    Alternative(
        "current, fallback path: temp COPY + INSERT ... ON CONFLICT RETURNING + rollup "
        "statement (store.write_conflicting)",
        "current_fallback",
    ),
    # Historical: the unnest statement the app used until session 4, and its variants.
    Alternative("unnest: INSERT only (no rollup, no last_seen)", "unnest_insert_only"),
    Alternative("unnest: INSERT + rollup (no last_seen)", "unnest_no_seen"),
    Alternative("unnest: full statement (the app's until session 4)", "unnest"),
    Alternative("unnest: full, sorted by Python instead", "unnest_python_sort"),
    Alternative("unnest: full, with the FK (as before 0006)", "unnest", fk=True),
    Alternative("temp COPY + INSERT SELECT: full", "temp"),
    Alternative("temp COPY + INSERT SELECT: full, with the FK", "temp", fk=True),
    Alternative("unnest: full, synchronous_commit=off", "unnest", sync_off=True),
    Alternative("temp COPY: full, synchronous_commit=off", "temp", sync_off=True),
)
QUICK_ALTERNATIVES = ("copy", "current", "unnest")


async def alternative(
    url: str, alt: Alternative, batches: list[list[list[Row]]], admin: asyncpg.Connection
) -> Run:
    from irrigation.ingest import rows as batch_rows
    from irrigation.ingest import store

    sql = _sql_variants()
    await reset(admin)
    await set_fk(admin, alt.fk)
    settings = {"synchronous_commit": "off"} if alt.sync_off else {}
    conns = [await asyncpg.connect(url, server_settings=settings) for _ in batches]
    try:
        for conn in conns:
            await conn.execute(
                f"CREATE TEMP TABLE {TEMP_TABLE} (sensor_id uuid, ts timestamptz, "
                "value float8, quality int2) ON COMMIT DELETE ROWS"
            )
        # Arguments as store.insert_readings passed them until session 4, built before the
        # clock: in arrival order (time-major), as a client sends them; sorted by (sensor,
        # ts) for unnest_python_sort, as the app did before it sorted in SQL.
        unnest_args: list[list[tuple[list[Any], ...]]] = [
            [
                tuple(
                    # The ts column as seconds since the epoch, as the statement takes it.
                    [v.timestamp() for v in col] if j == 1 else list(col)
                    for j, col in enumerate(
                        zip(
                            *(
                                rows
                                if alt.kind == "unnest_python_sort"
                                else sorted(rows, key=lambda r: (r[1], r[0]))
                            ),
                            strict=True,
                        )
                    )
                )
                for rows in mine
            ]
            if alt.kind.startswith("unnest")
            else []
            for mine in batches
        ]
        # The app's binary COPY rows (rows.encode), built before the clock from the readings
        # in arrival order, as the service encodes the accepted readings.
        encoded: list[list[Any]] = [
            [
                batch_rows.encode(
                    [
                        types.SimpleNamespace(sensor_id=r[0], ts=r[1], value=r[2], quality=r[3])
                        for r in sorted(rows, key=lambda r: (r[1], r[0]))
                    ]
                )
                for rows in mine
            ]
            if alt.kind.startswith("current")
            else []
            for mine in batches
        ]

        async def lane(i: int) -> None:
            conn = conns[i]
            for k, rows in enumerate(batches[i]):
                if alt.kind == "copy":
                    await conn.copy_records_to_table(BARE_TABLE, records=rows, columns=COLUMNS)
                    continue
                async with conn.transaction():
                    if alt.kind == "current":
                        await store.write_rows(conn, encoded[i][k])
                    elif alt.kind == "current_fallback":
                        data = memoryview(encoded[i][k].copy_data())
                        await store.write_conflicting(conn, data)
                    elif alt.kind == "temp":
                        await conn.copy_records_to_table(TEMP_TABLE, records=rows, columns=COLUMNS)
                        await conn.fetch(sql["temp"])
                    else:
                        await conn.fetch(sql[alt.kind], *unnest_args[i][k])

        meter = CpuMeter({}, DATABASE)
        pids = [c.get_server_pid() for c in conns]
        pg0 = cpu_seconds(pids)
        cpu0 = time.process_time()
        meter.start()
        t0 = time.perf_counter()
        await asyncio.gather(*(lane(i) for i in range(len(conns))))
        wall = time.perf_counter() - t0
        driver = time.process_time() - cpu0
        cpu = meter.stop(client_cpu_s=driver)
        pg = sum(cpu_seconds(pids).values()) - sum(pg0.values())
    finally:
        await close_all(conns)
    table = BARE_TABLE if alt.kind == "copy" else "sensor_readings"
    count: int = await admin.fetchval(f"SELECT count(*) FROM {table}")
    total = sum(len(r) for m in batches for r in m)
    if count != total:
        raise RuntimeError(f"{alt.label}: {count} rows, expected {total}")
    if alt.kind not in ("copy", "unnest_insert_only"):
        rolled: int = await admin.fetchval("SELECT sum(count) FROM reading_rollups_hourly")
        if rolled != total:
            raise RuntimeError(f"{alt.label}: rollups count {rolled}, expected {total}")
    await set_fk(admin, False)
    return Run(alt.label, total, wall, cpu, pg, driver)


@dataclass
class AltResult:
    alt: Alternative
    runs: list[Run] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return statistics.median(r.rate for r in self.runs)

    @property
    def spread(self) -> str:
        rates = [r.rate for r in self.runs]
        return f"{min(rates):,.0f} - {max(rates):,.0f}"


async def alternatives_rounds(
    url: str,
    chosen: Sequence[Alternative],
    batches: list[list[list[Row]]],
    admin: asyncpg.Connection,
    rounds: int,
) -> list[AltResult]:
    """Every variant once per round, rounds one after another: drift on a shared machine
    hits all variants alike; the median of the rounds is reported."""
    results = [AltResult(a) for a in chosen]
    for round_no in range(rounds):
        for res in results:
            run = await alternative(url, res.alt, batches, admin)
            res.runs.append(run)
            print(
                f"    round {round_no + 1}: {run.label}: {run.rate:,.0f} readings/s; "
                f"PG backends {run.pg_ms:.0f} ms CPU per batch"
            )
    return results


# Phase (d): proposed changes, priced in this process ------------------------------------


@dataclass
class Proposal:
    what: str
    now_ms: list[float]
    then_ms: list[float]
    note: str = ""

    def line(self) -> str:
        now, then = statistics.mean(self.now_ms), statistics.mean(self.then_ms)
        return (
            f"| {self.what} | {now:.1f} ms | {then:.1f} ms | {then - now:+.1f} ms "
            f"({then / now - 1:+.0%}) | {self.note} |"
        )


def proposals(bodies: Sequence[bytes], repeat: int = 3) -> list[Proposal]:
    """Each current step against a proposed replacement, on the same bodies, interleaved."""
    from irrigation.ingest.validation import parse_batch

    out = {
        "gc": Proposal(
            "parse: parse_batch, Python's default GC thresholds (700, 10, 10) -> the server's "
            "(50_000, 20, 100)",
            [],
            [],
            "what `irrigation serve`'s GC tuning is worth to the parse",
        ),
    }

    def timed(fn: Any, *args: Any) -> float:
        t0 = time.perf_counter()
        fn(*args)
        return (time.perf_counter() - t0) * 1000

    old = gc.get_threshold()
    try:
        for _ in range(repeat):
            for body in bodies:
                gc.set_threshold(50_000, 20, 100)
                out["gc"].then_ms.append(timed(parse_batch, body))
                gc.set_threshold(700, 10, 10)
                out["gc"].now_ms.append(timed(parse_batch, body))
    finally:
        gc.set_threshold(*old)
    return list(out.values())


# Set-up ---------------------------------------------------------------------------------


async def make_sensors(
    url: str, key: str, calibrated_from: float | None = None, metered: bool = False
) -> list[str]:
    """The sensors; with `calibrated_from` (a unix time), each gets two calibration steps:
    one before every reading, one halfway through the readings' three days, so a batch's
    items meet one step or the other (values stay within 0-100 %). `metered`: each is a
    flow meter attached to a pump of its own (unit % all the same, the bodies are shared),
    so every batch marks its hours for the water-use rollup."""
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as api:
        zones = []
        for z in range(ZONES):
            r = await api.post("/v1/zones", json={"name": f"zone {z}", "timezone": "UTC"})
            r.raise_for_status()
            zones.append(r.json()["id"])
        sensors = []
        for s in range(SENSORS):
            body = {
                "zone_id": zones[s % ZONES],
                "name": f"moisture {s}",
                "kind": "soil_moisture",
                "unit": "%",
            }
            if metered:
                pump = {"zone_id": zones[s % ZONES], "name": f"p{s}", "hardware_id": f"p{s}"}
                r = await api.post("/v1/pumps", json=pump)
                r.raise_for_status()
                body |= {"name": f"meter {s}", "kind": "flow", "pump_id": r.json()["id"]}
            r = await api.post("/v1/sensors", json=body)
            r.raise_for_status()
            sensors.append(r.json()["id"])
            if calibrated_from is None:
                continue
            steps = (
                (calibrated_from - 86400, 0.9, 2.0),
                (calibrated_from + 1.5 * 86400, 1.05, -3.0),
            )
            for at, gain, offset in steps:
                step = {
                    "effective_from": datetime.fromtimestamp(at, UTC).isoformat(),
                    "gain": gain,
                    "offset": offset,
                }
                r = await api.post(f"/v1/sensors/{sensors[-1]}/calibrations", json=step)
                r.raise_for_status()
    return sensors


def per_client_rows(spec: DataSpec) -> list[list[list[Row]]]:
    rows = Rows(spec)
    return [[rows.rows(b) for b in client_batches(spec, c)] for c in range(spec.clients)]


# Reporting ------------------------------------------------------------------------------


def cores(cpu: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in cpu.items() if v >= 0.005)


def machine() -> str:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = psutil.virtual_memory().total
    return f"{os.cpu_count()} cores ({model}), {mem / 2**30:.0f} GiB, {platform.platform()}"


@dataclass
class Pair:
    label: str
    before: Run
    http: HttpRun
    after: Run
    round: int = 1

    @property
    def baseline_rate(self) -> float:
        """The mean of the two COPY runs that bracket the HTTP run."""
        return (self.before.rate + self.after.rate) / 2

    @property
    def ratio(self) -> float:
        return self.http.rate / self.baseline_rate


def summary_table(pairs: Sequence[Pair]) -> str:
    """Per variant: the median over its rounds, and the spread."""
    rows = [
        "| variant | rounds | ratio, median (min - max) | HTTP readings/s, median "
        "| raw COPY readings/s, median | peak RSS, largest process (max) "
        "| peak RSS, all API processes (max) | CPU per batch: API / its PG backends (median) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    labels = list(dict.fromkeys(p.label for p in pairs))
    for label in labels:
        mine = [p for p in pairs if p.label == label]
        ratios = [p.ratio for p in mine]
        rows.append(
            f"| {label} | {len(mine)} | **{statistics.median(ratios):.3f}** "
            f"({min(ratios):.3f} - {max(ratios):.3f}) "
            f"| {statistics.median(p.http.rate for p in mine):,.0f} "
            f"| {statistics.median(p.baseline_rate for p in mine):,.0f} "
            f"| {mb(max(p.http.rss_peak_single for p in mine))} "
            f"| {mb(max(p.http.rss_peak_total for p in mine))} "
            f"| {statistics.median(p.http.driver_ms for p in mine):.0f} / "
            f"{statistics.median(p.http.pg_ms for p in mine):.0f} ms |"
        )
    return "\n".join(rows)


def pair_table(pairs: Sequence[Pair]) -> str:
    rows = [
        "| variant | HTTP readings/s | raw COPY readings/s (before / after) | ratio "
        "| peak RSS, largest process | peak RSS, all API processes | p50 / p95 latency "
        "| server in-txn p50 | CPU per batch: API / its PG backends | CPU per batch, raw COPY: "
        "bench / PG backends | client CPU | cores busy during the HTTP run |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for p in pairs:
        h = p.http
        rows.append(
            f"| {p.label}, round {p.round} | {h.rate:,.0f} "
            f"| {p.baseline_rate:,.0f} ({p.before.rate:,.0f} / "
            f"{p.after.rate:,.0f}) | **{p.ratio:.3f}** | {mb(h.rss_peak_single)} "
            f"| {mb(h.rss_peak_total)} "
            f"| {pct(h.latencies, 50) * 1000:.0f} / {pct(h.latencies, 95) * 1000:.0f} ms "
            f"| {statistics.median(h.job_ms):.0f} ms | {h.driver_ms:.0f} / {h.pg_ms:.0f} ms "
            f"| {(p.before.driver_ms + p.after.driver_ms) / 2:.0f} / "
            f"{(p.before.pg_ms + p.after.pg_ms) / 2:.0f} ms "
            f"| {h.client_cpu_s / h.wall_s:.3f} cores "
            f"| {cores(h.cpu)} |"
        )
    return "\n".join(rows)


def breakdown_table(b: Breakdown) -> str:
    http = statistics.mean(b.http)
    rows = [
        "| step (per 10,000-reading batch, one batch at a time) | mean | median "
        "| share of HTTP latency |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, label in STEPS:
        m = b.mean(name)
        med = statistics.median(b.steps[name])
        rows.append(f"| {label} | {m * 1000:.1f} ms | {med * 1000:.1f} ms | {m / http:.0%} |")
    whole = statistics.mean(b.whole)
    rows += [
        f"| **sum of the steps** | **{b.steps_total * 1000:.1f} ms** | "
        f"| {b.steps_total / http:.0%} |",
        f"| check: parse + service.ingest_batch, no timers | {whole * 1000:.1f} ms "
        f"| {statistics.median(b.whole) * 1000:.1f} ms | {whole / http:.0%} |",
        f"| HTTP/uvicorn/FastAPI overhead incl. auth (HTTP latency - sum of steps) "
        f"| {b.overhead * 1000:.1f} ms | "
        f"| {b.overhead / http:.0%} |",
        f"| **HTTP latency (client-measured)** | **{http * 1000:.1f} ms** "
        f"| {statistics.median(b.http) * 1000:.1f} ms | 100% |",
    ]
    return "\n".join(rows)


def alternatives_table(results: Sequence[AltResult]) -> str:
    baseline = next(r for r in results if r.alt.kind == "copy")
    current = next(
        (r for r in results if r.alt.kind == "current" and not r.alt.fk and not r.alt.sync_off),
        None,
    )
    rows = [
        "| variant (DB only) | readings/s (median) | range over rounds | vs raw COPY "
        "| vs current (store.write_rows) | PG backend CPU per batch (median) | bench CPU per batch "
        "| cores busy (median round) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        vs_current = f"{r.rate / current.rate:.2f}" if current else ""
        mid = sorted(r.runs, key=lambda x: x.rate)[len(r.runs) // 2]
        pg = statistics.median(x.pg_ms for x in r.runs)
        drv = statistics.median(x.driver_ms for x in r.runs)
        rows.append(
            f"| {r.alt.label} | {r.rate:,.0f} | {r.spread} | {r.rate / baseline.rate:.2f} "
            f"| {vs_current} | {pg:.0f} ms | {drv:.0f} ms | {cores(mid.cpu)} |"
        )
    return "\n".join(rows)


def proposals_table(items: Sequence[Proposal]) -> str:
    rows = [
        "| per 10,000-reading batch: now -> proposed | now (mean) | proposed (mean) | change "
        "| note |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    return "\n".join(rows + [p.line() for p in items])


# Main -----------------------------------------------------------------------------------

GC_SERVE = """
import gc, sys
import irrigation.app as app_module

THRESHOLD = {threshold!r}
FREEZE = {freeze!r}
original = app_module.create_app


def create_app(*args, **kwargs):
    app = original(*args, **kwargs)
    if FREEZE:  # everything built at start-up leaves the GC's generations
        gc.collect()
        gc.freeze()
    return app


app_module.create_app = create_app  # uvicorn imports "irrigation.app:create_app" after this
if THRESHOLD:
    gc.set_threshold(*THRESHOLD)
from irrigation.cli import app

sys.argv[0] = "irrigation"
app()
"""

GC_VARIANTS: dict[str, tuple[tuple[int, int, int] | None, bool]] = {
    "threshold": ((50_000, 20, 100), False),
    "freeze": (None, True),
    "freeze+threshold": ((50_000, 20, 100), True),
}


def gc_label(variant: str) -> str:
    threshold, freeze = GC_VARIANTS[variant]
    parts = (["gc.freeze() after start-up"] if freeze else []) + (
        [f"gc.set_threshold{threshold}"] if threshold else []
    )
    return " + ".join(parts)


async def start_api(stack: Stack, workers: int, gc_variant: str | None) -> tuple[Proc, str]:
    """`irrigation serve`; with gc_variant, the same command under a wrapper that only tunes
    the interpreter's cyclic GC (no change to src)."""
    if gc_variant is None:
        return await stack.start_api(workers=workers)
    threshold, freeze = GC_VARIANTS[gc_variant]
    port = free_port()
    code = GC_SERVE.format(threshold=threshold, freeze=freeze)
    argv = [sys.executable, "-c", code, "serve", "--port", str(port), "--workers", str(workers)]
    proc = Proc(f"api-gc{workers}", argv, stack.env)
    stack.procs.append(proc)
    url = f"http://127.0.0.1:{port}"
    await wait_http(f"{url}/healthz", proc)
    return proc, url


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run, < 30 s")
    p.add_argument("--total", type=int, help="readings per run (default 1,000,000; quick 50,000)")
    p.add_argument("--clients", help="client process counts, e.g. 2,4 (default 2,4; quick 2)")
    p.add_argument(
        "--api-workers",
        help="uvicorn worker counts, e.g. 1,2 (default 1,2; quick: one per core, as deployed)",
    )
    p.add_argument(
        "--layouts", default="mixed", help="mixed and/or partitioned, e.g. mixed,partitioned"
    )
    p.add_argument(
        "--connections",
        default="keepalive",
        help="keepalive and/or per-batch: one connection per client, or a new one per batch "
        "(with several API workers, keep-alive connections stay on the worker that first "
        "accepted them)",
    )
    p.add_argument("--breakdown-batches", type=int, help="batches timed step by step (20; 2)")
    p.add_argument(
        "--alternatives",
        choices=("all", "some", "none"),
        help="DB-only variants: all (default), some (quick: raw COPY, current, unnest), none",
    )
    p.add_argument("--rounds", type=int, help="rounds of the DB-only variants (3; quick 1)")
    p.add_argument(
        "--repeats",
        type=int,
        help="rounds of each end-to-end variant (3; quick 1): the median counts",
    )
    p.add_argument(
        "--gc-variants",
        default=",".join(GC_VARIANTS),
        help="also run the API (1 worker, first client count) with its GC tuned by a wrapper "
        f"(src untouched), of {', '.join(GC_VARIANTS)} (default: all; '' for none)",
    )
    p.add_argument(
        "--calibrated",
        action="store_true",
        help="give every sensor two calibration steps (every reading is calibrated)",
    )
    p.add_argument(
        "--metered",
        action="store_true",
        help="make every sensor a flow meter attached to a pump (every batch marks its "
        "hours for the water-use rollup)",
    )
    p.add_argument("--profile", type=Path, help="py-spy the API during its first HTTP run")
    p.add_argument("--markdown", type=Path, help="also write the tables here")
    return p.parse_args(argv)


def _ints(text: str | None, default: str) -> list[int]:
    return [int(x) for x in (text or default).split(",") if x.strip()]


PROFILE_LAYERS = {
    "parse and checks (validation.py, pydantic)": ["validation.py", "pydantic"],
    "write path (rows.py, store.py)": ["rows.py", "store.py"],
    "cache (HotCache.record, redis)": ["cache.py", "redis/"],
    "asyncpg / SQLAlchemy": ["asyncpg", "sqlalchemy"],
    "uvicorn / httptools (body read)": ["uvicorn", "httptools"],
    "starlette / fastapi": ["starlette", "fastapi"],
    "service.py (the transaction's own code)": ["service.py"],
}


async def http_pair(
    stack: Stack,
    clients: ClientPool,
    rows: list[list[list[Row]]],
    admin: asyncpg.Connection,
    key: str,
    workers: int,
    gc_variant: str | None,
    profile: Path | None,
    repeats: int = 1,
) -> tuple[list[Pair], Proc, str]:
    """COPY baseline, HTTP run, COPY baseline again, `repeats` times against one API
    process (this machine's speed drifts by tens of percent within minutes: the ratio of
    one round is noisy, the median of several less so); the API left running."""
    spec = clients.spec
    proc, url = await start_api(stack, workers, gc_variant)
    label = f"{workers} API worker(s), {spec.clients} clients, {spec.layout}"
    if spec.connection != "keepalive":
        label += ", a new connection per batch"
    if gc_variant:
        label += f", {gc_label(gc_variant)}"
    pairs = []
    for round_ in range(1, repeats + 1):
        pair = await http_round(stack, clients, rows, admin, key, proc, url, label, profile, round_)
        pairs.append(pair)
        profile = None
    return pairs, proc, url


async def http_round(
    stack: Stack,
    clients: ClientPool,
    rows: list[list[list[Row]]],
    admin: asyncpg.Connection,
    key: str,
    proc: Proc,
    url: str,
    label: str,
    profile: Path | None,
    round_: int,
) -> Pair:
    await reset(admin)
    before = await copy_baseline(stack.database_url, rows, "raw COPY", proc.pid)
    await reset(admin, (stack.redis_url, stack.namespace))
    spy = py_spy(proc.pid, 600, profile, subprocesses=True) if profile else None
    h = await http_run(clients, url, key, proc.pid, label, admin)
    if spy is not None and profile is not None:
        finish_py_spy(spy)
        report = profile_summary(profile, {}, PROFILE_LAYERS)
        print(f"    py-spy, {report.samples} samples; by layer:")
        for name, share in report.layers:
            print(f"      {name}: {share:.0%}")
        print("    hottest leaves: " + "; ".join(f"{n} {v:.0%}" for n, v in report.leaves[:8]))
    await reset(admin)
    after = await copy_baseline(stack.database_url, rows, "raw COPY", proc.pid)
    pair = Pair(label, before, h, after, round_)
    print(
        f"  {label} (round {pair.round}): HTTP {h.rate:,.0f} readings/s ({h.wall_s:.1f} s); "
        f"raw COPY {before.rate:,.0f} / {after.rate:,.0f}; ratio {pair.ratio:.3f}; peak RSS "
        f"{mb(h.rss_peak_single)} largest process, {mb(h.rss_peak_total)} all (idle "
        f"{mb(h.rss_idle)}); p50 {pct(h.latencies, 50) * 1000:.0f} ms; clients used "
        f"{h.client_cpu_s / h.wall_s:.2f} cores\n"
        f"    CPU per batch: API {h.driver_ms:.0f} ms, its PG backends {h.pg_ms:.0f} ms; "
        f"raw COPY: PG backends {before.pg_ms:.0f} / {after.pg_ms:.0f} ms\n"
        f"    cores busy: {cores(h.cpu)}"
    )
    return pair


async def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    total = args.total or (50_000 if args.quick else 1_000_000)
    if total % BATCH:
        raise SystemExit(f"--total must be a multiple of {BATCH}")
    client_counts = _ints(args.clients, "2" if args.quick else "2,4")
    worker_counts = _ints(args.api_workers, str(os.cpu_count() or 1) if args.quick else "1,2")
    layouts = [x for x in args.layouts.split(",") if x]
    connections = [x for x in args.connections.split(",") if x]
    if not set(connections) <= {"keepalive", "per-batch"}:
        raise SystemExit("--connections: keepalive and/or per-batch")
    k = args.breakdown_batches or (2 if args.quick else 20)
    alternatives = args.alternatives or ("some" if args.quick else "all")
    rounds = args.rounds or (1 if args.quick else 3)
    repeats = args.repeats or (1 if args.quick else 3)
    gc_variants = [] if args.quick else [v for v in args.gc_variants.split(",") if v]
    print(
        f"ingestion benchmark ({'quick' if args.quick else 'full'}), "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC: {total:,} readings per run in "
        f"{BATCH:,}-reading batches, {SENSORS} sensors; clients {client_counts}, "
        f"API workers {worker_counts}, layouts {layouts}"
        f"{', every sensor calibrated' if args.calibrated else ''}"
        f"{', every sensor an attached flow meter' if args.metered else ''}\n  machine: {machine()}"
    )
    pairs: list[Pair] = []
    alt_results: list[AltResult] = []
    props: list[Proposal] = []
    bd: Breakdown | None = None
    async with Stack(DATABASE) as stack:
        key = stack.create_key("bench")
        admin = await stack.connect()
        try:
            await admin.execute(
                f"CREATE TABLE {BARE_TABLE} (sensor_id uuid NOT NULL, ts timestamptz NOT NULL, "
                "value float8 NOT NULL, quality int2 NOT NULL, PRIMARY KEY (sensor_id, ts))"
            )
            proc, url = await stack.start_api(workers=1)
            base_ts = float(int(time.time()) - 3 * 86400)
            sensor_ids = await make_sensors(
                url, key, base_ts if args.calibrated else None, metered=args.metered
            )
            stack.stop(proc)
            print(f"  set-up: {time.monotonic() - started:.1f} s")
            first = True
            for layout, connection in [(la, co) for la in layouts for co in connections]:
                for n_clients in client_counts:
                    spec = DataSpec(
                        tuple(sensor_ids), base_ts, total, n_clients, layout, connection
                    )
                    clients = ClientPool(spec)
                    try:
                        rows = per_client_rows(spec)
                        gc.freeze()  # a million rows: keep them out of this process's GC
                        await clients.ready()
                        print(
                            f"  {n_clients} client processes, {layout}: bodies ready "
                            f"({clients.body_bytes / total:.0f} bytes/reading)"
                        )
                        variants: list[tuple[int, str | None]] = [(n, None) for n in worker_counts]
                        if first:
                            variants += [(1, v) for v in gc_variants]
                        for n_workers, gc_variant in variants:
                            profile = args.profile if first and not pairs else None
                            rounds_of_it, proc, url = await http_pair(
                                stack,
                                clients,
                                rows,
                                admin,
                                key,
                                n_workers,
                                gc_variant,
                                profile,
                                repeats,
                            )
                            pairs += rounds_of_it
                            if first and n_workers == 1 and gc_variant is None and bd is None:
                                bd, props = await breakdown(
                                    stack, key, clients, url, admin, k, 1 if args.quick else 3
                                )
                                print(
                                    f"  breakdown over {k} batches: steps "
                                    f"{bd.steps_total * 1000:.0f} ms, HTTP "
                                    f"{statistics.mean(bd.http) * 1000:.0f} ms (means)"
                                )
                            stack.stop(proc)
                        if first and alternatives != "none":
                            chosen = [
                                a
                                for a in ALTERNATIVES
                                if alternatives == "all"
                                or (a.kind in QUICK_ALTERNATIVES and not a.fk and not a.sync_off)
                            ]
                            print(f"  DB-only variants, {n_clients} connections, {rounds} rounds:")
                            alt_results = await alternatives_rounds(
                                stack.database_url, chosen, rows, admin, rounds
                            )
                        first = False
                    finally:
                        clients.close()
        finally:
            await admin.close()

    sections = []
    print(
        f"\nEnd to end, median of {repeats} round(s) (ratio = HTTP / mean of the raw COPY runs"
        " just before and after it, in the same round):"
    )
    sections.append(summary_table(pairs))
    print(sections[-1])
    print("\nEach round:")
    sections.append(pair_table(pairs))
    print(sections[-1])
    if bd is not None:
        print(f"\nWhere the time goes, per batch ({bd.batches} batches, one at a time):")
        sections.append(breakdown_table(bd))
        print(sections[-1])
        print(
            "  server-side in-transaction time over HTTP (ingestion_jobs.processing_time_ms): "
            f"median {statistics.median(bd.http_job_ms)} ms"
        )
    if props:
        print("\nProposed changes, priced in this process on the same batches:")
        sections.append(proposals_table(props))
        print(sections[-1])
    if alt_results:
        n = client_counts[0]
        print(
            f"\nDB-only variants ({n} connections, the same batches, one transaction each; "
            f"median of {rounds} rounds):"
        )
        sections.append(alternatives_table(alt_results))
        print(sections[-1])
    if args.markdown:
        args.markdown.write_text("\n\n".join(sections) + "\n")
    print(f"\ntotal {time.monotonic() - started:.1f} s; database {DATABASE} dropped")
    return 0


def main() -> None:
    sys.exit(asyncio.run(run(parse_args())))


if __name__ == "__main__":
    main()
