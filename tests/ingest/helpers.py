"""What the ingestion tests share: sending, the answer's counts, the rollup table and the
quarantine."""

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx

from tests.support.api import Headers

NOBODYS_SENSOR = "00000000-0000-0000-0000-000000000000"


def ago(**delta: float) -> str:
    return (datetime.now(UTC) - timedelta(**delta)).isoformat()


async def send(
    client: httpx.AsyncClient, headers: Headers, items: list[Any], **extra: str
) -> dict[str, Any]:
    response = await client.post(
        "/v1/readings", json={"readings": items}, headers={**headers, **extra}
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def counts(body: dict[str, Any]) -> tuple[int, int, int, int]:
    return body["total"], body["inserted"], body["duplicates"], body["quarantined"]


def reasons(body: dict[str, Any]) -> dict[int, str]:
    return {q["index"]: q["reason"] for q in body["quarantine"]}


async def rollups(
    database_url: str, sensor_id: str
) -> dict[datetime, tuple[int, float, float, float]]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT bucket, count, sum, min, max FROM reading_rollups_hourly "
            "WHERE sensor_id = $1 ORDER BY bucket",
            uuid.UUID(sensor_id),
        )
    finally:
        await conn.close()
    return {r["bucket"]: (r["count"], r["sum"], r["min"], r["max"]) for r in rows}


async def quarantined(
    client: httpx.AsyncClient, headers: Headers, job_id: str
) -> dict[int, dict[str, Any]]:
    """A job's quarantined items by their index in the batch."""
    response = await client.get(
        "/v1/quarantine", params={"job_id": job_id, "limit": 500}, headers=headers
    )
    assert response.status_code == 200, response.text
    return {item["item_index"]: item for item in response.json()["items"]}
