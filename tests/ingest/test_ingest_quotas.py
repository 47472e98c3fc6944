"""Quotas of the ingestion side: imports at once (429 with Retry-After), the upload size of a
site (413 naming the quota), the free-disk guard (507), the pending quarantine (bad items
beyond it are refused and counted, not kept) and the retention of reviewed items."""

import asyncio
import json
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from irrigation import queue
from irrigation.app import create_app
from irrigation.common.clock import utcnow
from irrigation.common.worker_context import WorkerContext
from irrigation.db import create_engine, create_sessionmaker
from irrigation.gateway import HttpGateway
from irrigation.ingest import import_jobs, review_retention
from irrigation.settings import Settings
from irrigation.stack import plain_url
from tests.ingest.helpers import NOBODYS_SENSOR, ago, send
from tests.support.api import Headers
from tests.support.factories import make_sensor
from tests.support.problems import assert_problem

QUOTAS = "/v1/sites/current/quotas"
NDJSON = {"Content-Type": "application/x-ndjson"}


async def set_quotas(client: httpx.AsyncClient, headers: Headers, **values: int) -> None:
    response = await client.patch(QUOTAS, json=values, headers=headers)
    assert response.status_code == 200, response.text


def uploads(settings: Settings) -> list[Path]:
    folder = Path(settings.data_dir) / import_jobs.IMPORTS_DIR
    return sorted(folder.iterdir()) if folder.exists() else []


def reading(sensor_id: str, value: float, minutes_ago: float = 1) -> dict[str, Any]:
    return {"sensor_id": sensor_id, "ts": ago(minutes=minutes_ago), "value": value}


def ndjson(items: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(item) + "\n" for item in items).encode()


async def import_file(
    client: httpx.AsyncClient, headers: Headers, content: bytes
) -> httpx.Response:
    return await client.post("/v1/ingest/jobs", content=content, headers={**headers, **NDJSON})


async def fetch(settings: Settings, query: str, *args: Any) -> Any:
    conn = await asyncpg.connect(plain_url(settings.database_url or ""))
    try:
        return await conn.fetchval(query, *args)
    finally:
        await conn.close()


# Imports -------------------------------------------------------------------------------


async def test_one_import_more_than_the_quota_is_429_with_retry_after_and_leaves_no_file(
    client: httpx.AsyncClient, admin: Headers, other_admin: Headers, settings: Settings
) -> None:
    await set_quotas(client, admin, max_concurrent_imports=1)
    body = ndjson([reading(NOBODYS_SENSOR, 1)])
    first = await import_file(client, admin, body)
    assert first.status_code == 202, first.text  # no worker here: it stays queued

    refused = await import_file(client, admin, body)
    problem = assert_problem(refused, 429, "quota_exceeded")
    assert (problem["quota"], problem["limit"]) == ("max_concurrent_imports", 1)
    assert int(refused.headers["retry-after"]) > 0
    assert len(uploads(settings)) == 1, "the refused upload left no file"
    jobs = (await client.get("/v1/ingest/jobs", headers=admin)).json()["items"]
    assert [j["id"] for j in jobs] == [first.json()["id"]]
    # Another site imports as usual.
    assert (await import_file(client, other_admin, body)).status_code == 202


async def test_racing_uploads_never_queue_more_imports_than_the_quota(
    client: httpx.AsyncClient, admin: Headers, settings: Settings
) -> None:
    await set_quotas(client, admin, max_concurrent_imports=2)
    body = ndjson([reading(NOBODYS_SENSOR, i) for i in range(50)])
    answers = await asyncio.gather(*(import_file(client, admin, body) for _ in range(6)))
    assert sorted(r.status_code for r in answers) == [202, 202, 429, 429, 429, 429]
    assert len(uploads(settings)) == 2
    assert await fetch(settings, "SELECT count(*) FROM ingestion_jobs") == 2


async def test_a_file_above_the_sites_upload_quota_is_413_naming_it(
    client: httpx.AsyncClient, admin: Headers, other_admin: Headers, settings: Settings
) -> None:
    await set_quotas(client, admin, max_upload_bytes=1024)
    body = ndjson([reading(NOBODYS_SENSOR, i) for i in range(40)])  # ~3.6 KB
    assert len(body) > 1024
    refused = await import_file(client, admin, body)
    problem = assert_problem(refused, 413, "payload_too_large")
    assert (problem["quota"], problem["limit"]) == ("max_upload_bytes", 1024)
    assert uploads(settings) == []
    assert (await import_file(client, other_admin, body)).status_code == 202


async def test_an_upload_while_the_disk_is_nearly_full_is_507(
    settings: Settings, admin: Headers
) -> None:
    # More free space than any disk has: the guard refuses.
    application = create_app(settings.model_copy(update={"min_free_disk_bytes": 1 << 62}))
    transport = httpx.ASGITransport(app=application)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            refused = await import_file(c, admin, ndjson([reading(NOBODYS_SENSOR, 1)]))
            jobs = (await c.get("/v1/ingest/jobs", headers=admin)).json()["items"]
    finally:
        await application.state.redis.aclose()
        await application.state.engine.dispose()
    assert_problem(refused, 507, "insufficient_storage")
    assert "retry-after" in refused.headers
    assert uploads(settings) == []
    assert jobs == []


# The pending quarantine ----------------------------------------------------------------


