"""The lifecycle of each condition: raised once (evaluating again adds nothing), touched
while it holds, cleared when it goes away (acknowledged or not), and a new alert when it
comes back. The clock is moved, never slept."""

import asyncio
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from irrigation.common import clock
from irrigation.settings import Settings
from tests.alerts.helpers import alerts, evaluate, open_alerts, send
from tests.support.api import Headers
from tests.support.factories import make_sensor

Sessions = async_sessionmaker[AsyncSession]


async def test_out_of_band_value_raises_once_clears_and_raises_again_as_a_new_alert(
    client: httpx.AsyncClient, admin: Headers, sessions: Sessions, settings: Settings
) -> None:
    sensor = await make_sensor(client, admin, alert_min=10, alert_max=80)
    await send(client, admin, sensor["id"], 50, 4.2)

    first = await evaluate(sessions, settings)
    again = await evaluate(sessions, settings)

    assert len(first.raised) == 1
    assert again.raised == []
    assert again.cleared == []
    (alert,) = await alerts(client, admin)
    assert alert["kind"] == "sensor_out_of_band"
    assert alert["severity"] == "warning"
    assert alert["status"] == "raised"
    assert alert["subject_type"] == "sensor"
    assert alert["subject_id"] == sensor["id"]
    assert alert["message"] == (
        "Sensor 'North moisture' reads 4.2 %, below its alert band 10 to 80 %."
    )
    assert alert["detail"]["value"] == 4.2

    await send(client, admin, sensor["id"], 55)
    assert (await evaluate(sessions, settings)).cleared == [first.raised[0]]
    (cleared,) = await alerts(client, admin)
    assert cleared["status"] == "cleared"
    assert cleared["cleared_at"] is not None

    await send(client, admin, sensor["id"], 91.5)
    back = await evaluate(sessions, settings)
    assert len(back.raised) == 1
    assert back.raised != first.raised
    newest, oldest = await alerts(client, admin)
    assert newest["id"] == str(back.raised[0])
    assert newest["message"] == (
        "Sensor 'North moisture' reads 91.5 %, above its alert band 10 to 80 %."
    )
    assert oldest["status"] == "cleared"


async def test_an_open_alert_follows_the_latest_value_while_it_holds(
    client: httpx.AsyncClient, admin: Headers, sessions: Sessions, settings: Settings
) -> None:
    sensor = await make_sensor(client, admin, alert_min=10)
    await send(client, admin, sensor["id"], 5)
    await evaluate(sessions, settings)
    (raised,) = await alerts(client, admin)
    clock.move(timedelta(seconds=30))
    await send(client, admin, sensor["id"], 3)

    await evaluate(sessions, settings)

    (alert,) = await alerts(client, admin)
    assert alert["id"] == raised["id"]
    assert alert["raised_at"] == raised["raised_at"]
    assert alert["last_seen_at"] > raised["last_seen_at"]
    assert alert["message"] == "Sensor 'North moisture' reads 3 %, below its alert minimum 10 %."


async def test_a_sensor_without_a_band_never_alerts_on_its_value(
    client: httpx.AsyncClient, admin: Headers, sessions: Sessions, settings: Settings
) -> None:
    sensor = await make_sensor(client, admin)
    await send(client, admin, sensor["id"], 0, 100)

    assert (await evaluate(sessions, settings)).raised == []


async def test_removing_the_band_clears_the_alert(
    client: httpx.AsyncClient, admin: Headers, sessions: Sessions, settings: Settings
) -> None:
    sensor = await make_sensor(client, admin, alert_max=30)
    await send(client, admin, sensor["id"], 40)
    await evaluate(sessions, settings)
    response = await client.patch(
        f"/v1/sensors/{sensor['id']}", json={"version": 1, "alert_max": None}, headers=admin
    )
    assert response.status_code == 200, response.text

    assert len((await evaluate(sessions, settings)).cleared) == 1


