"""The worker's pump jobs called in-process, as arq calls them, against a real database,
Redis and device simulator."""

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import datetime
from typing import Any

import asyncpg
import httpx
import pytest

from irrigation import queue
from irrigation.common.worker_context import WorkerContext
from irrigation.pumps import jobs, reconcile
from irrigation.settings import Settings
from irrigation.stack import plain_url
from tests.support.factories import activate, make_pump
from tests.support.polling import wait_for
from tests.support.simulator import runs, start_run, state

Ctx = dict[str, WorkerContext]


@pytest.fixture
async def blackhole() -> AsyncIterator[tuple[int, list[asyncio.StreamReader]]]:
    """A TCP port that accepts connections and never answers (a Redis gone mute); yields
    the port and the connections it took."""
    taken: list[asyncio.StreamReader] = []
    writers: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        taken.append(reader)
        writers.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1], taken
    for writer in writers:
        writer.close()
    server.close()
    await server.wait_closed()


async def test_the_outbox_relay_holds_no_row_lock_while_it_waits_on_redis(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    settings: Settings,
    job_ctx: Ctx,
    database_url: str,
    blackhole: tuple[int, list[asyncio.StreamReader]],
) -> None:
    pump = await make_pump(client, admin, "relay-1")
    run = (await activate(client, admin, pump["id"], 2)).json()
    port, taken = blackhole
    mute = queue.create_redis(f"redis://127.0.0.1:{port}/0", 2.0, settings.queue_name)
    now_due = settings.model_copy(update={"outbox_relay_after_s": 0})
    ctx: dict[str, Any] = {
        "irrigation": replace(job_ctx["irrigation"], settings=now_due, redis=mute)
    }
    conn = await asyncpg.connect(plain_url(database_url))
    try:
        relaying = asyncio.create_task(jobs.relay_outbox(ctx))

        async def waiting_on_redis() -> bool:
            await asyncio.sleep(0.02)
            return bool(taken)

        while not await waiting_on_redis():
            assert not relaying.done(), relaying
        # The relay is inside its Redis call: the claimed row is not locked.
        async with conn.transaction():
            row = await conn.fetchrow(
                "SELECT activation_id, attempts, claimed_at FROM outbox FOR UPDATE NOWAIT"
            )
        assert str(row["activation_id"]) == run["id"]
        assert row["attempts"] == 1
        assert row["claimed_at"] is not None
        assert await relaying == 1  # claimed (the enqueue itself failed: Redis is mute)

        # A claim keeps the row from the next relay until the relay delay has passed again.
        await conn.execute("UPDATE outbox SET created_at = now() - interval '1 hour'")
        patient = settings.model_copy(update={"outbox_relay_after_s": 60})
        relay = {"irrigation": replace(job_ctx["irrigation"], settings=patient)}
        assert await jobs.relay_outbox(relay) == 0
        await conn.execute("UPDATE outbox SET claimed_at = now() - interval '1 hour'")
        assert await jobs.relay_outbox(relay) == 1
        assert await conn.fetchval("SELECT attempts FROM outbox") == 2
    finally:
        await conn.close()
        await mute.aclose()


async def test_a_run_queued_before_a_halt_starts_above_it(
    client: httpx.AsyncClient, admin: dict[str, str], job_ctx: Ctx, device: httpx.AsyncClient
) -> None:
    pump = await make_pump(client, admin, "queued-1")
    site = pump["site_id"]
    run = (await activate(client, admin, pump["id"], 2)).json()  # admitted, not started
    # Meanwhile the device runs something of nobody's; the reconciliation halts it.
    await start_run(device, site, "queued-1", "rogue", 30, sequence=7)
    assert await reconcile.reconcile_devices(job_ctx) == 1
    fence = (await state(device, site, "queued-1"))["sequence"]
    assert fence > run["sequence"]

    assert await jobs.start_activation(job_ctx, run["id"]) == "running"

    started = (await client.get(f"/v1/activations/{run['id']}", headers=admin)).json()
    assert started["sequence"] > fence
    assert [r["command_id"] for r in await runs(device, "queued-1")] == ["rogue", run["command_id"]]


async def test_a_pump_counter_behind_its_device_fails_one_start_then_catches_up(
    client: httpx.AsyncClient, admin: dict[str, str], job_ctx: Ctx, device: httpx.AsyncClient
) -> None:
    pump = await make_pump(client, admin, "reused-1", cooldown_s=1)
    site = pump["site_id"]
    # The device has seen higher numbers (a pump deleted since, a restored database).
    await start_run(device, site, "reused-1", "long-ago", 0.05, sequence=50)
    first = (await activate(client, admin, pump["id"], 2)).json()

    assert await jobs.start_activation(job_ctx, first["id"]) == "failed"

    done = (await client.get(f"/v1/activations/{first['id']}", headers=admin)).json()
    assert done["status"] == "failed"
    assert done["error"] == "stale_sequence"  # the device's own words are logged only
    events = await client.get(f"/v1/activations/{first['id']}/events", headers=admin)
    assert "stale_sequence" in events.text
    assert "not above" not in events.text
    shown = (await client.get(f"/v1/pumps/{pump['id']}", headers=admin)).json()
    assert shown["fault"] is None  # the device did nothing: a bookkeeping refusal
    assert [r["command_id"] for r in await runs(device, "reused-1")] == ["long-ago"]

    async def rested() -> bool:
        return (await activate(client, admin, pump["id"], 2)).status_code == 202

    await wait_for(rested, timeout_s=10)
    listed = (await client.get(f"/v1/pumps/{pump['id']}/activations", headers=admin)).json()
    second = listed["items"][0]
    assert second["sequence"] > 50
    assert await jobs.start_activation(job_ctx, second["id"]) == "running"


async def test_a_late_deadline_stop_records_when_the_device_stopped_by_itself(
    client: httpx.AsyncClient, admin: dict[str, str], job_ctx: Ctx, device: httpx.AsyncClient
) -> None:
    pump = await make_pump(client, admin, "late-1")
    run = (await activate(client, admin, pump["id"], 1)).json()
    assert await jobs.start_activation(job_ctx, run["id"]) == "running"

    async def ended_by_itself() -> bool:
        (ran,) = await runs(device, "late-1")
        return ran["stopped_at"] is not None

    await wait_for(ended_by_itself, timeout_s=5)
    # The stop job runs late (a busy worker): well after the device's own auto-off.
    await asyncio.sleep(1.5)
    assert await jobs.stop_activation(job_ctx, run["id"], "deadline") == "completed"

    (ran,) = await runs(device, "late-1")
    done = (await client.get(f"/v1/activations/{run['id']}", headers=admin)).json()
    assert done["status"] == "completed"
    device_stop = datetime.fromisoformat(ran["stopped_at"])
    recorded = datetime.fromisoformat(done["stopped_at"])
    assert abs((recorded - device_stop).total_seconds()) < 0.05, (done, ran)
