"""`irrigation soak`: the whole stack as separate processes, a seeded storm of operator and
automation requests, a seeded fault schedule, then quiet, the final read, the truth, the
history file and the checker's verdict. A violation prints the seed that replays it."""

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO
from urllib.parse import urlsplit

import asyncpg
import httpx

from irrigation.db import create_engine, create_sessionmaker
from irrigation.settings import Settings, to_asyncpg_url
from irrigation.soak import history
from irrigation.soak.checker import Tolerances, Violation, check, summary
from irrigation.soak.faults import Injector
from irrigation.soak.fleet import Fleet, SiteFleet, build_fleet
from irrigation.soak.operations import pages, read_json, run_client, wind_down
from irrigation.soak.plan import Plan, SoakParams, fault_kinds, make_plan
from irrigation.soak.processes import SoakStack
from irrigation.stack import LOCAL_POSTGRES, ensure_database, plain_url, with_database

Echo = Callable[[str], None]
# From the end of the faults: the watchdog, a worker started again and a job whose lease
# ran out all have their seconds; a pump's longest run is 30 s.
QUIET_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class SoakResult:
    seed: int
    history_path: Path
    violations: list[Violation]
    history: history.History

    @property
    def ok(self) -> bool:
        return not self.violations


def replay_command(params: SoakParams) -> str:
    """The command that runs the same plan again (the options that differ from defaults)."""
    defaults = SoakParams(seed=params.seed)
    words = ["irrigation soak", f"--seed {params.seed}", f"--minutes {params.minutes:g}"]
    if params.gateway != defaults.gateway:
        words.append(f"--gateway {params.gateway}")
    if params.sites != defaults.sites:
        words.append(f"--sites {params.sites}")
    if not params.shared_hardware_ids:
        words.append("--no-shared-hardware-ids")
    faults = [*params.device_faults, *params.process_faults]
    if faults != [f for kinds in fault_kinds(None, params.gateway) for f in kinds]:
        words.append(f"--faults {','.join(faults) or 'none'}")
    return " ".join(words)


@dataclass
class _Schedule:
    """One fault schedule (one seed's plan) as it runs, on a stack it may share."""

    params: SoakParams
    plan: Plan
    history_path: Path
    out: TextIO
    header: history.Json
    fleet: Fleet | None = None
    operations: list[history.Operation] = field(default_factory=list)
    faults: list[history.FaultEvent] = field(default_factory=list)
    final: history.Final | None = None
    truth: history.Truth | None = None

    def __post_init__(self) -> None:
        self.writer = history.Writer(self.out)
        self.writer.write({"type": "header", **self.header})

    def record_op(self, op: history.Operation) -> None:
        self.operations.append(op)
        self.writer.write(op.to_json())

    def record_fault(self, fault: history.FaultEvent) -> None:
        self.faults.append(fault)
        self.writer.write(fault.to_json())

    @property
    def site_ids(self) -> set[str]:
        return {s.id for s in self.fleet.sites} if self.fleet is not None else set()


async def soak(
    params: SoakParams,
    workdir: Path,
    *,
    database_url: str | None = None,
    server_url: str | None = None,
    redis_url: str | None = None,
    redis_namespace: str | None = None,
    keep_database: bool = False,
    service_env: Mapping[str, str] | None = None,
    tolerances: Tolerances | None = None,
    echo: Echo = print,
) -> SoakResult:
    """One soak. `database_url` is used as it is (its service connections get killed);
    without it, a fresh database on `server_url`'s server (else localhost) is made and
    dropped afterwards. Without `redis_url` the soak runs its own Redis (and restarts it);
    with one, it leaves it alone. `service_env` (`IRRIGATION_*`) goes to every process of
    the stack, over the soak's own settings (processes.SERVICE_ENV)."""
    (result,) = await soak_many(
        [params],
        workdir,
        database_url=database_url,
        server_url=server_url,
        redis_url=redis_url,
        redis_namespace=redis_namespace,
        keep_database=keep_database,
        service_env=service_env,
        tolerances=tolerances,
        echo=echo,
    )
    return result


