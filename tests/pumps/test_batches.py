"""Starts and deadline stops in batches (pumps/starts.py, pumps/stops.py), called in-process
as arq calls them, against a real database, Redis and device simulator: one job drives
many runs, each started (and stopped) once in the simulator's truth; a batch is fair
across sites; a worker killed mid-batch leaves nothing started twice and nothing stuck."""

import asyncio
import uuid
from collections import Counter
from dataclasses import replace
from datetime import timedelta
from typing import Any

import asyncpg
import httpx

from irrigation import queue
from irrigation.common import clock
from irrigation.common.worker_context import WorkerContext
from irrigation.gateway import Ack, Command, DeviceAddress, Gateway
from irrigation.pumps import jobs
from irrigation.settings import Settings
from irrigation.stack import plain_url
from tests.support.api import bearer
from tests.support.factories import MakeKey, activate, make_pump
from tests.support.polling import wait_for
from tests.support.simulator import runs

Ctx = dict[str, WorkerContext]


def _with(ctx: Ctx, **changes: Any) -> Ctx:
    jc = ctx["irrigation"]
    return {"irrigation": replace(jc, settings=jc.settings.model_copy(update=changes))}


async def _admitted(
    client: httpx.AsyncClient, headers: dict[str, str], count: int, duration_s: int = 2
) -> list[dict[str, Any]]:
    """`count` runs admitted (queued, no worker running) on pumps of their own."""
    admitted = []
    for _ in range(count):
        pump = await make_pump(client, headers)
        answer = await activate(client, headers, pump["id"], duration_s)
        assert answer.status_code == 202, answer.text
        admitted.append({**answer.json(), "hardware_id": pump["hardware_id"]})
    return admitted


async def _statuses(database_url: str, runs_: list[dict[str, Any]]) -> dict[str, str]:
    conn = await asyncpg.connect(plain_url(database_url))
    try:
        rows = await conn.fetch(
            "SELECT id::text, status FROM pump_activations WHERE id = ANY($1::uuid[])",
            [r["id"] for r in runs_],
        )
    finally:
        await conn.close()
    return {r["id"]: r["status"] for r in rows}


async def _starts_in_truth(device: httpx.AsyncClient, runs_: list[dict[str, Any]]) -> Counter[str]:
    """How many times the simulator started each of these runs' commands."""
    ours = {r["command_id"] for r in runs_}
    return Counter(r["command_id"] for r in await runs(device) if r["command_id"] in ours)


async def test_one_start_job_starts_a_batch_across_sites_each_once_in_truth(
    client: httpx.AsyncClient,
    make_key: MakeKey,
    job_ctx: Ctx,
    device: httpx.AsyncClient,
    database_url: str,
    settings: Settings,
) -> None:
    sites = [bearer(await make_key("admin", site=f"batch-{i}")) for i in range(3)]
    admitted = [run for headers in sites for run in await _admitted(client, headers, 4)]
    redis = job_ctx["irrigation"].redis
    pumps_queue = queue.job_queue_key(redis, queue.START_ACTIVATION)
    assert all([await redis.zscore(pumps_queue, r["id"]) for r in admitted])

    assert await jobs.start_activation(job_ctx, admitted[0]["id"]) == "running"

    assert set((await _statuses(database_url, admitted)).values()) == {"running"}
    assert await _starts_in_truth(device, admitted) == Counter(
        {r["command_id"]: 1 for r in admitted}
    )
    # The batch took the others' start jobs off the queue; arq may still deliver one (at
    # least once): it starts nothing.
    assert not any([await redis.zscore(pumps_queue, r["id"]) for r in admitted[1:]])
    again = await asyncio.gather(*(jobs.start_activation(job_ctx, r["id"]) for r in admitted))
    assert again == ["skipped: running"] * len(admitted)
    assert await _starts_in_truth(device, admitted) == Counter(
        {r["command_id"]: 1 for r in admitted}
    )

    # Their deadline stops fall due together: one job stops them all, each once.
    due = {r["id"]: 0 for r in admitted}
    stop_queue = queue.job_queue_key(redis, queue.STOP_ACTIVATION)
    for r in admitted:
        assert await redis.zscore(stop_queue, f"stop:deadline:{r['id']}") is not None
    await asyncio.sleep(2.2)  # the runs' 2 s
    first = await jobs.stop_activation(job_ctx, admitted[-1]["id"], "deadline")
    assert first == "completed"
    assert set((await _statuses(database_url, admitted)).values()) == {"completed"}
    again = await asyncio.gather(
        *(jobs.stop_activation(job_ctx, r["id"], "deadline") for r in admitted)
    )
    assert again == ["skipped: completed"] * len(due)
    truth = [
        r for r in await runs(device) if r["command_id"] in {a["command_id"] for a in admitted}
    ]
    assert len(truth) == len(admitted)
    assert all(r["stopped_at"] is not None for r in truth)


