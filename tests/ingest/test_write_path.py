"""The write path under pressure: batches copied straight in, and re-sent ones going through
ON CONFLICT, racing each other on the same sensors and instants. Whatever the interleaving,
every reading is stored once, counted once (inserted across all answers), rolled up once,
and the first one sent of a repeated instant is what the database holds. Also: the live
`reading` events in the site's stream (a sensor's newest reading, throttled)."""

import asyncio
import contextlib
import random
import time
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
from tests.support.feed import data_of, events
from tests.support.polling import wait_for

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
    client: httpx.AsyncClient,
    admin: Headers,
    other_admin: Headers,
    redis: aioredis.Redis,
    redis_namespace: str,
) -> None:
    a, b = await make_sensor(client, admin), await make_sensor(client, admin)
    elsewhere = await make_sensor(client, other_admin)
    newest = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    answer = await send(
        client,
        admin,
        [
            {"sensor_id": a["id"], "ts": (newest - timedelta(minutes=m)).isoformat(), "value": m}
            for m in (3, 0, 5)
        ]
        + [{"sensor_id": b["id"], "ts": newest.isoformat(), "value": 42.5, "quality": 80}],
    )

    site = a["site_id"]
    found = await events(redis, redis_namespace, site)
    assert [e["type"] for e in found] == ["reading", "reading", "ingest_job"]
    assert all(e["site_id"] == site for e in found)
    readings = {e["data"]["sensor_id"]: e["data"] for e in found[:2]}
    assert readings == {
        a["id"]: {
            "sensor_id": a["id"],
            "zone_id": a["zone_id"],
            "value": 0,
            "ts": newest.isoformat(),
            "quality": 100,
        },
        b["id"]: {
            "sensor_id": b["id"],
            "zone_id": b["zone_id"],
            "value": 42.5,
            "ts": newest.isoformat(),
            "quality": 80,
        },
    }
    assert found[2]["data"]["id"] == answer["job_id"]
    assert await events(redis, redis_namespace, elsewhere["site_id"]) == []


async def test_a_sensors_reading_events_are_throttled_to_one_a_second(
    client: httpx.AsyncClient, admin: Headers, redis: aioredis.Redis, redis_namespace: str
) -> None:
    """The first newer reading of a second is published, later ones of that second not."""
    at = datetime.now(UTC) - timedelta(minutes=10)

    def reading(sensor: dict[str, Any], seconds: int) -> dict[str, Any]:
        return {
            "sensor_id": sensor["id"],
            "ts": (at + timedelta(seconds=seconds)).isoformat(),
            "value": float(seconds),
        }

    for _ in range(3):  # a machine so loaded that two requests took a second: again
        sensor = await make_sensor(client, admin)
        began = time.monotonic()
        await send(client, admin, [reading(sensor, 1)])
        await send(client, admin, [reading(sensor, 2)])
        if time.monotonic() - began < 0.9:
            break
    site = sensor["site_id"]
    assert [d["value"] for d in await data_of(redis, redis_namespace, site, "reading")] == [1.0]

    throttle = f"{redis_namespace}:feed:throttle:{sensor['id']}"
    assert 0 < await redis.pttl(throttle) <= 1000
    await wait_for(lambda: _gone(redis, throttle), timeout_s=5, interval_s=0.05)
    await send(client, admin, [reading(sensor, 3)])
    values = [d["value"] for d in await data_of(redis, redis_namespace, site, "reading")]
    assert values == [1.0, 3.0]


async def test_a_reading_older_than_the_sensors_newest_is_no_live_event(
    client: httpx.AsyncClient, admin: Headers, redis: aioredis.Redis, redis_namespace: str
) -> None:
    """A late or re-sent reading is stored and cached, but it is not the sensor's latest
    value: no event says it is."""
    sensor = await make_sensor(client, admin)
    throttle = f"{redis_namespace}:feed:throttle:{sensor['id']}"
    newest = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    sent = [(newest, 10.0), (newest - timedelta(minutes=1), 9.0), (newest, 11.0)]
    sent.append((newest + timedelta(seconds=1), 12.0))
    for ts, value in sent:  # late, then re-sent, then newer
        await wait_for(lambda: _gone(redis, throttle), timeout_s=5, interval_s=0.05)
        await send(
            client, admin, [{"sensor_id": sensor["id"], "ts": ts.isoformat(), "value": value}]
        )
    published = await data_of(redis, redis_namespace, sensor["site_id"], "reading")
    assert [(d["ts"], d["value"]) for d in published] == [
        (newest.isoformat(), 10.0),
        ((newest + timedelta(seconds=1)).isoformat(), 12.0),
    ]


async def _gone(redis: aioredis.Redis, key: str) -> bool:
    return not await redis.exists(key)


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