async def soak_many(
    schedules: list[SoakParams],
    workdir: Path,
    *,
    parallel: int = 1,
    database_url: str | None = None,
    server_url: str | None = None,
    redis_url: str | None = None,
    redis_namespace: str | None = None,
    keep_database: bool = False,
    service_env: Mapping[str, str] | None = None,
    tolerances: Tolerances | None = None,
    echo: Echo = print,
) -> list[SoakResult]:
    """Several fault schedules (one per `SoakParams`, all with one driver) on one stack,
    `parallel` at a time: each with its own sites, requests and device faults, all with
    their process faults on the shared stack; each with its own history and verdict,
    judged from the truth of its own sites. Arguments as for `soak`."""
    gateways = {p.gateway for p in schedules}
    if len(gateways) != 1:
        raise ValueError(f"one driver per soak, not {sorted(gateways)}")
    run = uuid.uuid4().hex[:8]
    if redis_url is not None:
        schedules = [
            replace(p, process_faults=tuple(f for f in p.process_faults if f != "redis_restart"))
            for p in schedules
        ]
    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    created: str | None = None
    if database_url is None:
        created = f"irrigation_soak_{schedules[0].seed}_{run}"
        database_url = with_database(server_url or LOCAL_POSTGRES, created)
    database_url = to_asyncpg_url(database_url)
    await ensure_database(database_url)
    stack = SoakStack(
        workdir,
        database_url,
        redis_namespace or f"soak-{schedules[0].seed}-{run}",
        redis_url=redis_url,
        gateway=gateways.pop(),
        env=service_env,
    )
    results: list[SoakResult] = []
    try:
        await stack.migrate()
        await stack.start()
        limits = httpx.Limits(max_connections=100)
        timeout = httpx.Timeout(10, connect=3)
        async with (
            httpx.AsyncClient(base_url=stack.api_url, timeout=timeout, limits=limits) as api,
            httpx.AsyncClient(base_url=stack.simulator_url, timeout=timeout) as simulator,
        ):
            for first in range(0, len(schedules), max(1, parallel)):
                batch = schedules[first : first + max(1, parallel)]
                paths = [
                    workdir / ("history.jsonl" if len(schedules) == 1 else f"seed-{p.seed}.jsonl")
                    for p in batch
                ]
                with contextlib.ExitStack() as files:
                    running = [
                        _start_schedule(p, path, files.enter_context(path.open("w")), echo)
                        for p, path in zip(batch, paths, strict=True)
                    ]
                    await _run(running, stack, api, simulator, database_url, run)
                for schedule in running:
                    results.append(_judge(schedule, tolerances, echo, brief=len(schedules) > 1))
    finally:
        await stack.stop()
        if created is not None and not keep_database:
            await _drop(database_url, created)
    return results


def _start_schedule(params: SoakParams, path: Path, out: TextIO, echo: Echo) -> _Schedule:
    plan = make_plan(params)
    header = history.header(
        params.seed, {**params.to_json(), "plan": plan.to_json()}, datetime.now(UTC)
    )
    echo(
        f"soak seed {params.seed} ({params.gateway}): {len(plan.ops)} requests, "
        f"{len(plan.faults)} faults over {plan.window_s:.0f} s; history in {path}"
    )
    return _Schedule(params, plan, path, out, header)


async def _run(
    schedules: list[_Schedule],
    stack: SoakStack,
    api: httpx.AsyncClient,
    simulator: httpx.AsyncClient,
    database_url: str,
    run: str,
) -> None:
    """Every schedule of a batch at once, from the fleets to the truth."""
    # Keys are made as the CLI makes them; the engine goes before the faults begin.
    engine = create_engine(Settings(database_url=database_url, db_pool_size=1))
    try:
        for schedule in schedules:
            schedule.fleet = await build_fleet(
                api,
                create_sessionmaker(engine),
                schedule.plan,
                f"soak {schedule.params.seed} {run}",
                schedules=schedule.params.schedules,
            )
            schedule.writer.write(schedule.fleet.config.to_json())
    finally:
        await engine.dispose()
    admin = plain_url(with_database(database_url, "postgres"))
    database = urlsplit(plain_url(database_url)).path.lstrip("/")
    injectors: list[Injector] = []
    clients = []
    started = time.monotonic()
    for schedule in schedules:
        assert schedule.fleet is not None
        injectors.append(
            Injector(stack, simulator, schedule.fleet, admin, database, schedule.record_fault)
        )
        clients += [
            run_client(
                api,
                schedule.fleet,
                schedule.params,
                [o for o in schedule.plan.ops if o.client == c],
                started,
                schedule.record_op,
            )
            for c in range(schedule.params.clients)
        ]
    injecting = [
        asyncio.create_task(i.run(s.plan.faults, started))
        for i, s in zip(injectors, schedules, strict=True)
    ]
    try:
        await asyncio.gather(*clients)
    finally:
        # Faults planned past the last request are not applied: the soak ends.
        for task in injecting:
            task.cancel()
        await asyncio.gather(*injecting, return_exceptions=True)
        await asyncio.gather(*(i.lift() for i in injectors))
        with contextlib.suppress(httpx.HTTPError):
            await simulator.delete("/faults")
        stack.release_workers()
        await stack.ensure_up()
    for schedule in schedules:
        assert schedule.fleet is not None
        await wind_down(api, schedule.fleet, len(schedule.plan.ops), schedule.record_op)
    sites = [site for s in schedules if s.fleet is not None for site in s.fleet.sites]
    quiet = await _wait_quiet(api, simulator, sites)
    truth = await _truth(simulator)
    for schedule in schedules:
        assert schedule.fleet is not None
        schedule.final = await _final_read(api, schedule.fleet, quiet)
        schedule.writer.write(schedule.final.to_json())
        own = history.Truth(
            truth.read_at, [r for r in truth.runs if r.site_id in schedule.site_ids]
        )
        schedule.truth = own
        schedule.writer.write(own.to_json())


