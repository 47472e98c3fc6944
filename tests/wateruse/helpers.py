"""What the water-use tests share: a site's fleet made through the API, ended runs written
as the pumps' jobs leave them (the activation and its end mark), flow readings sent
through `POST /v1/readings`, and the rollup run as its cron job runs it."""

import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from irrigation.pumps.models import EndedRun, PumpActivation
from irrigation.settings import Settings
from irrigation.wateruse import rollup
from tests.support.api import Headers

Sessions = async_sessionmaker[AsyncSession]


async def site_id(client: httpx.AsyncClient, headers: Headers) -> uuid.UUID:
    response = await client.get("/v1/sites/current", headers=headers)
    assert response.status_code == 200, response.text
    return uuid.UUID(response.json()["id"])


async def ended_run(
    sessions: Sessions,
    site: uuid.UUID,
    pump: dict[str, Any],
    started: datetime,
    stopped: datetime,
) -> uuid.UUID:
    """A run of `pump` that the device confirmed at `started` and that stopped at `stopped`,
    as the stop job records it: a completed activation and its mark for the rollup."""
    async with sessions() as session, session.begin():
        run = PumpActivation(
            site_id=site,
            pump_id=uuid.UUID(pump["id"]),
            water_source_id=uuid.UUID(pump["water_source_id"]),
            priority="manual",
            status="completed",
            duration_s=max(1, round((stopped - started).total_seconds())),
            origin="test",
            command_id=uuid.uuid4().hex,
            sequence=1,
            requested_at=started - timedelta(seconds=1),
            start_deadline=started,
            starting_at=started - timedelta(seconds=1),
            started_at=started,
            auto_off_at=stopped,
            run_deadline=stopped,
            stopped_at=stopped,
            stop_cause="deadline",
        )
        session.add(run)
        await session.flush()
        session.add(EndedRun(activation_id=run.id))
    return run.id


def every(start: datetime, end: datetime, step: timedelta) -> Iterable[datetime]:
    moment = start
    while moment <= end:
        yield moment
        moment += step


async def send_flows(
    client: httpx.AsyncClient,
    headers: Headers,
    sensor_id: str,
    readings: Iterable[tuple[datetime, float]],
) -> None:
    items = [
        {"sensor_id": sensor_id, "ts": ts.isoformat(), "value": value, "unit": "L/min"}
        for ts, value in readings
    ]
    for at in range(0, len(items), 10_000):
        response = await client.post(
            "/v1/readings", json={"readings": items[at : at + 10_000]}, headers=headers
        )
        assert response.status_code == 200, response.text
        assert response.json()["quarantined"] == 0, response.text


async def roll_up(sessions: Sessions, settings: Settings) -> int:
    async with sessions() as session:
        return await rollup.roll_up(session, settings)


async def water_use(
    client: httpx.AsyncClient, headers: Headers, path: str, **params: str
) -> dict[str, Any]:
    response = await client.get(f"{path}/water-use", params=params, headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def by_day(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {b["start"]: b for b in body["buckets"]}
