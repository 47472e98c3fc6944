"""Ingestion jobs: one per batch, with its counts, time and success rate; listed newest
first, filtered, and private to the site."""

import uuid
from datetime import datetime
from typing import Any

import asyncpg
import httpx

from tests.ingest.helpers import ago, send
from tests.support.api import Headers, bearer, walk
from tests.support.factories import MakeKey, make_sensor
from tests.support.problems import assert_invalid, assert_problem


async def job(client: httpx.AsyncClient, headers: Headers, job_id: str) -> dict[str, Any]:
    response = await client.get(f"/v1/ingest/jobs/{job_id}", headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def add_import_job(database_url: str, like_job_id: str, **fields: Any) -> str:
    """An upload's job as the import worker leaves it, in the same site as `like_job_id`."""
    conn = await asyncpg.connect(database_url)
    try:
        job_id = uuid.uuid4()
        values = {"total": 0, "processed": 0, "inserted": 0, "duplicates": 0, "quarantined": 0}
        values |= fields
        await conn.execute(
            "INSERT INTO ingestion_jobs (id, site_id, source, status, total, processed, "
            "inserted, duplicates, quarantined, error, created_at) "
            "SELECT $1, site_id, 'import', $2, $3, $4, $5, $6, $7, $8, clock_timestamp() "
            "FROM ingestion_jobs WHERE id = $9",
            job_id,
            values.get("status", "failed"),
            values["total"],
            values["processed"],
            values["inserted"],
            values["duplicates"],
            values["quarantined"],
            values.get("error"),
            uuid.UUID(like_job_id),
        )
    finally:
        await conn.close()
    return str(job_id)


async def test_each_batch_leaves_a_completed_api_job_with_its_counts_and_success_rate(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    sid = (await make_sensor(client, admin))["id"]
    ts = ago(minutes=1)
    batch = await send(
        client,
        admin,
        [
            {"sensor_id": sid, "ts": ts, "value": 1},
            {"sensor_id": sid, "ts": ts, "value": 1},
            {"sensor_id": sid, "ts": ago(minutes=2), "value": 2},
            {"sensor_id": sid, "ts": ago(minutes=3), "value": 500},
        ],
    )
    got = await job(client, admin, batch["job_id"])
    assert {k: got[k] for k in ("id", "source", "status", "error")} == {
        "id": batch["job_id"],
        "source": "api",
        "status": "completed",
        "error": None,
    }
    assert [got[k] for k in ("total", "processed", "inserted", "duplicates", "quarantined")] == [
        4,
        4,
        2,
        1,
        1,
    ]
    assert got["success_rate"] == 0.75
    assert isinstance(got["processing_time_ms"], int)
    assert got["processing_time_ms"] >= 0
    started, finished = (datetime.fromisoformat(got[k]) for k in ("started_at", "finished_at"))
    assert started <= finished
    assert datetime.fromisoformat(got["created_at"]) <= finished

    all_bad = await send(client, admin, [{"sensor_id": sid, "ts": "x", "value": 1}] * 3)
    assert (await job(client, admin, all_bad["job_id"]))["success_rate"] == 0.0
    all_good = await send(client, admin, [{"sensor_id": sid, "ts": ago(minutes=9), "value": 3}])
    assert (await job(client, admin, all_good["job_id"]))["success_rate"] == 1.0


async def test_jobs_are_listed_newest_first_a_page_at_a_time(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    sid = (await make_sensor(client, admin))["id"]
    made = [
        (await send(client, admin, [{"sensor_id": sid, "ts": ago(minutes=m + 1), "value": m}]))[
            "job_id"
        ]
        for m in range(5)
    ]
    pages = await walk(client, "/v1/ingest/jobs", admin, limit=2)
    assert [len(page) for page in pages] == [2, 2, 1]
    assert [j["id"] for page in pages for j in page] == made[::-1]
    listed = pages[0][0]
    assert listed == await job(client, admin, made[-1])

    for limit in (0, 501):
        response = await client.get("/v1/ingest/jobs", params={"limit": limit}, headers=admin)
        assert_invalid(response, "query.limit")
    response = await client.get("/v1/ingest/jobs", params={"cursor": "?"}, headers=admin)
    assert_invalid(response, "query.cursor", code="invalid_cursor")


async def test_jobs_filter_by_source_and_status(
    client: httpx.AsyncClient, admin: Headers, database_url: str
) -> None:
    sid = (await make_sensor(client, admin))["id"]
    api_job = (await send(client, admin, [{"sensor_id": sid, "ts": ago(minutes=1), "value": 1}]))[
        "job_id"
    ]
    failed_import = await add_import_job(database_url, api_job, error="not a CSV file")

    async def ids(**filters: str) -> list[str]:
        response = await client.get("/v1/ingest/jobs", params=filters, headers=admin)
        assert response.status_code == 200, response.text
        return [j["id"] for j in response.json()["items"]]

    assert await ids() == [failed_import, api_job]
    assert await ids(source="api") == [api_job]
    assert await ids(source="import") == [failed_import]
    assert await ids(source="mqtt") == []
    assert await ids(status="failed") == [failed_import]
    assert await ids(source="api", status="failed") == []
    got = await job(client, admin, failed_import)
    assert (got["source"], got["status"], got["error"]) == ("import", "failed", "not a CSV file")
    assert got["success_rate"] is None  # nothing processed: no rate, rather than 0
    for bad in ({"source": "fax"}, {"status": "done"}):
        response = await client.get("/v1/ingest/jobs", params=bad, headers=admin)
        assert_invalid(response, f"query.{next(iter(bad))}")


async def test_jobs_are_read_with_read_or_ingest_and_another_sites_are_not_found(
    client: httpx.AsyncClient, admin: Headers, other_admin: Headers, make_key: MakeKey
) -> None:
    sid = (await make_sensor(client, admin))["id"]
    device = bearer(await make_key("ingest"))
    job_id = (await send(client, device, [{"sensor_id": sid, "ts": ago(minutes=1), "value": 1}]))[
        "job_id"
    ]
    reader = bearer(await make_key("read"))
    assert (await job(client, reader, job_id))["id"] == job_id
    # The device that sent the data may follow its job.
    assert (await job(client, device, job_id))["id"] == job_id
    assert_problem(await client.get("/v1/ingest/jobs"), 401, "unauthorized")

    assert_problem(
        await client.get(f"/v1/ingest/jobs/{job_id}", headers=other_admin), 404, "not_found"
    )
    assert_problem(
        await client.get(f"/v1/ingest/jobs/{uuid.uuid4()}", headers=admin), 404, "not_found"
    )
    assert (await client.get("/v1/ingest/jobs", headers=other_admin)).json()["items"] == []
    assert_invalid(await client.get("/v1/ingest/jobs/nope", headers=admin), "path.job_id")


async def test_an_ingest_only_key_can_follow_its_jobs(
    client: httpx.AsyncClient, make_key: MakeKey
) -> None:
    device = bearer(await make_key("ingest"))
    listed = await client.get("/v1/ingest/jobs", headers=device)
    assert listed.status_code == 200
    control = bearer(await make_key("control"))
    refused = await client.get("/v1/ingest/jobs", headers=control)
    assert refused.status_code == 403