def _judge(
    schedule: _Schedule, tolerances: Tolerances | None, echo: Echo, *, brief: bool
) -> SoakResult:
    assert schedule.fleet is not None
    recorded = history.History(
        schedule.header,
        schedule.fleet.config,
        schedule.operations,
        schedule.faults,
        schedule.final,
        schedule.truth,
    )
    violations = check(recorded, tolerances)
    _report(recorded, violations, schedule.params, schedule.history_path, echo, brief=brief)
    return SoakResult(schedule.params.seed, schedule.history_path, violations, recorded)


def start_latencies(recorded: history.History) -> list[float]:
    """Seconds from each started activation's `requested_at` (the database's clock) to its
    run's start in the simulator's truth (the device's clock; one machine, one clock)."""
    started = {r.command_id: r.started_at for r in (recorded.truth.runs if recorded.truth else [])}
    final = recorded.final
    return sorted(
        (started[a.command_id] - a.requested_at).total_seconds()
        for a in (final.activations if final else [])
        if a.requested_at is not None and a.command_id in started
    )


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile of sorted `values` (0 for none)."""
    if not values:
        return 0.0
    return values[min(len(values) - 1, max(0, round(pct / 100 * len(values)) - 1))]


async def _is_quiet(
    api: httpx.AsyncClient, simulator: httpx.AsyncClient, sites: list[SiteFleet]
) -> bool:
    for site in sites:
        pumps = await pages(api, "/v1/pumps", site.headers)
        if any(p["active_activation_id"] is not None for p in pumps):
            return False
        if await pages(api, "/v1/run-queue", site.headers, status="waiting"):
            return False
    truth = await read_json(simulator, "/truth")
    return all(r["stopped_at"] is not None for r in truth["runs"])


async def _wait_quiet(
    api: httpx.AsyncClient, simulator: httpx.AsyncClient, sites: list[SiteFleet]
) -> bool:
    """No active activation, no waiting run request, every device idle."""
    deadline = time.monotonic() + QUIET_TIMEOUT_S
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if await _is_quiet(api, simulator, sites):
                return True
        await asyncio.sleep(0.5)
    return False


async def _final_read(api: httpx.AsyncClient, fleet: Fleet, quiet: bool) -> history.Final:
    read_at = datetime.now(UTC)
    activations: list[history.Activation] = []
    requests: list[history.RunRequestState] = []
    for site in fleet.sites:
        for pump_id in site.pump_ids:
            for a in await pages(api, f"/v1/pumps/{pump_id}/activations", site.headers):
                reached = a["started_at"] is not None or a["status"] == "failed"
                if a["status"] == "aborted" and not reached:
                    # Aborted while queued, or while starting (the command may be out):
                    # only the audit trail tells.
                    events = await pages(api, f"/v1/activations/{a['id']}/events", site.headers)
                    reached = any(e["status"] == "starting" for e in events)
                activations.append(
                    history.Activation.from_json(
                        {**a, "site_id": site.id, "reached_starting": reached}
                    )
                )
        requests += [
            history.RunRequestState.from_json(r)
            for r in await pages(api, "/v1/run-queue", site.headers)
        ]
    return history.Final(read_at, quiet, activations, requests)


async def _truth(simulator: httpx.AsyncClient) -> history.Truth:
    read_at = datetime.now(UTC)
    truth = await read_json(simulator, "/truth")
    return history.Truth(read_at, [history.TruthRun.from_json(r) for r in truth["runs"]])


async def _drop(database_url: str, name: str) -> None:
    conn = await asyncpg.connect(plain_url(with_database(database_url, "postgres")), timeout=5)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def _report(
    recorded: history.History,
    violations: list[Violation],
    params: SoakParams,
    history_path: Path,
    echo: Echo,
    *,
    brief: bool = False,
) -> None:
    statuses = Counter(str(op.status) for op in recorded.operations)
    codes = Counter(op.code for op in recorded.operations if op.code)
    runs = len(recorded.truth.runs) if recorded.truth else 0
    final = recorded.final
    ended = Counter(a.status for a in final.activations) if final else Counter()
    applied = Counter(f.action for f in recorded.faults)
    lags = start_latencies(recorded)
    latency = (
        f"request to device start p50 {percentile(lags, 50) * 1000:.0f} ms, "
        f"p99 {percentile(lags, 99) * 1000:.0f} ms ({len(lags)} starts)"
    )
    quiet = final.quiescent if final else False
    if brief:
        echo(
            f"seed {params.seed}: {len(recorded.operations)} requests, {runs} runs in truth, "
            f"{sum(applied.values())} faults {dict(applied)}; {latency}; quiet: {quiet}; "
            f"{len(violations)} violations"
        )
    else:
        echo(f"requests by status: {dict(sorted(statuses.items()))}; refusals: {dict(codes)}")
        echo(f"activations by status: {dict(ended)}; runs in truth: {runs}; {latency}")
        echo(f"faults applied: {dict(applied)}; quiet at the end: {quiet}")
        echo(f"history: {history_path}")
    if not violations:
        if not brief:
            echo(f"0 violations (seed {params.seed})")
        return
    echo(f"{len(violations)} violations (seed {params.seed}): {summary(violations)}")
    for violation in violations:
        echo(f"  {violation}")
    echo(f"replay: {replay_command(params)}")


def totals(results: list[SoakResult]) -> str:
    """What several schedules came to, in one paragraph."""
    runs = sum(len(r.history.truth.runs) for r in results if r.history.truth)
    requests = sum(len(r.history.operations) for r in results)
    faults = Counter(f.action for r in results for f in r.history.faults)
    lags = sorted(lag for r in results for lag in start_latencies(r.history))
    failed = [r.seed for r in results if not r.ok]
    violations = sum(len(r.violations) for r in results)
    return (
        f"{len(results)} fault schedules: {requests} requests, {runs} runs in truth, "
        f"{sum(faults.values())} faults applied {dict(sorted(faults.items()))}; request to "
        f"device start p50 {percentile(lags, 50) * 1000:.0f} ms, p99 "
        f"{percentile(lags, 99) * 1000:.0f} ms ({len(lags)} starts); {violations} violations"
        + (f" (seeds {failed})" if failed else "")
    )


def main(
    params: SoakParams,
    *,
    schedules: int = 1,
    parallel: int = 1,
    workdir: Path | None = None,
    database_url: str | None = None,
    keep_database: bool = False,
) -> int:
    """The command's body: 0 without violations, 1 with any. `schedules` > 1 runs seeds
    `params.seed` onwards, `parallel` at a time on one stack."""
    settings = Settings()
    if workdir is None:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        seeds = f"seed-{params.seed}" + (f"-{params.seed + schedules - 1}" if schedules > 1 else "")
        workdir = Path(settings.data_dir).resolve() / "soak" / f"{seeds}-{params.gateway}-{stamp}"
    started = time.monotonic()
    results = asyncio.run(
        soak_many(
            [replace(params, seed=params.seed + i) for i in range(schedules)],
            workdir,
            parallel=parallel,
            database_url=database_url,
            server_url=settings.database_url,
            keep_database=keep_database,
        )
    )
    if schedules > 1:
        print(totals(results))
        print(f"{time.monotonic() - started:.0f} s; histories in {workdir}")
    return 0 if all(r.ok for r in results) else 1
