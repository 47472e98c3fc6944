"""Pump activation benchmark, against the real processes: issue 20's aims, each printed
with its figure and whether it is met (the aims table at the end).

    .venv/bin/python bench/activation.py --api-workers 1   # issue 20's run (~4 min)
    .venv/bin/python bench/activation.py            # full run, API workers 1 and 2
    .venv/bin/python bench/activation.py --quick    # smoke run (~1 min)
    .venv/bin/python bench/activation.py --only burst --burst 200 --profile /tmp/prof
                                                     # one burst, py-spy on API and workers
    .venv/bin/python bench/activation.py --api-workers 1 --gateways http,mqtt
                                                     # the device driver: HTTP beside MQTT
    .venv/bin/python bench/activation.py --api-workers 1 --only herd \
        --api-env IRRIGATION_DB_POOL_SIZE=30 --api-env IRRIGATION_DB_MAX_OVERFLOW=0 \
        --profile /tmp/prof                          # one knob, one phase, py-spy on the API

Sets up everything itself: a fresh database `irrigation_bench` (dropped first if it
exists, dropped again at the end), migrations, a site and an admin key, the device
simulator, one or two arq workers and the API (`irrigation serve`, once per
`--api-workers` value), all as child processes. It then measures, over HTTP:

(a) herd: N (1,000) concurrent activation requests on ONE pump, one connection each:
    exactly one must be accepted (checked, and checked again on the simulator's physical
    truth, which must show exactly one run); p50/p99 latency, wall time, requests/s.
(b) sustained: C (50) closed loops of activation requests for D (10) s, request i going to
    pump i mod P (100 pumps, each its own zone, hence its own water source; cooldown 0;
    1 s runs). Counted: every answer (202 admitted, 409 refused: pump busy) -> requests/s,
    and the 202s alone -> admitted/s. Nothing is stopped early: a pump is free again once
    its run has started and ended, so admitted/s is bounded by P / (start latency + 1 s).
(c) enqueue -> gateway start: for the admitted runs of (b), and for a few single requests
    on idle pumps, from the API's `requested_at` (202 body; database clock) to the
    simulator's `started_at` for that `command_id` (GET /truth); same machine clock.
(d) reads: `GET /v1/zones/{id}` in 10 keep-alive loops for 5 s: the API's CPU per read.
(e) burst, on a stack of its own shaped like `irrigation up` (the API with 1 uvicorn
    worker, a `pumps` worker, an `automation,bulk` worker, the simulator; the `mqtt`
    gateway unless `--burst-gateway http`; not up's readings bridge nor demo feeder):
    1,000 pumps in 100 sites (10 a site, each pump its own zone and water source, each
    site its own admin key), one request per pump, all sent at once (200 pumps of 20 of
    those sites first). Checked: every answer 202, every run started in the simulator's
    truth, none expired. Timed: from the burst's first request to each run's start on its
    device. The API's CPU per admitted request over the answers; the workers' CPU over
    the whole (start, confirmation and stop jobs, and the crons meanwhile) per activation,
    also less the workers' CPU when idle just before.

All of it once per `--gateways` driver (default `http`), each on a fresh stack (database,
Redis namespace, simulator, workers): `http`, the workers call the simulator's HTTP
devices (IRRIGATION_GATEWAY=http); `mqtt`, the workers publish to the broker at
`--mqtt-url` (default mqtt://127.0.0.1:1883; the run fails at once if none answers) and
the simulator serves its devices there (`irrigation simulator --mqtt-url`), both under a
topic root and client-id prefix of the run's own (`bench-<8 hex>`), whose retained device
states are cleared at the end. The simulator's HTTP /truth is the physical truth on both.
Every figure is labelled with its gateway; with several, the latencies (c), admitted/s
and requests/s are also printed side by side (and written first by `--markdown`). The
gateways run one after the other, so compare them with the `other` cores of each in view.

The herd's and the sustained load's throughput are set against the same load sent right
before to the bare FastAPI gate (bench/bare_gate_app.py: the same uvicorn command line,
one asyncpg pool, the gate's transaction on the same rows with no auth, no outbox; its
runs are ended after, so the real API finds the pumps free): the issue's ratio, aim 0.7.
Also printed, as before, the ratio to the bare asyncpg loop, measured just before too,
through a fresh asyncpg pool of 30 connections (the API pool's former ceiling, 10 + 20;
its default is now 10 + 5):
`BEGIN; SELECT ... FOR NO KEY UPDATE; UPDATE pumps SET last_sequence = last_sequence + 1;
COMMIT`, (a) N transactions at once on the herd's row, (b) C closed loops over the P rows.
The figures that matter are the ratios and the CPU per request: the machine is shared and
its load varies (the load average is printed at the start, between stacks and the end).

`--profile DIR`: py-spy (the `dev` extras) on the API in the herd, sustained, reads and
burst phases and on the workers in the sustained and burst phases; their raw stacks are
kept in DIR and their top frames printed at the end. A profiled run's figures are not
the measurement.

Also printed per phase: the cores each process kept busy (API, workers, simulator,
PostgreSQL, Redis, client, and `other`: the rest of the machine, the broker included), the
API's CPU per request, and the new database connections and transactions per request
(pg_stat_database). The client is one httpx client per connection, spread over two
processes: one shared httpx pool of 1,000 connections costs the client ~6 ms of CPU per
request and would be the bottleneck.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import bare_gate_app
import httpx
from common import (
    Answer,
    Clients,
    CpuMeter,
    Figure,
    Load,
    LoadResult,
    Proc,
    Stack,
    finish_py_spy,
    markdown_table,
    ms,
    percentile,
    profile_summary,
    py_spy,
)
from sqlalchemy.ext.asyncio import create_async_engine

from irrigation.auth import service as auth_service
from irrigation.auth.schemas import Scope
from irrigation.db import create_sessionmaker

# Its own name per checkout when several run at once on one server (BENCH_DATABASE):
# each run drops and recreates it.
DATABASE = os.environ.get("BENCH_DATABASE", "irrigation_bench")
KEEP = ("code", "id", "command_id", "requested_at")
# Issue 20's aims (docs/benchmarks.md, "Pump activation").
RATIO_AIM = 0.7  # herd and sustained against the bare FastAPI gate, same run
WORKER_MS_AIM = 5.0  # worker CPU per activation: start, confirmation and stop jobs
API_ADMITTED_MS_AIM = 2.5
API_REFUSED_MS_AIM = 1.5
API_GET_ZONE_MS_AIM = 1.0
UNDER_LOAD_P99_MS_AIM = 250.0
BURST_DURATION_S = 2  # each burst run: short, so its stop job falls inside the phase
BASELINE_TX = """
SELECT id, last_sequence FROM pumps WHERE id = $1 FOR NO KEY UPDATE
"""
BASELINE_UPDATE = "UPDATE pumps SET last_sequence = last_sequence + 1 WHERE id = $1"

# Where the API's CPU goes (py-spy). Phases: a sample counts if any frame matches (they
# may nest: "_admit" is inside "admission transaction"). Layers: the innermost frame that
# matches one of them takes the sample, so layers add up to 100 %.
PROFILE_PHASES = {
    "auth: api_keys lookup (cache misses)": ["find_key (", "authenticate ("],
    "pool pre-ping (BEGIN; ';'; ROLLBACK per checkout)": ["_async_ping ("],
    "new DB connections (connect + type introspection)": ["connect_utils", "__connect ("],
    "admission transaction (service.request_activation)": [
        "request_activation (irrigation/pumps/service.py"
    ],
    "  of which _admit": ["_admit (irrigation/pumps/service.py"],
    "  of which COMMIT": ["AsyncAdapt_asyncpg_connection.commit"],
    "  of which Redis enqueue": ["enqueue_start ("],
    "sync dependencies in the threadpool": ["run_in_threadpool (", "to_thread"],
    "body parsing + validation": ["request_body_to_args", "_validate_value", "json.loads"],
    "render + serialize answer": ["render (irrigation/pumps/router.py", "_respond ("],
    "access log + metrics": ["structlog", "prometheus_client"],
}
# The workers' jobs (a sample counts for each that is on its stack).
WORKER_PHASES = {
    "start_activation (start + confirmation)": ["start_activation (irrigation/pumps/jobs.py"],
    "  of which gateway send": ["send (irrigation/gateway"],
    "stop_activation": ["stop_activation (irrigation/pumps/jobs.py"],
    "watchdog (every second)": ["watchdog (irrigation/pumps/jobs.py"],
    "relay_outbox (every second)": ["relay_outbox (irrigation/pumps/jobs.py"],
    "reconcile_devices": ["reconcile_devices ("],
    "dispatch_runs (every second)": ["dispatch_runs ("],
    "deliver_webhooks (every second)": ["deliver_webhooks ("],
    "arq's own loop (poll, job bookkeeping)": ["arq/worker.py"],
    "live feed publish": ["irrigation/feed.py"],
}
PROFILE_LAYERS = {
    "asyncpg": ["asyncpg/"],
    "SQLAlchemy": ["sqlalchemy/"],
    "pydantic": ["pydantic"],
    "redis/arq": ["redis/", "arq/"],
    "MQTT (aiomqtt/paho)": ["aiomqtt/", "paho/"],
    "httpx/httpcore": ["httpx/", "httpcore/"],
    "logging/metrics": ["structlog", "prometheus_client", "logging/"],
    "threads (anyio threadpool)": ["anyio/", "threading.py", "concurrent/"],
    "FastAPI/Starlette": ["fastapi/", "starlette/"],
    "uvicorn/httptools": ["uvicorn/", "httptools"],
    "irrigation (src/)": ["irrigation/"],
    "event loop (uvloop/asyncio)": ["asyncio/", "uvloop", "runners.py"],
}


class BenchFailure(Exception):
    pass


@dataclass(frozen=True)
class Params:
    herd: int
    pumps: int
    concurrency: int
    duration_s: float
    baseline_pool: int
    idle_samples: int
    api_workers: tuple[int, ...]
    reads_s: float
    bursts: tuple[int, ...]
    burst_per_site: int

    @staticmethod
    def of(args: argparse.Namespace) -> Params:
        quick = bool(args.quick)
        workers = args.api_workers or ("1" if quick else "1,2")
        return Params(
            herd=args.herd or (100 if quick else 1000),
            pumps=args.pumps or (10 if quick else 100),
            concurrency=args.concurrency or (10 if quick else 50),
            duration_s=args.duration or (2.0 if quick else 10.0),
            baseline_pool=args.baseline_pool,
            idle_samples=3 if quick else 20,
            api_workers=tuple(int(w) for w in workers.split(",")),
            reads_s=args.reads_seconds or (1.0 if quick else 5.0),
            bursts=tuple(
                int(n) for n in (args.burst or ("20,100" if quick else "200,1000")).split(",")
            ),
            burst_per_site=args.burst_per_site,
        )


@dataclass
class Fleet:
    herd_pumps: list[dict[str, Any]] = field(default_factory=list)
    pumps: list[dict[str, Any]] = field(default_factory=list)


# Set-up ---------------------------------------------------------------------------------


async def make_pump(
    api: httpx.AsyncClient,
    hardware_id: str,
    headers: dict[str, str] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    zone = await api.post(
        "/v1/zones", json={"name": f"zone {hardware_id}", "timezone": "UTC"}, headers=headers
    )
    zone.raise_for_status()
    body = {"zone_id": zone.json()["id"], "name": hardware_id, "hardware_id": hardware_id}
    pump = await api.post("/v1/pumps", json={**body, **fields}, headers=headers)
    if pump.status_code != 201:
        raise BenchFailure(f"cannot create pump {hardware_id}: {pump.text}")
    found: dict[str, Any] = pump.json()
    return found


async def make_fleet(api: httpx.AsyncClient, params: Params) -> Fleet:
    """One herd pump per API variant, and `pumps` pumps, each in its own zone (so each has
    its own default water source): cooldown 0, so a pump may run again once its run ends."""
    fleet = Fleet()
    gate = asyncio.Semaphore(8)

    async def one(hardware_id: str) -> dict[str, Any]:
        async with gate:
            return await make_pump(api, hardware_id, cooldown_s=0, max_runtime_s=30)

    fleet.herd_pumps = list(
        await asyncio.gather(*(one(f"herd-{i}") for i in range(len(params.api_workers))))
    )
    fleet.pumps = list(await asyncio.gather(*(one(f"p-{i:03d}") for i in range(params.pumps))))
    return fleet


# Baselines ------------------------------------------------------------------------------


async def _baseline_tx(conn: asyncpg.Connection, pump_id: uuid.UUID) -> None:
    async with conn.transaction():
        await conn.fetchrow(BASELINE_TX, pump_id)
        await conn.execute(BASELINE_UPDATE, pump_id)


async def baseline_burst(pool: asyncpg.Pool, pump_id: str, transactions: int) -> float:
    """`transactions` concurrent tasks, one transaction each, all on one row: tx/s."""
    row = uuid.UUID(pump_id)

    async def one() -> None:
        async with pool.acquire() as conn:
            await _baseline_tx(conn, row)

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(transactions)))
    return transactions / (time.perf_counter() - started)


async def baseline_spread(
    pool: asyncpg.Pool, pump_ids: list[str], concurrency: int, duration_s: float
) -> float:
    """`concurrency` closed loops for `duration_s`, each transaction on a random row: tx/s."""
    rows = [uuid.UUID(p) for p in pump_ids]
    done = 0
    rng = random.Random(1)
    started = time.perf_counter()
    stop_at = started + duration_s

    async def loop() -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            async with pool.acquire() as conn:
                await _baseline_tx(conn, rng.choice(rows))
            done += 1

    await asyncio.gather(*(loop() for _ in range(concurrency)))
    return done / (time.perf_counter() - started)


# Checks on the physical truth -----------------------------------------------------------


async def truth(
    sim: httpx.AsyncClient, hardware_id: str | None = None, site_id: str | None = None
) -> list[dict[str, Any]]:
    """The physical runs (of one device `(site_id, hardware_id)` when both are given)."""
    params = {k: v for k, v in (("hardware_id", hardware_id), ("site_id", site_id)) if v}
    response = await sim.get("/truth", params=params)
    response.raise_for_status()
    runs: list[dict[str, Any]] = response.json()["runs"]
    return runs


async def wait_until(check: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise BenchFailure(f"{what}: not within {timeout_s} s (last: {result!r})")
        await asyncio.sleep(0.1)


def start_latencies(admitted: list[Answer], runs: list[dict[str, Any]]) -> tuple[list[float], int]:
    """requested_at (API, database clock) -> started_at (simulator) for each admitted run
    that started; and how many admitted runs never started."""
    started = {r["command_id"]: datetime.fromisoformat(r["started_at"]) for r in runs}
    out: list[float] = []
    missing = 0
    for a in admitted:
        at = started.get(a.fields["command_id"])
        if at is None:
            missing += 1
            continue
        out.append((at - datetime.fromisoformat(a.fields["requested_at"])).total_seconds())
    return out, missing


# Phases ---------------------------------------------------------------------------------


@dataclass
class Variant:
    gateway: str
    workers: int
    api: Proc
    url: str
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def api_label(self) -> str:
        return f"{self.workers} uvicorn worker{'s' if self.workers > 1 else ''}"

    @property
    def label(self) -> str:
        return f"{self.gateway} gateway, {self.api_label}"

    def value(self, name: str) -> float | None:
        return next((f.value for f in self.figures if f.name.startswith(name)), None)


@dataclass
class Bench:
    """What every phase uses."""

    params: Params
    stack: Stack
    clients: Clients
    sim: httpx.AsyncClient
    workers: list[Proc]
    profiler: Profiler
    aims: list[Aim]
    bare: Proc
    bare_url: str
    fleet: Fleet = field(default_factory=Fleet)

    async def baseline(self, measure: Any) -> float:
        """A fresh asyncpg pool for one baseline, closed after: idle connections must not
        eat into max_connections while the API runs."""
        pool = await self.stack.pool(self.params.baseline_pool)
        try:
            rate: float = await measure(pool)
        finally:
            await pool.close()
        return rate

    async def bare_gate(self, load: Load) -> tuple[LoadResult, CpuMeter]:
        """The same load on the bare FastAPI gate (bench/bare_gate_app.py); then its runs
        are ended, so the real API finds the pumps free."""
        load = Load(**{**load.__dict__, "base_url": self.bare_url})
        meter = CpuMeter({"bare gate": [self.bare.pid]}, DATABASE)
        meter.start()
        result = await self.clients.run(load)
        meter.stop(result.client_cpu_s)
        conn = await self.stack.connect()
        try:
            await bare_gate_app.cleanup(conn)
        finally:
            await conn.close()
        return result, meter

    def aim(
        self, variant: Variant, name: str, figure: str, met: bool | None, note: str = ""
    ) -> None:
        self.aims.append(Aim(f"{name} [{variant.label}]", figure, met, note))

    def meter(self, variant: Variant) -> CpuMeter:
        roles = {
            "api": [variant.api.pid],
            "workers": [w.pid for w in self.workers],
            # The devices' side: HTTP calls and polls cost it more than MQTT messages.
            "simulator": [p.pid for p in self.stack.procs if p.name == "simulator"],
        }
        return CpuMeter(roles, DATABASE)

    async def db_counters(self) -> dict[str, int]:
        """New connections and transactions of the benchmark database so far (backends
        flush their statistics when idle for ~1 s: read this a while after a phase)."""
        conn = await self.stack.connect()
        try:
            row = await conn.fetchrow(
                "SELECT sessions, xact_commit, xact_rollback FROM pg_stat_database"
                " WHERE datname = $1",
                DATABASE,
            )
        finally:
            await conn.close()
        return {"connections": row["sessions"] - 1, "transactions": row[1] + row[2]}


def _codes(result: LoadResult) -> str:
    codes: dict[str, int] = {}
    for a in result.answers:
        key = f"{a.status} {a.fields.get('code') or ''}".strip()
        codes[key] = codes.get(key, 0) + 1
    if result.errors:
        codes["client errors"] = len(result.errors)
    return ", ".join(f"{k}: {v}" for k, v in sorted(codes.items()))


def _server_trouble(variant: Variant, result: LoadResult) -> None:
    """5xx answers: show what the API logged about them."""
    if not any(a.status >= 500 for a in result.answers):
        return
    lines = [line for line in variant.api.output(200_000).splitlines() if "rror" in line]
    print("    !! 5xx answers; the API logged:")
    for line in lines[-6:]:
        print(f"       {line[:400]}")


def _api_ms(meter: CpuMeter, n: int, role: str = "api") -> float:
    """Milliseconds of `role`'s CPU per request over a metered phase."""
    return meter.used.get(role, 0.0) * meter.wall / max(1, n) * 1000