async def pending(client: httpx.AsyncClient, headers: Headers) -> list[dict[str, Any]]:
    response = await client.get(
        "/v1/quarantine", params={"review_status": "pending", "limit": 500}, headers=headers
    )
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def test_bad_items_beyond_the_pending_quarantine_quota_are_refused_and_counted(
    client: httpx.AsyncClient, admin: Headers, other_admin: Headers
) -> None:
    await set_quotas(client, admin, max_pending_quarantine=3)
    sid = (await make_sensor(client, admin))["id"]
    batch = [reading(sid, 150 + i) for i in range(5)] + [reading(sid, 20)]
    answer = await send(client, admin, batch)
    assert (answer["inserted"], answer["quarantined"], answer["quarantine_not_kept"]) == (1, 5, 2)
    assert [q["index"] for q in answer["quarantine"]] == [0, 1, 2, 3, 4]
    kept = await pending(client, admin)
    assert sorted(item["item_index"] for item in kept) == [0, 1, 2]
    job = (await client.get(f"/v1/ingest/jobs/{answer['job_id']}", headers=admin)).json()
    assert (job["quarantined"], job["quarantine_not_kept"]) == (5, 2)

    # Full: nothing more is kept, good readings still go in.
    full = await send(client, admin, [reading(sid, 200, 2), reading(sid, 30, 2)])
    assert (full["inserted"], full["quarantined"], full["quarantine_not_kept"]) == (1, 1, 1)

    # A review makes room for one.
    rejected = await client.post(f"/v1/quarantine/{kept[0]['id']}/reject", headers=admin)
    assert rejected.status_code == 200, rejected.text
    again = await send(client, admin, [reading(sid, 300, 3), reading(sid, 301, 3)])
    assert (again["quarantined"], again["quarantine_not_kept"]) == (2, 1)
    assert len(await pending(client, admin)) == 3

    # Another site's quarantine is its own.
    theirs = (await make_sensor(client, other_admin))["id"]
    answer = await send(client, other_admin, [reading(theirs, 150 + i) for i in range(5)])
    assert answer["quarantine_not_kept"] == 0


async def test_an_import_counts_the_bad_lines_it_could_not_keep(
    client: httpx.AsyncClient, admin: Headers, settings: Settings
) -> None:
    await set_quotas(client, admin, max_pending_quarantine=2)
    sid = (await make_sensor(client, admin))["id"]
    lines = [reading(sid, 150 + i, minutes_ago=i + 1) for i in range(4)]
    lines += [reading(sid, 20, minutes_ago=10)]
    job = (await import_file(client, admin, ndjson(lines))).json()

    engine = create_engine(settings)
    redis = queue.create_redis(settings.effective_redis_url, 2.0, settings.queue_name)
    gateway = HttpGateway("http://127.0.0.1:9", timeout_s=0.1, retries=0)
    context = WorkerContext(settings, create_sessionmaker(engine), gateway, redis)
    try:
        assert await import_jobs.process_import({"irrigation": context}, job["id"]) == "completed"
    finally:
        await gateway.aclose()
        await redis.aclose()
        await engine.dispose()
    done = (await client.get(f"/v1/ingest/jobs/{job['id']}", headers=admin)).json()
    assert (done["inserted"], done["quarantined"], done["quarantine_not_kept"]) == (1, 4, 2)
    assert len(await pending(client, admin)) == 2


# Retention of reviewed items -----------------------------------------------------------


async def test_reviewed_items_past_their_retention_are_deleted_pending_ones_kept(
    client: httpx.AsyncClient, admin: Headers, settings: Settings
) -> None:
    sid = (await make_sensor(client, admin))["id"]
    await send(client, admin, [reading(sid, 150 + i) for i in range(4)])
    items = await pending(client, admin)
    for item in items[:3]:
        response = await client.post(f"/v1/quarantine/{item['id']}/reject", headers=admin)
        assert response.status_code == 200, response.text
    old = utcnow() - timedelta(days=settings.quarantine_reviewed_retention_days + 1)
    ids = [uuid.UUID(item["id"]) for item in items[:2]]
    await fetch(
        settings, "UPDATE quarantined_readings SET reviewed_at = $1 WHERE id = ANY($2)", old, ids
    )

    engine = create_engine(settings)
    # The retention needs the settings and the database only.
    context = WorkerContext(settings, create_sessionmaker(engine), None, None)  # type: ignore[arg-type]
    try:
        assert await review_retention.purge_reviewed_quarantine({"irrigation": context}) == 2
        assert await review_retention.purge_reviewed_quarantine({"irrigation": context}) == 0
    finally:
        await engine.dispose()
    left = await fetch(settings, "SELECT array_agg(id) FROM quarantined_readings")
    assert sorted(left) == sorted(uuid.UUID(item["id"]) for item in items[2:])


@pytest.mark.parametrize("chunk", [1, 5_000])
async def test_the_retention_deletes_in_chunks_oldest_review_first(
    client: httpx.AsyncClient, admin: Headers, settings: Settings, chunk: int
) -> None:
    sid = (await make_sensor(client, admin))["id"]
    await send(client, admin, [reading(sid, 150 + i) for i in range(3)])
    items = await pending(client, admin)
    for days, item in zip((30, 20, 10), items, strict=True):
        await fetch(
            settings,
            "UPDATE quarantined_readings SET review_status = 'approved', reviewed_at = $1 "
            "WHERE id = $2",
            utcnow() - timedelta(days=days),
            uuid.UUID(item["id"]),
        )
    engine = create_engine(settings)
    try:
        cutoff = utcnow() - timedelta(days=15)
        deleted = await review_retention.purge_reviewed(
            create_sessionmaker(engine), cutoff, chunk_rows=chunk
        )
    finally:
        await engine.dispose()
    assert deleted == 2
    assert await fetch(settings, "SELECT count(*) FROM quarantined_readings") == 1
