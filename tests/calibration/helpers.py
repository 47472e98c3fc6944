"""What the calibration tests share: steps of a sensor's history, its readings as the API
shows them, and a backfill run to its end by the real job function."""

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from arq.connections import ArqRedis
from arq.worker import Retry

from irrigation import queue
from irrigation.common.worker_context import WorkerContext
from irrigation.db import create_engine, create_sessionmaker
from irrigation.gateway.http import HttpGateway
from irrigation.readings import backfill
from irrigation.settings import Settings
from tests.support.api import Headers


def hour_ago(hours: float = 1, *, minutes: float = 0) -> datetime:
    """A whole UTC hour `hours` back (plus `minutes`): readings far from an hour's edges."""
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    return now - timedelta(hours=hours) + timedelta(minutes=minutes)


def item(sensor_id: str, ts: datetime, value: float) -> dict[str, Any]:
    return {"sensor_id": sensor_id, "ts": ts.isoformat(), "value": value}


async def calibrate(
    client: httpx.AsyncClient, headers: Headers, sensor_id: str, **body: Any
) -> dict[str, Any]:
    if isinstance(body.get("effective_from"), datetime):
        body["effective_from"] = body["effective_from"].isoformat()
    response = await client.post(
        f"/v1/sensors/{sensor_id}/calibrations", json=body, headers=headers
    )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def stored(
    client: httpx.AsyncClient, headers: Headers, sensor_id: str, start: datetime, end: datetime
) -> dict[datetime, tuple[float, float]]:
    """The sensor's readings in [start, end) as the API shows them: ts -> (value, raw_value)."""
    response = await client.get(
        f"/v1/sensors/{sensor_id}/readings",
        params={"start": start.isoformat(), "end": end.isoformat(), "limit": 500},
        headers=headers,
    )
    assert response.status_code == 200, response.text
    return {
        datetime.fromisoformat(r["ts"]): (r["value"], r["raw_value"])
        for r in response.json()["items"]
    }


@asynccontextmanager
async def job_context(settings: Settings) -> AsyncIterator[dict[str, Any]]:
    """The `ctx` a worker hands its jobs."""
    engine = create_engine(settings)
    redis: ArqRedis = queue.create_redis(settings.effective_redis_url, 2.0, settings.queue_name)
    gateway = HttpGateway("http://127.0.0.1:9", timeout_s=0.1, retries=0)
    try:
        yield {"irrigation": WorkerContext(settings, create_sessionmaker(engine), gateway, redis)}
    finally:
        await gateway.aclose()
        await redis.aclose()
        await engine.dispose()


async def run_backfill(settings: Settings, backfill_id: str) -> str:
    """The job, run again for as long as it asks to be, as arq would."""
    async with job_context(settings) as ctx:
        for _ in range(1000):
            try:
                return await backfill.backfill_calibration(ctx, backfill_id)
            except Retry:
                continue
    raise AssertionError("the backfill never finished")


async def request_backfill(
    client: httpx.AsyncClient,
    headers: Headers,
    sensor_id: str,
    start: datetime,
    end: datetime,
    **extra: str,
) -> httpx.Response:
    return await client.post(
        f"/v1/sensors/{sensor_id}/calibrations/backfill",
        json={"from": start.isoformat(), "to": end.isoformat()},
        headers={**headers, **extra},
    )


def uuid_of(body: dict[str, Any]) -> uuid.UUID:
    return uuid.UUID(body["id"])