def _costs(bench_meter: CpuMeter, before: dict[str, int], after: dict[str, int], n: int) -> str:
    api_ms = _api_ms(bench_meter, n)
    conns = after["connections"] - before["connections"]
    tx = (after["transactions"] - before["transactions"]) / max(1, n)
    return f"API CPU {api_ms:.1f} ms/request; {conns} new DB connections; {tx:.1f} DB tx/request"


class Profiler:
    """py-spy on some processes over one phase (`--profile DIR`): each writes its raw
    collapsed stacks to DIR, and `finish` prints where the CPU went (the phases of
    PROFILE_PHASES for the API, WORKER_PHASES for the workers; the layers; the hottest
    own frames). py-spy samples 200 times a second: a profiled run's figures are not the
    measurement (run again without `--profile` for those)."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self.running: list[tuple[str, Proc, Path]] = []
        self.reports: list[str] = []
        """Every profile's lines of this run, for the summary at the end."""

    def start(self, label: str, targets: dict[str, list[int]], seconds: float) -> None:
        """`targets`: role ("api", "workers", ...) -> its pids (each with its children)."""
        if self.directory is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        for role, pids in targets.items():
            for pid in pids:
                path = self.directory / f"{label}-{role}-{pid}.txt"
                proc = py_spy(pid, seconds + 60, path, subprocesses=True)
                if proc is None:
                    print("  !! --profile: py-spy is not installed (pip install -e '.[dev]')")
                    return
                self.running.append((role, proc, path))
        time.sleep(0.5)  # py-spy attaches

    def finish(self) -> list[str]:
        lines: list[str] = []
        for role, proc, path in self.running:
            finish_py_spy(proc)
            if not path.exists():
                lines.append(f"py-spy wrote nothing to {path}")
                continue
            phases = PROFILE_PHASES if role == "api" else WORKER_PHASES
            report = profile_summary(path, phases, PROFILE_LAYERS)
            lines.append(f"  profile {path} ({report.samples} samples of {role} CPU):")
            lines += [f"    {share:6.1%}  {name}" for name, share in report.phases if share]
            lines.append("    by layer (innermost match):")
            lines += [f"    {share:6.1%}  {name}" for name, share in report.layers if share]
            lines.append("    hottest own frames:")
            lines += [f"    {share:6.1%}  {name}" for name, share in report.leaves]
        self.running.clear()
        self.reports += lines
        return lines


