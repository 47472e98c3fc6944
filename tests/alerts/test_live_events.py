"""Alert transitions as live events in the site's stream: raised, acknowledged and cleared,
each the alert as the API shows it with the `change` and the zone of its subject (none for
a site's own alert); nothing for an evaluation that changes nothing or a refused
acknowledgement, nothing in another site's stream."""

import uuid

import asyncpg
import httpx
import redis.asyncio as aioredis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from irrigation.alerts.schemas import AlertOut
from irrigation.settings import Settings
from irrigation.stack import plain_url
from tests.alerts.helpers import evaluate, send
from tests.support.api import Headers
from tests.support.factories import make_pump, make_sensor, make_zone
from tests.support.feed import data_of

Sessions = async_sessionmaker[AsyncSession]
ALERT_FIELDS = set(AlertOut.model_fields) | {"change", "zone_id"}


async def test_an_alerts_life_is_three_events_carrying_its_zone(
    client: httpx.AsyncClient,
    admin: Headers,
    operator: Headers,
    other_admin: Headers,
    sessions: Sessions,
    settings: Settings,
    redis: aioredis.Redis,
) -> None:
    sensor = await make_sensor(client, admin, alert_max=30)
    elsewhere = await make_zone(client, other_admin)
    site, ns = sensor["site_id"], settings.redis_namespace
    await send(client, admin, sensor["id"], 40)
    (alert_id,) = (await evaluate(sessions, settings)).raised
    assert (await evaluate(sessions, settings)).raised == []  # touched only: no event
    ack = f"/v1/alerts/{alert_id}/ack"
    assert (await client.post(ack, headers=operator)).status_code == 200
    assert (await client.post(ack, headers=operator)).status_code == 200  # again: no change
    await send(client, admin, sensor["id"], 20)
    assert (await evaluate(sessions, settings)).cleared == [alert_id]
    refused = await client.post(ack, headers=operator)
    assert refused.status_code == 409, refused.text  # alert_cleared: nothing to tell

    found = await data_of(redis, ns, site, "alert")
    assert [(d["change"], d["status"]) for d in found] == [
        ("raised", "raised"),
        ("acknowledged", "acknowledged"),
        ("cleared", "cleared"),
    ]
    for data in found:
        assert set(data) == ALERT_FIELDS
        assert (data["id"], data["site_id"]) == (str(alert_id), site)
        assert (data["subject_id"], data["zone_id"]) == (sensor["id"], sensor["zone_id"])
    shown = (await client.get(f"/v1/alerts/{alert_id}", headers=admin)).json()
    assert found[-1] | {"change": 0, "zone_id": 0} == shown | {"change": 0, "zone_id": 0}
    assert await data_of(redis, ns, elsewhere["site_id"], "alert") == []


async def test_a_pumps_alert_carries_its_zone_and_a_sites_own_alert_none(
    client: httpx.AsyncClient,
    admin: Headers,
    sessions: Sessions,
    settings: Settings,
    redis: aioredis.Redis,
    database_url: str,
) -> None:
    pump = await make_pump(client, admin)
    sensor = await make_sensor(client, admin)
    # soil moisture is 0-100: 150 is out of range, quarantined (30 % of 20 items)
    await send(client, admin, sensor["id"], *([50.0] * 14 + [150.0] * 6))
    conn = await asyncpg.connect(plain_url(database_url))
    try:  # the fault a failed start latches (pumps/commands.py)
        await conn.execute(
            "UPDATE pumps SET fault = 'gateway: unreachable', fault_at = now() WHERE id = $1",
            uuid.UUID(pump["id"]),
        )
    finally:
        await conn.close()
    assert len((await evaluate(sessions, settings)).raised) == 2

    found = await data_of(redis, settings.redis_namespace, pump["site_id"], "alert")
    zones = {d["kind"]: (d["change"], d["zone_id"]) for d in found}
    assert zones == {
        "pump_fault": ("raised", pump["zone_id"]),
        "quarantine_rate": ("raised", None),
    }
