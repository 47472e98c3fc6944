"""The automation's worker side, in-process: the same functions the arq jobs call, with a
real database, a real Redis and a fake weather provider; the clock is moved, not slept."""

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from arq.connections import ArqRedis

from irrigation import feed, queue
from irrigation.automation import scheduling, thresholds
from irrigation.automation.lockouts import Lockouts
from irrigation.automation.runqueue import dispatch
from irrigation.common import clock
from irrigation.common.worker_context import WorkerContext
from irrigation.db import create_engine, create_sessionmaker
from irrigation.gateway import HttpGateway
from irrigation.settings import Settings
from irrigation.weather import FakeWeatherProvider


@dataclass
class Engine:
    settings: Settings
    sessions: Any
    redis: ArqRedis
    weather: FakeWeatherProvider
    gateway: HttpGateway

    async def dispatch(self, *, judge: bool = True) -> int:
        """The dispatcher job's pass (it judges weather lockouts); `judge=False`: a pass
        that cannot, as the one after a person's request in the API."""
        lockouts = Lockouts(self.weather) if judge else None
        async with self.sessions() as session:
            return await dispatch.start_waiting(session, self.settings, self.redis, None, lockouts)

    async def evaluate(self) -> int:
        async with self.sessions() as session:
            return await thresholds.evaluate_rules(session, self.settings, self.redis)

    def job_ctx(self) -> dict[str, Any]:
        """What the worker hands its jobs; no job called this way reaches the gateway."""
        context = WorkerContext(
            settings=self.settings, sessions=self.sessions, gateway=self.gateway, redis=self.redis
        )
        return {"irrigation": context}

    async def fire(self) -> int:
        async with self.sessions() as session:
            return await scheduling.fire_due(session, self.settings, self.redis, self.weather)


@pytest.fixture
async def engine(settings: Settings) -> AsyncIterator[Engine]:
    db = create_engine(settings)
    redis = queue.create_redis(settings.effective_redis_url, 2.0, settings.queue_name)
    gateway = HttpGateway("http://127.0.0.1:9", timeout_s=0.1, retries=0)
    weather = FakeWeatherProvider(now=clock.utcnow)
    # The worker's sessions: what their transactions emit reaches the site's live feed.
    sessions = create_sessionmaker(db, feed.create_publisher(settings, redis))
    yield Engine(settings, sessions, redis, weather, gateway)
    await gateway.aclose()
    await redis.aclose()
    await db.dispose()


async def decisions(
    client: httpx.AsyncClient, headers: dict[str, str], zone_id: str, **params: str
) -> list[dict[str, Any]]:
    response = await client.get(
        f"/v1/zones/{zone_id}/decisions", params={"limit": "500", **params}, headers=headers
    )
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def run_requests(
    client: httpx.AsyncClient, headers: dict[str, str], **params: str
) -> list[dict[str, Any]]:
    response = await client.get("/v1/run-queue", params={"limit": "500", **params}, headers=headers)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def post_moisture(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    sensor_id: str,
    values: list[float],
    end: datetime | None = None,
    step_s: float = 10,
) -> None:
    """Readings, the last one at `end` (default: now), `step_s` apart."""
    end = end or datetime.now(UTC)
    items = [
        {
            "sensor_id": sensor_id,
            "ts": (end - timedelta(seconds=step_s * (len(values) - 1 - i))).isoformat(),
            "value": v,
            "unit": "%",
        }
        for i, v in enumerate(values)
    ]
    response = await client.post("/v1/readings", json={"readings": items}, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["inserted"] == len(values), response.text


# The real processes (API, worker) and the simulator of the pump tests.
from tests.pumps.conftest import (  # noqa: E402
    api,
    api_url,
    device,
    driver,
    e2e_env,
    simulator,
    simulator_url,
    spawn,
)

__all__ = [
    "api",
    "api_url",
    "device",
    "driver",
    "e2e_env",
    "simulator",
    "simulator_url",
    "spawn",
]