@dataclass
class Aim:
    """One of issue 20's aims, with its figure in this run and whether it is met."""

    name: str
    figure: str
    met: bool | None
    """None: printed for information (no aim of its own)."""
    note: str = ""

    @property
    def verdict(self) -> str:
        return "-" if self.met is None else ("yes" if self.met else "NO")


def aims_table(aims: list[Aim]) -> str:
    rows = ["| aim | figure | met | note |", "| --- | ---: | :---: | --- |"]
    rows += [f"| {a.name} | {a.figure} | {a.verdict} | {a.note} |" for a in aims]
    return "\n".join(rows)


def print_aims(aims: list[Aim]) -> None:
    width = max((len(a.name) for a in aims), default=10)
    fig = max((len(a.figure) for a in aims), default=10)
    print(
        f"\naims (issue 20): {sum(1 for a in aims if a.met)} of "
        f"{sum(1 for a in aims if a.met is not None)} met"
    )
    for a in aims:
        note = f"  ({a.note})" if a.note else ""
        print(f"  {a.name:<{width}}  {a.figure:>{fig}}  {a.verdict:>3}{note}")


async def herd(b: Bench, variant: Variant, api: httpx.AsyncClient, pump: dict[str, Any]) -> None:
    n = b.params.herd
    base = await b.baseline(lambda pool: baseline_burst(pool, pump["id"], n))
    load = Load(
        base_url=variant.url,
        headers=dict(api.headers),
        paths=[f"/v1/pumps/{pump['id']}/activations"],
        body={"duration_s": 30, "priority": "manual"},  # outlasts the herd: one run, not two
        kind="burst",
        requests=n,
        keep=KEEP,
    )
    bare, bare_meter = await b.bare_gate(load)
    bare_rate = n / bare.wall_s
    bare_cpu = bare_meter.used.get("bare gate", 0.0) * bare_meter.wall / n * 1000
    print(
        f"  herd on the bare FastAPI gate: {bare_rate:,.0f} req/s ({_codes(bare)}); "
        f"its CPU {bare_cpu:.2f} ms/request"
    )
    if bare.count(202) != 1:
        print(f"    !! the bare gate admitted {bare.count(202)} of the herd (1 expected)")
    before = await b.db_counters()
    meter = b.meter(variant)
    b.profiler.start(f"{variant.gateway}-api{variant.workers}-herd", {"api": [variant.api.pid]}, 30)
    meter.start()
    result = await b.clients.run(load)
    meter.stop(result.client_cpu_s)
    variant.notes += b.profiler.finish()

    accepted = [a for a in result.answers if a.status == 202]
    lat = result.latencies()
    rate = n / result.wall_s
    print(
        f"  herd: {n} requests on one pump in {result.wall_s:.2f} s = {rate:,.0f} req/s;"
        f" accepted {len(accepted)}; p50 {ms(percentile(lat, 50))}, p99 {ms(percentile(lat, 99))}"
        f"; bare FastAPI gate {bare_rate:,.0f} req/s: ratio {rate / bare_rate:.2f}"
        f"; bare asyncpg loop 1 row: {base:,.0f} tx/s: ratio {rate / base:.2f}"
    )
    print(f"    answers: {_codes(result)}")
    print(f"    {meter.summary()}")
    _server_trouble(variant, result)
    if len(accepted) != 1 or result.errors:
        raise BenchFailure(
            f"HERD ACCEPTED {len(accepted)} REQUESTS (must be exactly 1); {_codes(result)}; "
            f"client errors: {result.errors[:3]}"
        )
    hw, site = pump["hardware_id"], pump["site_id"]
    command_id = accepted[0].fields["command_id"]
    await wait_until(lambda: truth(b.sim, hw, site), 15, f"herd run of {hw} on the device")
    # Free the pump (the run asked for 30 s), then judge the truth once more.
    (await api.post(f"/v1/pumps/{pump['id']}/stop")).raise_for_status()

    async def stopped() -> list[dict[str, Any]]:
        found = await truth(b.sim, hw, site)
        return found if all(r["stopped_at"] for r in found) else []

    runs = await wait_until(stopped, 15, f"herd run of {hw} stopped")
    if len(runs) != 1 or runs[0]["command_id"] != command_id:
        raise BenchFailure(f"DEVICE TRUTH FOR {hw}: {len(runs)} runs (must be exactly 1): {runs}")
    print(f"    device truth: exactly 1 run of {hw} (command {command_id[:8]}...)")
    costs = _costs(meter, before, await b.db_counters(), n)
    print(f"    {costs}")
    others = result.count(409) + result.count(503)
    api_ms = _api_ms(meter, n)
    variant.figures += [
        Figure(
            f"herd ({n} concurrent requests, 1 pump): throughput",
            rate,
            "req/s",
            bare_rate,
            "bare FastAPI gate",
            note=f"wall {result.wall_s:.2f} s; 1 x 202, {others} x 409/503; {meter.summary()}; "
            f"bare gate CPU {bare_cpu:.2f} ms/request",
        ),
        Figure(
            "herd: against the bare asyncpg loop",
            rate,
            "req/s",
            base,
            "1 row",
            baseline_unit="tx/s",
        ),
        Figure("herd: p50 latency", percentile(lat, 50) * 1000, "ms"),
        Figure("herd: p99 latency", percentile(lat, 99) * 1000, "ms", note=costs),
    ]
    b.aim(
        variant,
        f"herd: ratio to the bare FastAPI gate >= {RATIO_AIM}",
        f"{rate / bare_rate:.2f}",
        rate / bare_rate >= RATIO_AIM,
        f"{rate:,.0f} / {bare_rate:,.0f} req/s",
    )
    b.aim(
        variant,
        "herd: ratio to the bare asyncpg loop (for information)",
        f"{rate / base:.2f}",
        None,
        f"{rate:,.0f} req/s / {base:,.0f} tx/s",
    )
    b.aim(
        variant,
        f"API CPU per refused request <= {API_REFUSED_MS_AIM} ms",
        f"{api_ms:.2f} ms",
        api_ms <= API_REFUSED_MS_AIM,
        f"herd: {n - 1} of {n} refused, one connection each",
    )


