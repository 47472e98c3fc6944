"""Ingestion jobs as live events in the site's stream: a batch's job once, as it is created
(riding the hot cache's round trip, even for a batch wholly quarantined); an import's job
on creation, when it starts, after every chunk and when it ends. An import's readings are
history: cached, but no `reading` events."""

import uuid
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from irrigation import feed, queue
from irrigation.common.worker_context import WorkerContext
from irrigation.db import create_engine, create_sessionmaker
from irrigation.gateway import HttpGateway
from irrigation.ingest import import_jobs
from irrigation.ingest.schemas import IngestionJobOut
from irrigation.settings import Settings
from tests.ingest.helpers import NOBODYS_SENSOR, ago, send
from tests.ingest.test_import import NDJSON, line, make_sensors, upload
from tests.support.feed import data_of, events

JOB_FIELDS = set(IngestionJobOut.model_fields)


async def test_a_batchs_job_is_one_event_even_when_every_item_is_quarantined(
    client: httpx.AsyncClient, admin: dict[str, str], settings: Settings, redis: aioredis.Redis
) -> None:
    (sensor,) = await make_sensors(client, admin, 1)
    site = (await client.get(f"/v1/sensors/{sensor}", headers=admin)).json()["site_id"]
    stored = await send(client, admin, [{"sensor_id": sensor, "ts": ago(minutes=1), "value": 5}])
    refused = await send(client, admin, [{"sensor_id": NOBODYS_SENSOR, "ts": ago(), "value": 1}])

    found = await events(redis, settings.redis_namespace, site)
    assert [e["type"] for e in found] == ["reading", "ingest_job", "ingest_job"]
    jobs = [e["data"] for e in found[1:]]
    assert [j["id"] for j in jobs] == [stored["job_id"], refused["job_id"]]
    for job in jobs:
        assert set(job) == JOB_FIELDS
        shown = (await client.get(f"/v1/ingest/jobs/{job['id']}", headers=admin)).json()
        assert job == shown
    assert (jobs[1]["quarantined"], jobs[1]["inserted"]) == (1, 0)


async def test_an_imports_job_is_an_event_at_each_step_and_its_readings_none(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    settings: Settings,
    redis: aioredis.Redis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(import_jobs, "CHUNK_ITEMS", 1_000)
    (sensor,) = await make_sensors(client, admin, 1)
    site = (await client.get(f"/v1/sensors/{sensor}", headers=admin)).json()["site_id"]
    path = tmp_path / "history.ndjson"
    path.write_text("".join(line(sensor, minute, 50) for minute in range(2_500, 0, -1)))
    job = await upload(client, admin, path, NDJSON)

    engine = create_engine(settings)
    redis_arq = queue.create_redis(settings.effective_redis_url, 1.0, settings.queue_name)
    gateway = HttpGateway("http://127.0.0.1:9", timeout_s=0.1, retries=0)
    sessions = create_sessionmaker(engine, feed.create_publisher(settings, redis_arq))
    ctx = {"irrigation": WorkerContext(settings, sessions, gateway, redis_arq)}
    try:
        assert await import_jobs.process_import(ctx, job["id"]) == "completed"
    finally:
        await gateway.aclose()
        await redis_arq.aclose()
        await engine.dispose()

    found = await events(redis, settings.redis_namespace, uuid.UUID(site))
    assert {e["type"] for e in found} == {"ingest_job"}  # no reading: the file is history
    steps = [(d["status"], d["processed"]) for d in (e["data"] for e in found)]
    assert steps == [
        ("queued", 0),
        ("running", 0),
        ("running", 1_000),
        ("running", 2_000),
        ("running", 2_500),
        ("completed", 2_500),
    ]
    assert all(e["data"]["id"] == job["id"] and set(e["data"]) == JOB_FIELDS for e in found)
    shown = (await client.get(f"/v1/ingest/jobs/{job['id']}", headers=admin)).json()
    assert found[-1]["data"] == shown
    latest = (await client.get(f"/v1/sensors/{sensor}/latest", headers=admin)).json()
    assert latest["source"] == "cache"  # cached all the same

    # A live reading newer than the imported ones is the sensor's latest: an event.
    await send(client, admin, [{"sensor_id": sensor, "ts": ago(seconds=1), "value": 7}])
    assert [
        d["value"] for d in await data_of(redis, settings.redis_namespace, site, "reading")
    ] == [7]
