"""Pump activation benchmark, against the real processes, with a bare-asyncpg baseline.

    .venv/bin/python bench/activation.py            # full run (~2 min)
    .venv/bin/python bench/activation.py --quick    # smoke run (< 30 s)
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

Each throughput is set against a baseline measured right before it, on the same `pumps`
rows, through a fresh asyncpg pool of 30 connections (the API pool's former ceiling, 10 + 20;
its default is now 10 + 5):
`BEGIN; SELECT ... FOR NO KEY UPDATE; UPDATE pumps SET last_sequence = last_sequence + 1;
COMMIT`, (a) N transactions at once on the herd's row, (b) C closed loops over the P rows.
The figures that matter are the ratios: the machine is shared and its load varies.

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

DATABASE = "irrigation_bench"
AIM = 0.5  # the aim: HTTP throughput at least half of the bare-asyncpg baseline
KEEP = ("code", "id", "command_id", "requested_at")
BASELINE_TX = """
SELECT id, last_sequence FROM pumps WHERE id = $1 FOR NO KEY UPDATE
"""
BASELINE_UPDATE = "UPDATE pumps SET last_sequence = last_sequence + 1 WHERE id = $1"

# Where the API's CPU goes (py-spy). Phases: a sample counts if any frame matches (they
# may nest: "_admit" is inside "admission transaction"). Layers: the innermost frame that
# matches one of them takes the sample, so layers add up to 100 %.
PROFILE_PHASES = {
    "auth dependency (own session + api_keys lookup)": ["current_principal ("],
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
PROFILE_LAYERS = {
    "asyncpg": ["asyncpg/"],
    "SQLAlchemy": ["sqlalchemy/"],
    "pydantic": ["pydantic"],
    "redis/arq": ["redis/", "arq/"],
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
        )


@dataclass
class Fleet:
    herd_pumps: list[dict[str, Any]] = field(default_factory=list)
    pumps: list[dict[str, Any]] = field(default_factory=list)


# Set-up ---------------------------------------------------------------------------------


async def make_pump(api: httpx.AsyncClient, hardware_id: str, **fields: Any) -> dict[str, Any]:
    zone = await api.post("/v1/zones", json={"name": f"zone {hardware_id}", "timezone": "UTC"})
    zone.raise_for_status()
    body = {"zone_id": zone.json()["id"], "name": hardware_id, "hardware_id": hardware_id}
    pump = await api.post("/v1/pumps", json={**body, **fields})
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


def _costs(bench_meter: CpuMeter, before: dict[str, int], after: dict[str, int], n: int) -> str:
    api_ms = bench_meter.used.get("api", 0.0) * bench_meter.wall / max(1, n) * 1000
    conns = after["connections"] - before["connections"]
    tx = (after["transactions"] - before["transactions"]) / max(1, n)
    return f"API CPU {api_ms:.1f} ms/request; {conns} new DB connections; {tx:.1f} DB tx/request"


class Profiler:
    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self.proc: Proc | None = None
        self.path: Path | None = None

    def start(self, variant: Variant, phase: str, seconds: float) -> None:
        if self.directory is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / f"{variant.gateway}-api{variant.workers}-{phase}.txt"
        self.proc = py_spy(variant.api.pid, seconds + 30, self.path, subprocesses=True)
        time.sleep(0.5)  # py-spy attaches

    def finish(self) -> list[str]:
        if self.proc is None or self.path is None:
            return []
        finish_py_spy(self.proc)
        self.proc = None
        if not self.path.exists():
            return [f"py-spy wrote nothing to {self.path}"]
        report = profile_summary(self.path, PROFILE_PHASES, PROFILE_LAYERS)
        lines = [f"profile {self.path} ({report.samples} samples of API CPU):"]
        lines += [f"    {share:6.1%}  {name}" for name, share in report.phases]
        lines.append("  by layer (innermost match):")
        lines += [f"    {share:6.1%}  {name}" for name, share in report.layers]
        lines.append("  hottest own frames:")
        lines += [f"    {share:6.1%}  {name}" for name, share in report.leaves]
        return lines


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
    before = await b.db_counters()
    meter = b.meter(variant)
    b.profiler.start(variant, "herd", 30)
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
        f"; baseline 1 row: {base:,.0f} tx/s; ratio {rate / base:.2f}"
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
    variant.figures += [
        Figure(
            f"herd ({n} concurrent requests, 1 pump): throughput",
            rate,
            "req/s",
            base,
            "1 row",
            baseline_unit="tx/s",
            note=f"wall {result.wall_s:.2f} s; 1 x 202, {others} x 409/503; {meter.summary()}",
        ),
        Figure("herd: p50 latency", percentile(lat, 50) * 1000, "ms"),
        Figure("herd: p99 latency", percentile(lat, 99) * 1000, "ms", note=costs),
    ]


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
    before = await b.db_counters()
    meter = b.meter(variant)
    b.profiler.start(variant, "sustained", p.duration_s)
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
        f"baseline {len(ids)} rows: {base:,.0f} tx/s; ratio {rate / base:.2f}"
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
    variant.figures += [
        Figure(
            f"sustained ({p.concurrency} in flight, {len(ids)} pumps): requests",
            rate,
            "req/s",
            base,
            f"{len(ids)} rows",
            baseline_unit="tx/s",
            note=f"{len(admitted)} x 202 + {refused} x 409 in {result.wall_s:.1f} s; "
            + meter.summary(),
        ),
        Figure("sustained: admitted (202)", admit_rate, "/s", note="bounded by 1 s runs"),
        Figure("sustained: p50 latency", percentile(lat, 50) * 1000, "ms"),
        Figure("sustained: p99 latency", percentile(lat, 99) * 1000, "ms", note=costs),
        Figure("enqueue -> gateway start under load: p50", percentile(lags, 50) * 1000, "ms"),
        Figure(
            "enqueue -> gateway start under load: p99",
            percentile(lags, 99) * 1000,
            "ms",
            note=f"{len(lags)} runs, {missing} never started{fates}",
        ),
    ]


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


async def wait_idle(api: httpx.AsyncClient, timeout_s: float = 20) -> None:
    """Until no pump holds an activation (the 1 s runs have ended)."""

    async def idle() -> bool:
        response = await api.get("/v1/pumps", params={"limit": 500})
        response.raise_for_status()
        return all(p["active_activation_id"] is None for p in response.json()["items"])

    await wait_until(idle, timeout_s, "pumps idle")


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
        default={"herd", "sustained", "unloaded"},
        help="phases to run, of herd,sustained,unloaded (default: all)",
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
    p.add_argument("--profile", type=Path, help="py-spy the API into this folder")
    p.add_argument("--markdown", type=Path, help="also write the figures table here")
    return p.parse_args(argv)


async def run(args: argparse.Namespace) -> int:
    params = Params.of(args)
    args.arq_workers = args.arq_workers or (1 if args.quick else 2)
    args.client_procs = args.client_procs or (1 if args.quick else 2)
    api_env = dict(item.split("=", 1) for item in args.api_env)
    gateways = args.gateways
    if "mqtt" in gateways:
        trouble = await broker_trouble(args.mqtt_url)
        if trouble:
            print(
                f"BENCHMARK FAILED: --gateways includes mqtt, but no MQTT broker answers at "
                f"{args.mqtt_url} (--mqtt-url): {trouble}. Start one (e.g. `mosquitto -p "
                f"1883`) or leave mqtt out of --gateways.",
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
        f"{load_average()}"
    )
    clients = Clients(args.client_procs)
    variants: list[Variant] = []
    try:
        for gateway in gateways:
            variants += await run_gateway(args, params, clients, gateway, api_env)
    except BenchFailure as exc:
        print(f"\nBENCHMARK FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        clients.close()

    print("\nfigures (ratio = HTTP figure / bare asyncpg baseline measured just before it):")
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
        for figure in variant.figures:
            if figure.ratio is not None:
                verdict = "met" if figure.ratio >= AIM else "NOT met"
                print(f"  aim ratio >= {AIM}: {verdict} for {figure.name} ({figure.ratio:.2f})")
    if args.markdown:
        args.markdown.write_text("\n\n".join(tables) + "\n")
    print(
        f"\ntotal {time.monotonic() - started:.1f} s; {load_average()}; database {DATABASE} dropped"
    )
    return 0


async def run_gateway(
    args: argparse.Namespace,
    params: Params,
    clients: Clients,
    gateway: str,
    api_env: dict[str, str],
) -> list[Variant]:
    """Every phase with the workers and the simulator on one driver, on a fresh stack (a
    fresh database, Redis namespace, simulator and workers; for MQTT a topic root and
    client-id prefix of this run's own on the broker, whose retained states are cleared
    after)."""
    started = time.monotonic()
    env = {"IRRIGATION_MIN_COOLDOWN_S": "0", "IRRIGATION_GATEWAY": gateway}
    root = f"bench-{uuid.uuid4().hex[:8]}"
    if gateway == "mqtt":
        env |= {
            "IRRIGATION_MQTT_URL": args.mqtt_url,
            "IRRIGATION_MQTT_TOPIC_ROOT": root,
            "IRRIGATION_MQTT_CLIENT_ID_PREFIX": root,
        }
    variants: list[Variant] = []
    where = f" (broker {args.mqtt_url}, topic root {root})" if gateway == "mqtt" else ""
    print(f"{gateway} gateway{where}:")
    try:
        async with Stack(DATABASE, env=env) as stack:
            key = stack.create_key("bench")
            headers = {"Authorization": f"Bearer {key}"}
            sim_url = await stack.start_simulator(args.mqtt_url if gateway == "mqtt" else None)
            workers = [stack.start_worker() for _ in range(args.arq_workers)]
            print(f"  set-up: {time.monotonic() - started:.1f} s")
            async with httpx.AsyncClient(base_url=sim_url, timeout=10) as sim:
                b = Bench(params, stack, clients, sim, workers, Profiler(args.profile))
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
