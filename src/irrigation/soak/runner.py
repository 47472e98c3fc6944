"""`irrigation soak`: the whole stack as separate processes, a seeded storm of operator and
automation requests, a seeded fault schedule, then quiet, the final read, the truth, the
history file and the checker's verdict. A violation prints the seed that replays it."""

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import httpx

from irrigation.db import create_engine, create_sessionmaker
from irrigation.settings import Settings, to_asyncpg_url
from irrigation.soak import history
from irrigation.soak.checker import Tolerances, Violation, check, summary
from irrigation.soak.faults import Injector
from irrigation.soak.fleet import Fleet, build_fleet
from irrigation.soak.operations import pages, read_json, run_client, wind_down
from irrigation.soak.plan import Plan, SoakParams, make_plan
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
    if params.sites != defaults.sites:
        words.append(f"--sites {params.sites}")
    if not params.shared_hardware_ids:
        words.append("--no-shared-hardware-ids")
    faults = [*params.device_faults, *params.process_faults]
    if faults != [*defaults.device_faults, *defaults.process_faults]:
        words.append(f"--faults {','.join(faults) or 'none'}")
    return " ".join(words)


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
    run = uuid.uuid4().hex[:8]
    if redis_url is not None:
        kept = tuple(f for f in params.process_faults if f != "redis_restart")
        params = replace(params, process_faults=kept)
    plan = make_plan(params)
    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    history_path = workdir / "history.jsonl"
    created: str | None = None
    if database_url is None:
        created = f"irrigation_soak_{params.seed}_{run}"
        database_url = with_database(server_url or LOCAL_POSTGRES, created)
    database_url = to_asyncpg_url(database_url)
    await ensure_database(database_url)
    stack = SoakStack(
        workdir,
        database_url,
        redis_namespace or f"soak-{params.seed}-{run}",
        redis_url=redis_url,
        env=service_env,
    )
    echo(
        f"soak seed {params.seed}: {len(plan.ops)} requests, {len(plan.faults)} faults over "
        f"{plan.window_s:.0f} s; logs and history in {workdir}"
    )
    try:
        with history_path.open("w") as out:
            writer = history.Writer(out)
            recorded = await _run(params, plan, stack, database_url, writer, run)
    finally:
        await stack.stop()
        if created is not None and not keep_database:
            await _drop(database_url, created)
    violations = check(recorded, tolerances)
    _report(recorded, violations, params, history_path, echo)
    return SoakResult(params.seed, history_path, violations, recorded)


async def _run(
    params: SoakParams,
    plan: Plan,
    stack: SoakStack,
    database_url: str,
    writer: history.Writer,
    run: str,
) -> history.History:
    header = history.header(
        params.seed, {**params.to_json(), "plan": plan.to_json()}, datetime.now(UTC)
    )
    writer.write({"type": "header", **header})
    await stack.migrate()
    await stack.start()
    limits = httpx.Limits(max_connections=100)
    timeout = httpx.Timeout(10, connect=3)
    async with (
        httpx.AsyncClient(base_url=stack.api_url, timeout=timeout, limits=limits) as api,
        httpx.AsyncClient(base_url=stack.simulator_url, timeout=timeout) as simulator,
    ):
        # Keys are made as the CLI makes them; the engine goes before the faults begin.
        engine = create_engine(Settings(database_url=database_url, db_pool_size=1))
        try:
            fleet = await build_fleet(
                api,
                create_sessionmaker(engine),
                plan,
                f"soak {params.seed} {run}",
                schedules=params.schedules,
            )
        finally:
            await engine.dispose()
        writer.write(fleet.config.to_json())
        operations: list[history.Operation] = []
        faults: list[history.FaultEvent] = []

        def record_op(op: history.Operation) -> None:
            operations.append(op)
            writer.write(op.to_json())

        def record_fault(fault: history.FaultEvent) -> None:
            faults.append(fault)
            writer.write(fault.to_json())

        admin = plain_url(with_database(database_url, "postgres"))
        database = urlsplit(plain_url(database_url)).path.lstrip("/")
        injector = Injector(stack, simulator, fleet, admin, database, record_fault)
        started = time.monotonic()
        clients = [
            run_client(
                api, fleet, params, [o for o in plan.ops if o.client == c], started, record_op
            )
            for c in range(params.clients)
        ]
        injecting = asyncio.create_task(injector.run(plan.faults, started))
        try:
            await asyncio.gather(*clients)
        finally:
            # Faults planned past the last request are not applied: the soak ends.
            injecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await injecting
            await injector.lift_all()
        await wind_down(api, fleet, len(plan.ops), record_op)
        quiet = await _wait_quiet(api, simulator, fleet)
        final = await _final_read(api, fleet, quiet)
        writer.write(final.to_json())
        truth = await _truth(simulator)
        writer.write(truth.to_json())
    return history.History(header, fleet.config, operations, faults, final, truth)


async def _is_quiet(api: httpx.AsyncClient, simulator: httpx.AsyncClient, fleet: Fleet) -> bool:
    for site in fleet.sites:
        pumps = await pages(api, "/v1/pumps", site.headers)
        if any(p["active_activation_id"] is not None for p in pumps):
            return False
        if await pages(api, "/v1/run-queue", site.headers, status="waiting"):
            return False
    truth = await read_json(simulator, "/truth")
    return all(r["stopped_at"] is not None for r in truth["runs"])


async def _wait_quiet(api: httpx.AsyncClient, simulator: httpx.AsyncClient, fleet: Fleet) -> bool:
    """No active activation, no waiting run request, every device idle."""
    deadline = time.monotonic() + QUIET_TIMEOUT_S
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if await _is_quiet(api, simulator, fleet):
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
) -> None:
    statuses = Counter(str(op.status) for op in recorded.operations)
    codes = Counter(op.code for op in recorded.operations if op.code)
    runs = len(recorded.truth.runs) if recorded.truth else 0
    final = recorded.final
    ended = Counter(a.status for a in final.activations) if final else Counter()
    applied = Counter(f.action for f in recorded.faults)
    echo(f"requests by status: {dict(sorted(statuses.items()))}; refusals: {dict(codes)}")
    echo(f"activations by status: {dict(ended)}; runs in truth: {runs}")
    echo(
        f"faults applied: {dict(applied)}; quiet at the end: {final.quiescent if final else False}"
    )
    echo(f"history: {history_path}")
    if not violations:
        echo(f"0 violations (seed {params.seed})")
        return
    echo(f"{len(violations)} violations: {summary(violations)}")
    for violation in violations:
        echo(f"  {violation}")
    echo(f"replay: {replay_command(params)}")


def main(
    params: SoakParams,
    *,
    workdir: Path | None = None,
    database_url: str | None = None,
    keep_database: bool = False,
) -> int:
    """The command's body: 0 without violations, 1 with any."""
    settings = Settings()
    if workdir is None:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        workdir = Path(settings.data_dir).resolve() / "soak" / f"seed-{params.seed}-{stamp}"
    result = asyncio.run(
        soak(
            params,
            workdir,
            database_url=database_url,
            server_url=settings.database_url,
            keep_database=keep_database,
        )
    )
    return 0 if result.ok else 1
