"""What the MQTT bridge tests share: a bridge running in the test's event loop, a site with
sensors, and the database's view of what the bridge wrote."""

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx

from irrigation.db import create_engine, create_sessionmaker
from irrigation.ingest.cache import HotCache
from irrigation.ingest.mqtt_bridge import Bridge
from irrigation.mqtt import topics
from irrigation.queue import create_redis
from irrigation.settings import Settings
from irrigation.stack import plain_url
from tests.support.api import Headers
from tests.support.factories import make_sensor
from tests.support.polling import wait_for


@asynccontextmanager
async def running_bridge(settings: Settings, *, connected: bool = True) -> AsyncIterator[Bridge]:
    """A bridge in this event loop, subscribed (unless `connected=False`), stopped at exit."""
    engine = create_engine(settings)
    redis = create_redis(
        settings.effective_redis_url, settings.redis_timeout_s, settings.queue_name
    )
    bridge = Bridge(
        settings,
        create_sessionmaker(engine),
        HotCache.of(settings, redis),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(bridge.run(stop))
    try:
        if connected:
            await wait_for(_connected(bridge, task), timeout_s=20)
        yield bridge
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await redis.aclose()
        await engine.dispose()


def _connected(bridge: Bridge, task: asyncio.Task[None]) -> Any:
    async def check() -> bool:
        if task.done():
            task.result()
        return bridge.connected

    return check


async def site_id(client: httpx.AsyncClient, headers: Headers) -> str:
    response = await client.get("/v1/sites/current", headers=headers)
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


async def moisture_sensor(client: httpx.AsyncClient, headers: Headers) -> str:
    return str((await make_sensor(client, headers))["id"])


def reading(value: float = 40.0, *, seconds_ago: float = 60, **extra: Any) -> dict[str, Any]:
    ts = datetime.now(UTC) - timedelta(seconds=seconds_ago)
    return {"ts": ts.isoformat(), "value": value, **extra}


def single_topic(settings: Settings, site: str, sensor: str) -> str:
    return topics.sensor_reading(settings.mqtt_topic_root, site, sensor)


def batch_topic(settings: Settings, site: str) -> str:
    return topics.readings(settings.mqtt_topic_root, site)


def dumps(body: Any) -> bytes:
    return json.dumps(body).encode()


async def stored_readings(database_url: str, sensor_ids: list[str] | None = None) -> int:
    conn = await asyncpg.connect(plain_url(database_url))
    try:
        if sensor_ids is None:
            count: int = await conn.fetchval("SELECT count(*) FROM sensor_readings")
        else:
            count = await conn.fetchval(
                "SELECT count(*) FROM sensor_readings WHERE sensor_id = ANY($1::uuid[])",
                [uuid.UUID(s) for s in sensor_ids],
            )
    finally:
        await conn.close()
    return count


async def mqtt_jobs(database_url: str) -> dict[str | None, dict[str, int]]:
    """The bridge's jobs' counts added up per site (None: of no site)."""
    conn = await asyncpg.connect(plain_url(database_url))
    try:
        rows = await conn.fetch(
            "SELECT site_id, count(*) AS jobs, sum(total) AS total, sum(inserted) AS inserted,"
            " sum(duplicates) AS duplicates, sum(quarantined) AS quarantined"
            " FROM ingestion_jobs WHERE source = 'mqtt' GROUP BY site_id"
        )
    finally:
        await conn.close()
    return {
        (str(r["site_id"]) if r["site_id"] else None): {
            k: int(r[k]) for k in ("jobs", "total", "inserted", "duplicates", "quarantined")
        }
        for r in rows
    }


async def quarantine(database_url: str) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(plain_url(database_url))
    try:
        rows = await conn.fetch(
            "SELECT q.site_id, q.sensor_id, q.reason, q.detail, q.raw, j.source"
            " FROM quarantined_readings q JOIN ingestion_jobs j ON j.id = q.job_id"
        )
    finally:
        await conn.close()
    return [
        {
            "site_id": str(r["site_id"]) if r["site_id"] else None,
            "sensor_id": str(r["sensor_id"]) if r["sensor_id"] else None,
            "reason": r["reason"],
            "detail": r["detail"],
            "raw": json.loads(r["raw"]),
            "source": r["source"],
        }
        for r in rows
    ]


def mqtt_env(settings: Settings) -> dict[str, str]:
    """The MQTT part of a child process's environment (`irrigation mqtt`)."""
    return {
        "IRRIGATION_MQTT_URL": settings.mqtt_url,
        "IRRIGATION_MQTT_TOPIC_ROOT": settings.mqtt_topic_root,
        "IRRIGATION_MQTT_CLIENT_ID_PREFIX": settings.mqtt_client_id_prefix,
        "IRRIGATION_MQTT_INSTANCE": settings.mqtt_instance,
        "IRRIGATION_MQTT_BRIDGE_PORT": str(settings.mqtt_bridge_port),
        "IRRIGATION_MQTT_PROTOCOL": settings.mqtt_protocol,
    }


async def rolled_up(database_url: str) -> int:
    """Readings counted in the hourly rollups: a reading counted twice shows here."""
    conn = await asyncpg.connect(plain_url(database_url))
    try:
        total: int = await conn.fetchval(
            "SELECT coalesce(sum(count), 0) FROM reading_rollups_hourly"
        )
    finally:
        await conn.close()
    return total


def stream(
    settings: Settings, site: str, sensors: list[str], count: int, *, start_ago_s: float = 86400
) -> list[tuple[str, bytes]]:
    """`count` single-reading messages spread over `sensors`, each reading at its own
    instant (one second apart per sensor), so every one of them is a distinct reading."""
    start = datetime.now(UTC) - timedelta(seconds=start_ago_s)
    messages = []
    for i in range(count):
        sensor = sensors[i % len(sensors)]
        ts = start + timedelta(seconds=i // len(sensors))
        payload = dumps({"ts": ts.isoformat(), "value": float(i % 100)})
        messages.append((single_topic(settings, site, sensor), payload))
    return messages