async def test_silent_sensor_raises_after_its_limit_and_clears_when_it_reports(
    client: httpx.AsyncClient, admin: Headers, sessions: Sessions, settings: Settings
) -> None:
    sensor = await make_sensor(client, admin, silent_after_s=600)
    await send(client, admin, sensor["id"], 40)
    clock.move(timedelta(minutes=9))
    assert (await evaluate(sessions, settings)).raised == []

    clock.move(timedelta(minutes=3))
    assert len((await evaluate(sessions, settings)).raised) == 1
    assert (await evaluate(sessions, settings)).raised == []
    (alert,) = await open_alerts(client, admin, "sensor_silent")
    assert alert["severity"] == "warning"
    assert alert["message"] == (
        "Sensor 'North moisture' has been silent for 12 minutes (alert after 10 minutes)."
    )

    await send(client, admin, sensor["id"], 41)
    assert [str(i) for i in (await evaluate(sessions, settings)).cleared] == [alert["id"]]


async def test_a_sensor_that_never_reported_is_silent_counting_from_its_creation(
    client: httpx.AsyncClient, admin: Headers, sessions: Sessions, settings: Settings
) -> None:
    await make_sensor(client, admin, name="Fresh probe", silent_after_s=60)
    assert (await evaluate(sessions, settings)).raised == []

    clock.move(timedelta(minutes=5))
    await evaluate(sessions, settings)

    (alert,) = await open_alerts(client, admin, "sensor_silent")
    assert alert["message"] == (
        "Sensor 'Fresh probe' has not sent a reading since it was created 5 minutes ago "
        "(alert after 1 minute of silence)."
    )


async def test_quarantine_rate_above_the_threshold_raises_and_clears_when_the_window_passes(
    client: httpx.AsyncClient, admin: Headers, sessions: Sessions, settings: Settings
) -> None:
    sensor = await make_sensor(client, admin)
    # soil moisture is 0-100: 150 is out of range, quarantined
    body = await send(client, admin, sensor["id"], *([50.0] * 14 + [150.0] * 6))
    assert body["quarantined"] == 6
    assert len((await evaluate(sessions, settings)).raised) == 1  # 30 % of 20 items

    (alert,) = await open_alerts(client, admin, "quarantine_rate")
    assert alert["subject_type"] == "site"
    assert alert["message"] == (
        "30% of the 20 readings ingested in the last 15 minutes were quarantined (threshold 20%)."
    )

    clock.move(timedelta(minutes=16))
    assert [str(i) for i in (await evaluate(sessions, settings)).cleared] == [alert["id"]]


async def test_quarantine_rate_needs_a_minimum_number_of_items(
    client: httpx.AsyncClient, admin: Headers, sessions: Sessions, settings: Settings
) -> None:
    sensor = await make_sensor(client, admin)
    await send(client, admin, sensor["id"], *([150.0] * 19))  # all bad, but only 19

    assert (await evaluate(sessions, settings)).raised == []


async def test_an_acknowledged_alert_clears_too(
    client: httpx.AsyncClient, admin: Headers, sessions: Sessions, settings: Settings
) -> None:
    sensor = await make_sensor(client, admin, alert_min=10)
    await send(client, admin, sensor["id"], 1)
    await evaluate(sessions, settings)
    (alert,) = await alerts(client, admin)
    acked = await client.post(f"/v1/alerts/{alert['id']}/ack", headers=admin)
    assert acked.json()["status"] == "acknowledged"
    assert (await evaluate(sessions, settings)).raised == []  # acknowledged is still open

    await send(client, admin, sensor["id"], 20)
    await evaluate(sessions, settings)

    (cleared,) = await alerts(client, admin)
    assert cleared["status"] == "cleared"
    assert cleared["acknowledged_at"] == acked.json()["acknowledged_at"]


async def test_deleting_the_subject_clears_its_alert(
    client: httpx.AsyncClient, admin: Headers, sessions: Sessions, settings: Settings
) -> None:
    sensor: dict[str, Any] = await make_sensor(client, admin, silent_after_s=60)
    clock.move(timedelta(minutes=2))
    await evaluate(sessions, settings)
    assert (await client.delete(f"/v1/sensors/{sensor['id']}", headers=admin)).status_code == 204

    assert len((await evaluate(sessions, settings)).cleared) == 1


async def test_overlapping_evaluations_never_raise_twice(
    client: httpx.AsyncClient, admin: Headers, sessions: Sessions, settings: Settings
) -> None:
    for i in range(5):
        sensor = await make_sensor(client, admin, name=f"Probe {i}", alert_max=10)
        await send(client, admin, sensor["id"], 20)

    results = await asyncio.gather(*(evaluate(sessions, settings) for _ in range(4)))

    assert sum(len(r.raised) for r in results) == 5
    assert len(await alerts(client, admin)) == 5
