"""The worker's pump jobs called in-process, as arq calls them, against a real database,
Redis and device simulator."""

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import asyncpg
import httpx
import pytest

from irrigation import queue
from irrigation.common.worker_context import WorkerContext
from irrigation.pumps import jobs
from irrigation.settings import Settings
from irrigation.stack import plain_url
from tests.support.factories import activate, make_pump

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