async def sustained(b: Bench, variant: Variant, api: httpx.AsyncClient) -> None:
    p = b.params
    ids = [pump["id"] for pump in b.fleet.pumps]
    base = await b.baseline(lambda pool: baseline_spread(pool, ids, p.concurrency, p.duration_s))
    load = Load(
        base_url=variant.url,
        headers=dict(api.headers),
        paths=[f"/v1/pumps/{i}/activations" for i in ids],
        body={"duration_s": 1, "priority": "manual"},
        kind="sustained",
        concurrency=p.concurrency,
        duration_s=p.duration_s,
        keep=KEEP,
    )
    bare, bare_meter = await b.bare_gate(load)
    bare_rate = len(bare.answers) / bare.wall_s
    bare_cpu = _api_ms(bare_meter, len(bare.answers), "bare gate")
    print(
        f"  sustained on the bare FastAPI gate: {bare_rate:,.0f} req/s ({_codes(bare)}); "
        f"its CPU {bare_cpu:.2f} ms/request"
    )
    await asyncio.sleep(1.0)
    before = await b.db_counters()
    meter = b.meter(variant)
    b.profiler.start(
        f"{variant.gateway}-api{variant.workers}-sustained",
        {"api": [variant.api.pid], "workers": [w.pid for w in b.workers]},
        p.duration_s,
    )
    meter.start()
    result = await b.clients.run(load)
    meter.stop(result.client_cpu_s)
    variant.notes += b.profiler.finish()
    total = len(result.answers)
    # (c) the last runs need ~1 s to start and end: afterwards every admitted run is known.
    await asyncio.sleep(2.0)
    costs = _costs(meter, before, await b.db_counters(), total)

    admitted = [a for a in result.answers if a.status == 202]
    refused = result.count(409)
    rate, admit_rate = total / result.wall_s, len(admitted) / result.wall_s
    lat = result.latencies()
    print(
        f"  sustained: {total} requests over {len(ids)} pumps in {result.wall_s:.1f} s "
        f"= {rate:,.0f} req/s ({len(admitted)} admitted = {admit_rate:,.1f}/s, {refused} refused"
        f" 409); p50 {ms(percentile(lat, 50))}, p99 {ms(percentile(lat, 99))}; "
        f"bare FastAPI gate {bare_rate:,.0f} req/s: ratio {rate / bare_rate:.2f}; "
        f"bare asyncpg loop {len(ids)} rows: {base:,.0f} tx/s: ratio {rate / base:.2f}"
    )
    print(f"    answers: {_codes(result)}")
    print(f"    {meter.summary()}")
    print(f"    {costs}")
    _server_trouble(variant, result)
    if result.errors or total != len(admitted) + refused:
        print(f"    !! answers other than 202/409, or client errors: {result.errors[:3]}")

    runs = await truth(b.sim)
    lags, missing = start_latencies(admitted, runs)
    fates = await _fates(api, admitted, runs) if missing else ""
    print(
        f"  enqueue -> gateway start, under load: p50 {ms(percentile(lags, 50))}, "
        f"p99 {ms(percentile(lags, 99))} ({len(lags)} runs; {missing} admitted never started"
        f"{fates})"
    )
    worker_ms = _api_ms(meter, len(admitted), "workers")
    p99 = percentile(lags, 99) * 1000
    variant.figures += [
        Figure(
            f"sustained ({p.concurrency} in flight, {len(ids)} pumps): requests",
            rate,
            "req/s",
            bare_rate,
            "bare FastAPI gate",
            note=f"{len(admitted)} x 202 + {refused} x 409 in {result.wall_s:.1f} s; "
            + meter.summary()
            + f"; bare gate: {_codes(bare)}, CPU {bare_cpu:.2f} ms/request",
        ),
        Figure(
            "sustained: against the bare asyncpg loop",
            rate,
            "req/s",
            base,
            f"{len(ids)} rows",
            baseline_unit="tx/s",
        ),
        Figure("sustained: admitted (202)", admit_rate, "/s", note="bounded by 1 s runs"),
        Figure("sustained: p50 latency", percentile(lat, 50) * 1000, "ms"),
        Figure("sustained: p99 latency", percentile(lat, 99) * 1000, "ms", note=costs),
        Figure("enqueue -> gateway start under load: p50", percentile(lags, 50) * 1000, "ms"),
        Figure(
            "enqueue -> gateway start under load: p99",
            percentile(lags, 99) * 1000,
            "ms",
            note=f"{len(lags)} runs, {missing} never started{fates}; worker CPU "
            f"{worker_ms:.1f} ms per admitted run (the last runs' stops fall after the window)",
        ),
    ]
    b.aim(
        variant,
        f"sustained: ratio to the bare FastAPI gate >= {RATIO_AIM}",
        f"{rate / bare_rate:.2f}",
        rate / bare_rate >= RATIO_AIM,
        f"{rate:,.0f} / {bare_rate:,.0f} req/s",
    )
    b.aim(
        variant,
        "sustained: ratio to the bare asyncpg loop (for information)",
        f"{rate / base:.2f}",
        None,
        f"{rate:,.0f} req/s / {base:,.0f} tx/s",
    )
    b.aim(
        variant,
        f"enqueue -> start under sustained load: p99 <= {UNDER_LOAD_P99_MS_AIM:.0f} ms",
        f"{p99:,.0f} ms",
        missing == 0 and p99 <= UNDER_LOAD_P99_MS_AIM,
        f"p50 {percentile(lags, 50) * 1000:,.0f} ms; {len(lags)} runs, {missing} never started"
        f"{fates}",
    )


