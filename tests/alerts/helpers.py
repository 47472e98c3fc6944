"""What the alert tests share: readings, evaluation, and reading alerts back."""

from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from irrigation.alerts.evaluate import Evaluation, evaluate_alerts
from irrigation.common.clock import utcnow
from irrigation.settings import Settings
from tests.support.api import Headers


async def send(
    client: httpx.AsyncClient,
    headers: Headers,
    sensor_id: str,
    *values: float,
    ts: datetime | None = None,
) -> dict[str, Any]:
    """Readings one millisecond apart, the last at `ts` (default: now, by the test clock)."""
    end = ts or utcnow()
    readings = [
        {
            "sensor_id": sensor_id,
            "ts": (end - timedelta(milliseconds=len(values) - 1 - i)).isoformat(),
            "value": value,
        }
        for i, value in enumerate(values)
    ]
    response = await client.post("/v1/readings", json={"readings": readings}, headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def evaluate(sessions: async_sessionmaker[AsyncSession], settings: Settings) -> Evaluation:
    async with sessions() as session:
        return await evaluate_alerts(session, settings)


async def alerts(client: httpx.AsyncClient, headers: Headers, **filters: str) -> list[Any]:
    response = await client.get("/v1/alerts", params={"limit": 500, **filters}, headers=headers)
    assert response.status_code == 200, response.text
    items: list[Any] = response.json()["items"]
    return items


async def open_alerts(client: httpx.AsyncClient, headers: Headers, kind: str) -> list[Any]:
    return [a for a in await alerts(client, headers, kind=kind) if a["status"] != "cleared"]