async def test_start_jobs_of_one_poll_share_one_batch_and_the_others_do_nothing(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    job_ctx: Ctx,
    device: httpx.AsyncClient,
    database_url: str,
) -> None:
    admitted = await _admitted(client, admin, 6)
    # As arq starts the jobs one poll read: all at once.
    answers = await asyncio.gather(*(jobs.start_activation(job_ctx, r["id"]) for r in admitted))
    assert answers == ["running"] + ["batched"] * (len(admitted) - 1)
    assert set((await _statuses(database_url, admitted)).values()) == {"running"}
    assert await _starts_in_truth(device, admitted) == Counter(
        {r["command_id"]: 1 for r in admitted}
    )


async def test_one_sites_queue_does_not_hold_another_sites_start_beyond_one_batch(
    client: httpx.AsyncClient,
    make_key: MakeKey,
    job_ctx: Ctx,
    device: httpx.AsyncClient,
    database_url: str,
) -> None:
    busy = bearer(await make_key("admin", site="fair-busy"))
    quiet = bearer(await make_key("admin", site="fair-quiet"))
    crowd = await _admitted(client, busy, 24, duration_s=30)
    late = (await _admitted(client, quiet, 1, duration_s=30))[0]  # asked for last
    batch = 6
    ctx = _with(job_ctx, pump_batch_size=batch)

    # The busy site's oldest run's job: the batch takes the quiet site's run beside the
    # busy site's next ones, though 23 of the busy site's were queued before it.
    assert await jobs.start_activation(ctx, crowd[0]["id"]) == "running"

    statuses = await _statuses(database_url, [*crowd, late])
    assert statuses[late["id"]] == "running"
    assert Counter(statuses.values()) == Counter({"running": batch, "queued": 25 - batch})
    # The busy site's are taken oldest first.
    assert [statuses[r["id"]] for r in crowd[: batch - 1]] == ["running"] * (batch - 1)
    assert (await _starts_in_truth(device, [late]))[late["command_id"]] == 1


class _Crash:
    """The real gateway until `armed`: then each start reaches the device, and the worker
    dies before the answer is read (its task is never resumed)."""

    def __init__(self, real: Gateway) -> None:
        self.real = real
        self.sent = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    @property
    def call_budget_s(self) -> float:
        return self.real.call_budget_s

    async def send(self, device: DeviceAddress, command: Command) -> Ack:
        await self.real.send(device, command)
        self.sent += 1
        await asyncio.Event().wait()  # the worker is gone
        raise AssertionError("unreachable")


async def test_a_worker_killed_mid_batch_starts_nothing_twice_and_leaves_nothing_stuck(
    client: httpx.AsyncClient,
    make_key: MakeKey,
    job_ctx: Ctx,
    device: httpx.AsyncClient,
    database_url: str,
) -> None:
    sites = [bearer(await make_key("admin", site=f"crash-{i}")) for i in range(2)]
    admitted = [run for headers in sites for run in await _admitted(client, headers, 4, 20)]
    crash = _Crash(job_ctx["irrigation"].gateway)
    dying: Ctx = {"irrigation": replace(job_ctx["irrigation"], gateway=crash)}  # type: ignore[arg-type]

    batch = asyncio.create_task(jobs.start_activation(dying, admitted[0]["id"]))

    async def all_sent() -> bool:
        return crash.sent == len(admitted)

    await wait_for(all_sent, timeout_s=10)
    batch.cancel()  # killed: nothing after the sends ran
    assert set((await _statuses(database_url, admitted)).values()) == {"starting"}
    assert await _starts_in_truth(device, admitted) == Counter(
        {r["command_id"]: 1 for r in admitted}
    )

    # arq runs the killed job again, and the relay may enqueue the others: none starts.
    again = await asyncio.gather(*(jobs.start_activation(job_ctx, r["id"]) for r in admitted))
    assert again == ["skipped: starting"] * len(admitted)

    # Later than a start and its confirmation can take: the watchdog stops every one.
    clock.move(timedelta(seconds=60))
    assert await jobs.watchdog(job_ctx) == len(admitted)
    redis = job_ctx["irrigation"].redis
    stop_queue = queue.job_queue_key(redis, queue.STOP_ACTIVATION)
    for r in admitted:
        assert await redis.zscore(stop_queue, f"stop:watchdog:{r['id']}") is not None
    stopped = await asyncio.gather(
        *(jobs.stop_activation(job_ctx, r["id"], "watchdog") for r in admitted)
    )
    assert stopped == ["aborted"] * len(admitted)

    truth = await runs(device)
    ours = [r for r in truth if r["command_id"] in {a["command_id"] for a in admitted}]
    assert Counter(r["command_id"] for r in ours) == Counter({r["command_id"]: 1 for r in admitted})
    assert all(r["stopped_at"] is not None for r in ours)
    conn = await asyncpg.connect(plain_url(database_url))
    try:
        busy = await conn.fetchval(
            "SELECT count(*) FROM pumps WHERE active_activation_id = ANY($1::uuid[])",
            [uuid.UUID(r["id"]) for r in admitted],
        )
    finally:
        await conn.close()
    assert busy == 0
