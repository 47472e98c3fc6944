"""The write path under pressure: batches copied straight in, and re-sent ones going through
ON CONFLICT, racing each other on the same sensors and instants. Whatever the interleaving,
every reading is stored once, counted once (inserted across all answers), rolled up once,
and the first one sent of a repeated instant is what the database holds. Also: the live
event per sensor on the readings channel."""

import asyncio
import contextlib
import json
import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from irrigation.db import create_engine, create_sessionmaker
from irrigation.ingest import store
from irrigation.ingest.rows import encode
from irrigation.ingest.schemas import ReadingIn
from irrigation.settings import Settings
from tests.ingest.helpers import send
from tests.support.api import Headers
from tests.support.factories import make_sensor

STEP = timedelta(seconds=20)


def value_of(sensor: int, slot: int) -> float:
    return float((sensor * 31 + slot * 7) % 100)


async def test_racing_overlapping_batches_store_count_and_roll_up_each_reading_once(
    client: httpx.AsyncClient, admin: Headers, database_url: str
) -> None:
    sensors = [(await make_sensor(client, admin))["id"] for _ in range(3)]
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=4)
    slots = 540  # three hours of one reading every 20 s per sensor
    rng = random.Random(7)

    def item(s: int, j: int, value: float | None = None) -> dict[str, Any]:
        return {
            "sensor_id": sensors[s],
            "ts": (start + j * STEP).isoformat(),
            "value": value_of(s, j) if value is None else value,
        }

    keys = [(s, j) for s in range(3) for j in range(slots)]
    batches = []
    for _ in range(12):
        chosen = rng.sample(keys, len(keys) // 3)  # overlapping, in random order
        batch = [item(s, j) for s, j in chosen]
        # A repeat of an instant within the batch, sent later with another value: it loses.
        batch += [item(s, j, value=100.0 - value_of(s, j)) for s, j in chosen[:20]]
        batches.append(batch)
    before = _deadlock_retries()
    answers = await asyncio.gather(*(send(client, admin, b) for b in batches))
    assert _deadlock_retries() == before  # both paths take their locks in one order

    distinct = {key for batch in batches for key in {(i["sensor_id"], i["ts"]) for i in batch}}
    assert sum(a["inserted"] for a in answers) == len(distinct)
    assert sum(a["inserted"] + a["duplicates"] for a in answers) == sum(map(len, batches))

    conn = await asyncpg.connect(database_url)
    try:
        stored = await conn.fetch(
            "SELECT sensor_id, ts, value FROM sensor_readings WHERE sensor_id = ANY($1)",
            [uuid.UUID(s) for s in sensors],
        )
        by_sql = await conn.fetch(
            "SELECT sensor_id, date_trunc('hour', ts, 'UTC') AS bucket, count(*), sum(value),"
            " min(value), max(value) FROM sensor_readings WHERE sensor_id = ANY($1)"
            " GROUP BY 1, 2 ORDER BY 1, 2",
            [uuid.UUID(s) for s in sensors],
        )
        rolled = await conn.fetch(
            "SELECT sensor_id, bucket, count, sum, min, max FROM reading_rollups_hourly"
            " WHERE sensor_id = ANY($1) ORDER BY 1, 2",
            [uuid.UUID(s) for s in sensors],
        )
        seen = await conn.fetch(
            "SELECT id, last_seen_at FROM sensors WHERE id = ANY($1)",
            [uuid.UUID(s) for s in sensors],
        )
    finally:
        await conn.close()
    assert len(stored) == len(distinct)
    index = {sid: s for s, sid in enumerate(sensors)}
    for row in stored:
        slot = round((row["ts"] - start) / STEP)
        assert row["value"] == value_of(index[str(row["sensor_id"])], slot)
    assert [tuple(r) for r in rolled] == [tuple(r) for r in by_sql]
    newest = {
        sid: max(datetime.fromisoformat(ts) for s, ts in distinct if s == sid) for sid in sensors
    }
    assert {str(r["id"]): r["last_seen_at"] for r in seen} == newest


async def test_each_sensor_of_a_batch_gets_one_live_event_with_its_newest_reading(
    client: httpx.AsyncClient, admin: Headers, redis: aioredis.Redis, redis_namespace: str
) -> None:
    a, b = (await make_sensor(client, admin))["id"], (await make_sensor(client, admin))["id"]
    newest = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    pubsub = redis.pubsub()
    await pubsub.subscribe(f"{redis_namespace}:readings")
    await pubsub.get_message(timeout=1)  # the subscription's confirmation
    try:
        await send(
            client,
            admin,
            [
                {"sensor_id": a, "ts": (newest - timedelta(minutes=m)).isoformat(), "value": m}
                for m in (3, 0, 5)
            ]
            + [{"sensor_id": b, "ts": newest.isoformat(), "value": 42.5}],
        )
        events = []
        while len(events) < 2:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
            assert message is not None, f"only {events} arrived"
            events.append(json.loads(message["data"]))
    finally:
        await pubsub.aclose()
    by_sensor = {e.pop("sensor_id"): e for e in events}
    assert {k: (e["count"], e["value"]) for k, e in by_sensor.items()} == {a: (3, 0), b: (1, 42.5)}
    assert {datetime.fromisoformat(e["ts"]) for e in by_sensor.values()} == {newest}


async def test_concurrent_batches_of_the_same_sensors_never_deadlock(
    client: httpx.AsyncClient, admin: Headers, database_url: str
) -> None:
    """Every batch touches the same sensors' rollup rows and last_seen_at: they must take
    those locks in one order and wait for each other, never deadlock (each deadlock stalls
    a batch for PostgreSQL's deadlock_timeout, then runs it again)."""
    sensors = [(await make_sensor(client, admin))["id"] for _ in range(30)]
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=7)
    before = _deadlock_retries()
    for round_ in range(3):
        batches = [
            [
                {
                    "sensor_id": sid,
                    "ts": (start + (round_ * 400 + b * 20 + j) * STEP).isoformat(),
                    "value": float(j),
                }
                for j in range(20)
                for sid in random.Random(b).sample(sensors, len(sensors))
            ]
            for b in range(16)
        ]
        answers = await asyncio.gather(*(send(client, admin, batch) for batch in batches))
        assert sum(a["inserted"] for a in answers) == 16 * 20 * len(sensors)
    assert _deadlock_retries() == before
    conn = await asyncpg.connect(database_url)
    try:
        rolled = await conn.fetchval(
            "SELECT sum(count) FROM reading_rollups_hourly WHERE sensor_id = ANY($1)",
            [uuid.UUID(s) for s in sensors],
        )
    finally:
        await conn.close()
    assert rolled == 3 * 16 * 20 * len(sensors)