async def _fates(api: httpx.AsyncClient, admitted: list[Answer], runs: list[dict[str, Any]]) -> str:
    """What became of the admitted runs the device never saw (e.g. `expired`: the worker
    picked the job up after max_queue_delay_s)."""
    seen = {r["command_id"] for r in runs}
    fates: dict[str, int] = {}
    for a in admitted:
        if a.fields["command_id"] not in seen:
            status = (await api.get(f"/v1/activations/{a.fields['id']}")).json().get("status")
            fates[str(status)] = fates.get(str(status), 0) + 1
    return ": " + ", ".join(f"{n} {status}" for status, n in sorted(fates.items()))


async def unloaded_start_latency(b: Bench, variant: Variant, api: httpx.AsyncClient) -> None:
    """(c) with nothing else going on: single requests 0.2 s apart, on idle pumps."""
    admitted: list[Answer] = []
    for pump in b.fleet.pumps[: b.params.idle_samples]:
        response = await api.post(
            f"/v1/pumps/{pump['id']}/activations", json={"duration_s": 1, "priority": "manual"}
        )
        if response.status_code == 202:
            body = response.json()
            admitted.append(Answer(202, 0.0, 0.0, {k: body.get(k) for k in KEEP}))
        await asyncio.sleep(0.2)
    await asyncio.sleep(1.5)
    lags, missing = start_latencies(admitted, await truth(b.sim))
    print(
        f"  enqueue -> gateway start, unloaded: p50 {ms(percentile(lags, 50))}, "
        f"p99 {ms(percentile(lags, 99))} ({len(lags)} runs; {missing} never started)"
    )
    variant.figures += [
        Figure("enqueue -> gateway start unloaded: p50", percentile(lags, 50) * 1000, "ms"),
        Figure(
            "enqueue -> gateway start unloaded: p99",
            percentile(lags, 99) * 1000,
            "ms",
            note=f"{len(lags)} single requests 0.2 s apart",
        ),
    ]


async def reads(b: Bench, variant: Variant, api: httpx.AsyncClient) -> None:
    """`GET /v1/zones/{id}` in closed loops (keep-alive): the API's CPU per read."""
    zones = [pump["zone_id"] for pump in b.fleet.pumps]
    load = Load(
        base_url=variant.url,
        headers=dict(api.headers),
        paths=[f"/v1/zones/{z}" for z in zones],
        kind="sustained",
        concurrency=min(10, len(zones)),
        duration_s=b.params.reads_s,
    )
    meter = b.meter(variant)
    b.profiler.start(
        f"{variant.gateway}-api{variant.workers}-reads", {"api": [variant.api.pid]}, 10
    )
    meter.start()
    result = await b.clients.run(load)
    meter.stop(result.client_cpu_s)
    variant.notes += b.profiler.finish()
    n = len(result.answers)
    api_ms = _api_ms(meter, n)
    lat = result.latencies()
    print(
        f"  reads: {n} x GET /v1/zones/{{id}} in {result.wall_s:.1f} s ({_codes(result)}); "
        f"p50 {ms(percentile(lat, 50))}; API CPU {api_ms:.2f} ms/request; {meter.summary()}"
    )
    variant.figures.append(
        Figure(
            "GET /v1/zones/{id}: API CPU per request",
            api_ms,
            "ms",
            note=f"{n} requests, {load.concurrency} keep-alive loops; p50 "
            f"{percentile(lat, 50) * 1000:.1f} ms",
        )
    )
    b.aim(
        variant,
        f"API CPU per GET /v1/zones/{{id}} <= {API_GET_ZONE_MS_AIM} ms",
        f"{api_ms:.2f} ms",
        api_ms <= API_GET_ZONE_MS_AIM and result.count(200) == n,
        f"{n} reads",
    )


async def wait_idle(api: httpx.AsyncClient, timeout_s: float = 20) -> None:
    """Until no pump holds an activation (the 1 s runs have ended)."""

    async def idle() -> bool:
        response = await api.get("/v1/pumps", params={"limit": 500})
        response.raise_for_status()
        return all(p["active_activation_id"] is None for p in response.json()["items"])

    await wait_until(idle, timeout_s, "pumps idle")


# The burst: `irrigation up`'s processes, one key per site --------------------------------


async def make_sites(stack: Stack, count: int) -> list[str]:
    """`count` sites with an admin key each, in one transaction through the same service
    as `irrigation keys create --create-site` (one CLI process per site would take minutes)."""
    url = stack.database_url.replace("postgresql://", "postgresql+asyncpg://", 1)
    engine = create_async_engine(url)
    keys: list[str] = []
    try:
        async with create_sessionmaker(engine)() as session, session.begin():
            for i in range(count):
                site = await auth_service.get_or_create_site(session, f"burst-{i:03d}", create=True)
                _, secret = await auth_service.create_key(session, site.id, "bench", [Scope.admin])
                keys.append(secret)
    finally:
        await engine.dispose()
    return keys


async def make_burst_fleet(
    url: str, keys: list[str], count: int, per_site: int
) -> list[tuple[dict[str, Any], str]]:
    """`count` pumps, `per_site` in each site (site after site), each in its own zone and
    so on its own water source; with the key of its site."""
    gate = asyncio.Semaphore(16)

    async def one(api: httpx.AsyncClient, i: int) -> tuple[dict[str, Any], str]:
        key = keys[i // per_site]
        async with gate:
            pump = await make_pump(
                api,
                f"b-{i:04d}",
                {"Authorization": f"Bearer {key}"},
                cooldown_s=0,
                max_runtime_s=30,
            )
        return pump, key

    async with httpx.AsyncClient(base_url=url, timeout=60) as api:
        return list(await asyncio.gather(*(one(api, i) for i in range(count))))


async def activation_statuses(stack: Stack, ids: list[str]) -> dict[str, int]:
    conn = await stack.connect()
    try:
        rows = await conn.fetch(
            "SELECT status, count(*) AS n FROM pump_activations WHERE id = ANY($1::uuid[])"
            " GROUP BY status",
            ids,
        )
    finally:
        await conn.close()
    return {r["status"]: r["n"] for r in rows}


async def busy_pumps(stack: Stack) -> int:
    conn = await stack.connect()
    try:
        n: int = await conn.fetchval(
            "SELECT count(*) FROM pumps WHERE active_activation_id IS NOT NULL"
        )
    finally:
        await conn.close()
    return n


@dataclass
class BurstStack:
    stack: Stack
    clients: Clients
    sim: httpx.AsyncClient
    api: Proc
    url: str
    workers: list[Proc]
    pumps: list[tuple[dict[str, Any], str]]
    profiler: Profiler
    aims: list[Aim]
    figures: list[Figure] = field(default_factory=list)

    def roles(self) -> dict[str, list[int]]:
        return {
            "api": [self.api.pid],
            "workers": [w.pid for w in self.workers],
            "simulator": [p.pid for p in self.stack.procs if p.name == "simulator"],
        }


async def burst(bs: BurstStack, n: int, largest: bool) -> None:
    """n pumps (n / per-site sites), one request each, all sent at once; then until every
    admitted run has ended. Timed from the burst's first request to each run's start on
    its device (the simulator's truth); the workers' CPU over the whole, per activation."""
    chosen = bs.pumps[:n]
    sites = len({key for _, key in chosen})
    await wait_until(lambda: _none_busy(bs.stack), 60, "burst pumps idle")
    idle = CpuMeter({"workers": [w.pid for w in bs.workers]}, DATABASE)
    idle.start()
    await asyncio.sleep(3.0)
    idle_cores = idle.stop().get("workers", 0.0)
    load = Load(
        base_url=bs.url,
        headers={},
        paths=[f"/v1/pumps/{pump['id']}/activations" for pump, _ in chosen],
        path_headers=[{"Authorization": f"Bearer {key}"} for _, key in chosen],
        body={"duration_s": BURST_DURATION_S, "priority": "manual"},
        kind="burst",
        requests=n,
        keep=KEEP,
    )
    whole = CpuMeter(bs.roles(), DATABASE)
    answering = CpuMeter(bs.roles(), DATABASE)
    bs.profiler.start(f"burst{n}", {"api": [bs.api.pid], "workers": bs.roles()["workers"]}, 60)

    def on_start() -> None:
        whole.start()
        answering.start()

    result = await bs.clients.run(load, on_start)
    answering.stop(result.client_cpu_s)
    admitted = [a for a in result.answers if a.status == 202]
    sent = sorted(a.sent_wall for a in result.answers)
    first = sent[0] if sent else float("nan")
    spread = sent[-1] - first if sent else float("nan")
    answered = max((a.sent_wall + a.latency_s for a in result.answers), default=first) - first
    ids = [a.fields["id"] for a in admitted]
    commands = {a.fields["command_id"] for a in admitted}

    async def ended() -> dict[str, int]:
        statuses = await activation_statuses(bs.stack, ids)
        return {} if any(s in statuses for s in ("queued", "starting", "running")) else statuses

    try:
        statuses = await wait_until(ended, 120, f"the burst of {n}: every run ended")
    except BenchFailure as exc:
        print(f"    !! {exc}")
        statuses = await activation_statuses(bs.stack, ids)
    whole.stop(result.client_cpu_s)
    bs.profiler.finish()
    runs = [r for r in await truth(bs.sim) if r["command_id"] in commands]
    starts = [datetime.fromisoformat(r["started_at"]).timestamp() - first for r in runs]
    by_command = {r["command_id"]: r for r in runs}
    lags = [
        (
            datetime.fromisoformat(by_command[a.fields["command_id"]]["started_at"])
            - datetime.fromisoformat(a.fields["requested_at"])
        ).total_seconds()
        for a in admitted
        if a.fields["command_id"] in by_command
    ]
    api_ms = _api_ms(answering, n)
    workers_s = whole.used.get("workers", 0.0) * whole.wall
    worker_ms = workers_s / max(1, len(admitted)) * 1000
    net_ms = max(0.0, workers_s - idle_cores * whole.wall) / max(1, len(admitted)) * 1000
    expired = statuses.get("expired", 0)
    p50, p99 = percentile(starts, 50), percentile(starts, 99)
    label = f"burst {n:,} pumps / {sites} sites"
    print(
        f"  {label}: sent within {spread * 1000:.0f} ms; {_codes(result)}; the {n} answers took "
        f"{answered:.2f} s; {len(runs)} started in truth; statuses {statuses}"
    )
    print(
        f"    first request -> device start: p50 {p50:.2f} s, p99 {p99:.2f} s, last "
        f"{max(starts, default=float('nan')):.2f} s; requested_at -> start p50 "
        f"{ms(percentile(lags, 50))}, p99 {ms(percentile(lags, 99))}"
    )
    print(
        f"    API CPU {api_ms:.2f} ms per request (answering: {answering.summary()}); workers "
        f"{worker_ms:.1f} ms CPU per activation ({net_ms:.1f} ms less their idle "
        f"{idle_cores:.2f} cores) over {whole.wall:.1f} s; {whole.summary()}"
    )
    _server_trouble_of(bs.api, result)
    bs.figures += [
        Figure(f"{label}: first request -> device start p50", p50 * 1000, "ms"),
        Figure(
            f"{label}: first request -> device start p99",
            p99 * 1000,
            "ms",
            note=f"{len(runs)} of {n} started in truth; {_codes(result)}; statuses {statuses}; "
            f"sent within {spread * 1000:.0f} ms, answered within {answered:.2f} s",
        ),
        Figure(f"{label}: requested_at -> device start p99", percentile(lags, 99) * 1000, "ms"),
        Figure(f"{label}: API CPU per admitted request", api_ms, "ms", note=answering.summary()),
        Figure(
            f"{label}: worker CPU per activation",
            worker_ms,
            "ms",
            note=f"{net_ms:.1f} ms less the workers' idle {idle_cores:.2f} cores; "
            f"{whole.wall:.1f} s from the first request to the last run's end; " + whole.summary(),
        ),
    ]
    everything = len(admitted) == n and len(runs) == n and expired == 0 and not result.errors
    bs.aims.append(
        Aim(
            f"{label}: {n:,} x 202, all started in truth, none expired",
            f"{len(admitted):,} / {len(runs):,} / {expired}",
            everything,
            f"statuses {statuses}; sent within {spread * 1000:.0f} ms",
        )
    )
    if n >= 1000:  # the aims for 1,000 pumps; for fewer, its aim for 200
        bs.aims.append(Aim(f"{label}: first request -> start p50 <= 2 s", f"{p50:.2f} s", p50 <= 2))
        bs.aims.append(Aim(f"{label}: first request -> start p99 <= 5 s", f"{p99:.2f} s", p99 <= 5))
    else:
        bs.aims.append(Aim(f"{label}: first request -> start p99 <= 3 s", f"{p99:.2f} s", p99 <= 3))
    if largest:
        bs.aims.append(
            Aim(
                f"worker CPU per activation <= {WORKER_MS_AIM:.0f} ms ({label})",
                f"{worker_ms:.1f} ms",
                worker_ms <= WORKER_MS_AIM,
                f"start, confirmation and stop jobs and the crons meanwhile; "
                f"{net_ms:.1f} ms less the idle workers' CPU"
                + (f"; {expired} expired runs cost less" if expired else ""),
            )
        )
        bs.aims.append(
            Aim(
                f"API CPU per admitted request <= {API_ADMITTED_MS_AIM} ms ({label})",
                f"{api_ms:.2f} ms",
                api_ms <= API_ADMITTED_MS_AIM,
                "one new connection each",
            )
        )


async def _none_busy(stack: Stack) -> bool:
    return await busy_pumps(stack) == 0


def _server_trouble_of(api: Proc, result: LoadResult) -> None:
    if not any(a.status >= 500 for a in result.answers):
        return
    lines = [line for line in api.output(200_000).splitlines() if "rror" in line]
    print("    !! 5xx answers; the API logged:")
    for line in lines[-6:]:
        print(f"       {line[:400]}")


async def run_burst(
    args: argparse.Namespace,
    params: Params,
    clients: Clients,
    aims: list[Aim],
    profiler: Profiler,
) -> list[Figure]:
    """The bursts, largest last, on a fresh stack of the processes `irrigation up` runs."""
    started = time.monotonic()
    gateway = args.burst_gateway
    env, root = gateway_env(args, gateway)
    largest = max(params.bursts)
    sites = math.ceil(largest / params.burst_per_site)
    where = f", broker {args.mqtt_url}, topic root {root}" if gateway == "mqtt" else ""
    print(
        f"\nburst ({gateway} gateway{where}): the processes `irrigation up` runs: the API "
        "(`irrigation serve`, 1 uvicorn worker), a `pumps` worker, an `automation,bulk` "
        "worker and the simulator (its devices on the broker with mqtt); not `up`'s MQTT "
        "readings bridge nor its demo feeder, which have nothing to do here"
    )
    try:
        async with Stack(DATABASE, env=env) as stack:
            sim_url = await stack.start_simulator(args.mqtt_url if gateway == "mqtt" else None)
            workers = [stack.start_worker("pumps"), stack.start_worker("automation,bulk")]
            api, url = await stack.start_api(workers=1)
            keys = await make_sites(stack, sites)
            pumps = await make_burst_fleet(url, keys, largest, params.burst_per_site)
            print(
                f"  set-up: {time.monotonic() - started:.1f} s ({sites} sites, {largest} pumps; "
                f"{load_average()})"
            )
            async with httpx.AsyncClient(base_url=sim_url, timeout=30) as sim:
                bs = BurstStack(stack, clients, sim, api, url, workers, pumps, profiler, aims)
                for n in sorted(params.bursts):
                    await burst(bs, n, n == largest)
            for w in workers:
                if not w.alive():
                    print(f"!! worker {w.pid} died:\n{w.output()}")
            return bs.figures
    finally:
        if gateway == "mqtt":
            cleared = await clear_retained(args.mqtt_url, root)
            print(f"  broker: {cleared} retained states under {root}/ cleared")


def gateway_env(args: argparse.Namespace, gateway: str) -> tuple[dict[str, str], str]:
    """The stack's environment for one driver, and its MQTT topic root."""
    env = {"IRRIGATION_MIN_COOLDOWN_S": "0", "IRRIGATION_GATEWAY": gateway}
    root = f"bench-{uuid.uuid4().hex[:8]}"
    if gateway == "mqtt":
        env |= {
            "IRRIGATION_MQTT_URL": args.mqtt_url,
            "IRRIGATION_MQTT_TOPIC_ROOT": root,
            "IRRIGATION_MQTT_CLIENT_ID_PREFIX": root,
        }
    return env, root


# Main -----------------------------------------------------------------------------------


def _gateways(text: str) -> tuple[str, ...]:
    found = tuple(dict.fromkeys(g.strip() for g in text.split(",") if g.strip()))
    unknown = [g for g in found if g not in ("http", "mqtt")]
    if unknown or not found:
        raise argparse.ArgumentTypeError(f"gateways are http and mqtt, not {text!r}")
    return found


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: everything shrunk (< 30 s)")
    p.add_argument("--herd", type=int, help="herd size (default 1000; quick 200)")
    p.add_argument("--pumps", type=int, help="pumps for the sustained load (default 100)")
    p.add_argument("--concurrency", type=int, help="sustained: requests in flight (default 50)")
    p.add_argument("--duration", type=float, help="sustained: seconds (default 10; quick 2)")
    p.add_argument("--api-workers", help="uvicorn worker counts to run, e.g. 1,2 (default 1,2)")
    p.add_argument("--arq-workers", type=int, help="irrigation worker processes (2; quick 1)")
    p.add_argument("--client-procs", type=int, help="HTTP client processes (2; quick 1)")
    p.add_argument(
        "--baseline-pool",
        type=int,
        default=30,
        help="asyncpg connections of the baseline (default 30: the API pool's former 10 + 20)",
    )
    p.add_argument(
        "--api-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment of the API, e.g. IRRIGATION_DB_POOL_SIZE=30 (repeatable)",
    )
    p.add_argument(
        "--only",
        type=lambda text: set(text.split(",")),
        default={"herd", "sustained", "unloaded", "reads", "burst"},
        help="phases to run, of herd,sustained,unloaded,reads,burst (default: all)",
    )
    p.add_argument(
        "--reads-seconds",
        type=float,
        help="the reads phase's length (default 5; quick 1): longer evens out other load",
    )
    p.add_argument(
        "--burst",
        help="burst sizes: pumps asked for at once, one request each (default 200,1000; "
        "quick 20,100); 1,000 or more are judged against the 1,000-pump aims, fewer "
        "against the 200-pump aim; the largest gives the CPU per activation",
    )
    p.add_argument(
        "--burst-per-site",
        type=int,
        default=10,
        help="burst pumps per site, each site with its own key (default 10: 1,000 in 100)",
    )
    p.add_argument(
        "--burst-gateway",
        choices=("http", "mqtt"),
        default="mqtt",
        help="the burst stack's driver (default mqtt, as `irrigation up`)",
    )
    p.add_argument(
        "--gateways",
        type=_gateways,
        default=("http",),
        help="drivers from the workers to the devices, each on a fresh stack, e.g. http,mqtt "
        "(default http)",
    )
    p.add_argument(
        "--mqtt-url",
        default="mqtt://127.0.0.1:1883",
        help="the broker of the mqtt gateway (default mqtt://127.0.0.1:1883)",
    )
    p.add_argument(
        "--profile",
        type=Path,
        help="py-spy the API and the workers into this folder (and print their top frames)",
    )
    p.add_argument("--markdown", type=Path, help="also write the figures table here")
    return p.parse_args(argv)


async def run(args: argparse.Namespace) -> int:
    params = Params.of(args)
    args.arq_workers = args.arq_workers or (1 if args.quick else 2)
    args.client_procs = args.client_procs or (1 if args.quick else 2)
    api_env = dict(item.split("=", 1) for item in args.api_env)
    gateways = args.gateways
    bursting = "burst" in args.only
    if "mqtt" in gateways or (bursting and args.burst_gateway == "mqtt"):
        trouble = await broker_trouble(args.mqtt_url)
        if trouble:
            print(
                f"BENCHMARK FAILED: --gateways or --burst-gateway is mqtt, but no MQTT broker "
                f"answers at {args.mqtt_url} (--mqtt-url): {trouble}. Start one (e.g. "
                f"`mosquitto -p 1883`), or choose http.",
                file=sys.stderr,
            )
            return 2
    started = time.monotonic()
    print(
        f"pump activation benchmark ({'quick' if args.quick else 'full'}): herd {params.herd}, "
        f"{params.pumps} pumps x {params.concurrency} in flight x {params.duration_s:g} s, "
        f"gateways {', '.join(gateways)}, API workers {params.api_workers}, "
        f"{args.arq_workers} arq workers, {args.client_procs} client process(es), baseline "
        f"pool {params.baseline_pool}, {os.cpu_count()} cores; API env {api_env or '-'}; "
        f"bursts {params.bursts if bursting else '-'} ({params.burst_per_site} pumps a site, "
        f"{args.burst_gateway} gateway); {load_average()}"
    )
    clients = Clients(args.client_procs)
    variants: list[Variant] = []
    aims: list[Aim] = []
    profiler = Profiler(args.profile)
    burst_figures: list[Figure] = []
    loads = [load_average()]
    try:
        if args.only - {"burst"}:
            for gateway in gateways:
                variants += await run_gateway(
                    args, params, clients, gateway, api_env, aims, profiler
                )
                loads.append(load_average())
        if bursting:
            burst_figures = await run_burst(args, params, clients, aims, profiler)
            loads.append(load_average())
    except BenchFailure as exc:
        print(f"\nBENCHMARK FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        clients.close()

    print(
        "\nfigures (ratio = HTTP figure / its baseline measured just before it: the bare "
        "FastAPI gate, or the bare asyncpg loop):"
    )
    tables = []
    if len(gateways) > 1:
        for n in params.api_workers:
            side = [v for v in variants if v.workers == n]
            table = comparison_table(side)
            heading = f"Gateways side by side, API: {side[0].api_label}"
            tables.append(f"#### {heading}\n\n{table}")
            print(f"\n{heading}:\n{table}")
    for variant in variants:
        tables.append(f"#### {variant.label}\n\n{markdown_table(variant.figures)}")
        print(f"\n{variant.label}:")
        for figure in variant.figures:
            print(f"  {figure.line()}")
    if burst_figures:
        heading = f"burst, {args.burst_gateway} gateway, the processes of `irrigation up`"
        tables.append(f"#### {heading}\n\n{markdown_table(burst_figures)}")
        print(f"\n{heading}:")
        for figure in burst_figures:
            print(f"  {figure.line()}")
    if profiler.reports:
        print("\nprofiles (py-spy; the figures of a profiled run are not the measurement):")
        for line in profiler.reports:
            print(line)
        tables.append("#### Profiles\n\n```\n" + "\n".join(profiler.reports) + "\n```")
    print_aims(aims)
    tables.insert(0, f"#### Aims (issue 20)\n\n{aims_table(aims)}")
    loads.append(load_average())
    machine = f"{os.cpu_count()} cores; " + " -> ".join(loads)
    print(f"\nmachine: {machine}")
    if args.markdown:
        args.markdown.write_text(f"Machine: {machine}\n\n" + "\n\n".join(tables) + "\n")
    print(f"total {time.monotonic() - started:.1f} s; database {DATABASE} dropped")
    return 0


async def run_gateway(
    args: argparse.Namespace,
    params: Params,
    clients: Clients,
    gateway: str,
    api_env: dict[str, str],
    aims: list[Aim],
    profiler: Profiler,
) -> list[Variant]:
    """Every phase with the workers and the simulator on one driver, on a fresh stack (a
    fresh database, Redis namespace, simulator and workers; for MQTT a topic root and
    client-id prefix of this run's own on the broker, whose retained states are cleared
    after)."""
    started = time.monotonic()
    env, root = gateway_env(args, gateway)
    variants: list[Variant] = []
    where = f" (broker {args.mqtt_url}, topic root {root})" if gateway == "mqtt" else ""
    print(f"{gateway} gateway{where}:")
    try:
        async with Stack(DATABASE, env=env) as stack:
            key = stack.create_key("bench")
            headers = {"Authorization": f"Bearer {key}"}
            sim_url = await stack.start_simulator(args.mqtt_url if gateway == "mqtt" else None)
            workers = [stack.start_worker() for _ in range(args.arq_workers)]
            bare, bare_url = await stack.start_bare_gate()
            print(f"  set-up: {time.monotonic() - started:.1f} s")
            async with httpx.AsyncClient(base_url=sim_url, timeout=10) as sim:
                b = Bench(params, stack, clients, sim, workers, profiler, aims, bare, bare_url)
                for index, n in enumerate(params.api_workers):
                    proc, url = await stack.start_api(workers=n, **api_env)
                    variant = Variant(gateway, n, proc, url)
                    variants.append(variant)
                    print(f"{variant.label} (API pid {proc.pid}; {load_average()}):")
                    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as api:
                        if not b.fleet.pumps:
                            b.fleet = await make_fleet(api, params)
                        if "herd" in args.only:
                            await herd(b, variant, api, b.fleet.herd_pumps[index])
                            await wait_idle(api)
                        if "sustained" in args.only:
                            await sustained(b, variant, api)
                            await wait_idle(api)
                        if "unloaded" in args.only:
                            await unloaded_start_latency(b, variant, api)
                            await wait_idle(api)
                        if "reads" in args.only:
                            await reads(b, variant, api)
                    for line in variant.notes:
                        print(line)
                    stack.stop(proc)
            for w in workers:
                if not w.alive():
                    print(f"!! worker {w.pid} died:\n{w.output()}")
    finally:
        if gateway == "mqtt":
            cleared = await clear_retained(args.mqtt_url, root)
            print(f"  broker: {cleared} retained states under {root}/ cleared")
    return variants


# Side by side ---------------------------------------------------------------------------

COMPARED = (  # (figure name starts with, row label, unit)
    ("enqueue -> gateway start unloaded: p50", "enqueue -> gateway start, unloaded: p50", "ms"),
    ("enqueue -> gateway start unloaded: p99", "enqueue -> gateway start, unloaded: p99", "ms"),
    ("enqueue -> gateway start under load: p50", "enqueue -> gateway start, under load: p50", "ms"),
    ("enqueue -> gateway start under load: p99", "enqueue -> gateway start, under load: p99", "ms"),
    ("sustained: admitted (202)", "sustained: admitted (202)", "/s"),
    ("sustained (", "sustained: requests (202 + 409)", "req/s"),
    ("herd (", "herd: throughput (exactly 1 x 202, 1 run in truth)", "req/s"),
)


def comparison_table(variants: list[Variant]) -> str:
    """The figures that tell the drivers apart, one column per gateway (same API workers)."""
    rows = [
        "| figure | " + " | ".join(v.gateway for v in variants) + " |",
        "| --- |" + " ---: |" * len(variants),
    ]
    for name, label, unit in COMPARED:
        values = [v.value(name) for v in variants]
        if all(value is None for value in values):
            continue
        cells = ["" if value is None else f"{value:,.1f} {unit}" for value in values]
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


# The broker -----------------------------------------------------------------------------


def _broker_link(url: str, role: str) -> Any:
    from irrigation.mqtt.address import BrokerAddress
    from irrigation.mqtt.client import BrokerLink, SessionOptions

    name = f"bench-{role}-{uuid.uuid4().hex[:8]}"
    return BrokerLink(BrokerAddress.parse(url), SessionOptions(name, persistent=False))


async def broker_trouble(url: str) -> str:
    """Why no broker answers at `url` ("" when one does)."""
    import aiomqtt

    try:
        link = _broker_link(url, "probe")
        async with asyncio.timeout(10), link.connect():
            return ""
    except (ValueError, OSError, TimeoutError, aiomqtt.MqttError) as exc:
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def clear_retained(url: str, root: str, quiet_s: float = 1.0) -> int:
    """Clear the retained messages under `root/` (the simulated devices' states): the
    broker would otherwise keep them after the run."""
    import aiomqtt

    topics: set[str] = set()
    try:
        async with asyncio.timeout(30), _broker_link(url, "cleanup").connect() as client:
            await client.subscribe(f"{root}/#", qos=1)
            while True:
                try:
                    async with asyncio.timeout(quiet_s):
                        message = await anext(aiter(client.messages))
                except TimeoutError:
                    break
                if message.retain and message.payload:
                    topics.add(message.topic.value)
            await client.unsubscribe(f"{root}/#")
            for topic in sorted(topics):
                await client.publish(topic, b"", qos=1, retain=True)
    except (TimeoutError, aiomqtt.MqttError) as exc:
        print(f"  !! could not clear the retained states under {root}/: {exc!r}")
    return len(topics)


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


def main() -> None:
    sys.exit(asyncio.run(run(parse_args())))


if __name__ == "__main__":
    main()