def _deadlock_retries() -> float:
    found = REGISTRY.get_sample_value("irrigation_ingest_deadlock_retries_total", {"source": "api"})
    return found or 0.0


class _Abort(Exception):
    pass


async def test_the_raw_write_path_is_in_the_sessions_transaction_even_as_its_first_statement(
    client: httpx.AsyncClient, admin: Headers, settings: Settings, database_url: str
) -> None:
    """SQLAlchemy's asyncpg dialect sends BEGIN with its own first statement. The write path
    talks to asyncpg directly; when it comes first in a transaction, its COPY must still be
    inside it: rolled back, nothing stays."""
    sensor = uuid.UUID((await make_sensor(client, admin))["id"])
    reading = ReadingIn(sensor_id=sensor, ts=datetime.now(UTC) - timedelta(minutes=1), value=1.0)
    engine = create_engine(settings)
    try:
        async with create_sessionmaker(engine)() as session:
            with contextlib.suppress(_Abort):
                async with session.begin():
                    assert (await store.write_readings(session, encode([reading]))).count == 1
                    raise _Abort
    finally:
        await engine.dispose()
    conn = await asyncpg.connect(database_url)
    try:
        stored = await conn.fetchval(
            "SELECT count(*) FROM sensor_readings WHERE sensor_id = $1", sensor
        )
        rolled = await conn.fetchval(
            "SELECT count(*) FROM reading_rollups_hourly WHERE sensor_id = $1", sensor
        )
    finally:
        await conn.close()
    assert (stored, rolled) == (0, 0)
