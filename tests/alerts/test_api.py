"""The alerts API: lists with filters and cursors (newest first), acknowledging, scopes,
and another site's alerts, which do not exist for the caller."""

import uuid
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from irrigation.common import clock
from irrigation.settings import Settings
from tests.alerts.helpers import alerts, evaluate, send
from tests.support.api import Headers, walk
from tests.support.factories import make_sensor
from tests.support.problems import assert_invalid, assert_problem

Sessions = async_sessionmaker[AsyncSession]


async def raise_out_of_band(
    client: httpx.AsyncClient, headers: Headers, sessions: Sessions, settings: Settings, n: int
) -> list[dict[str, Any]]:
    sensors = []
    for i in range(n):
        sensor = await make_sensor(client, headers, name=f"Probe {i}", alert_max=50)
        await send(client, headers, sensor["id"], 60 + i)
        sensors.append(sensor)
    await evaluate(sessions, settings)
    return sensors


async def test_list_is_newest_first_and_pages_with_cursors(
    client: httpx.AsyncClient, admin: Headers, sessions: Sessions, settings: Settings
) -> None:
    await raise_out_of_band(client, admin, sessions, settings, 3)
    clock.move(timedelta(seconds=5))
    await raise_out_of_band(client, admin, sessions, settings, 2)

    pages = await walk(client, "/v1/alerts", admin, limit=2)

    flat = [a for page in pages for a in page]
    assert [len(p) for p in pages] == [2, 2, 1]
    assert len({a["id"] for a in flat}) == 5
    keys = [(a["raised_at"], a["id"]) for a in flat]
    assert keys == sorted(keys, reverse=True)
    assert {a["detail"]["value"] for a in flat[:2]} == {60, 61}  # the later two


async def test_list_filters_by_status_kind_severity_and_subject(
    client: httpx.AsyncClient, admin: Headers, sessions: Sessions, settings: Settings
) -> None:
    first, second = await raise_out_of_band(client, admin, sessions, settings, 2)
    await make_sensor(client, admin, name="Quiet", silent_after_s=60)
    clock.move(timedelta(minutes=2))
    await send(client, admin, first["id"], 10)  # back in band, and not silent
    await send(client, admin, second["id"], 70)
    await evaluate(sessions, settings)

    cleared = await alerts(client, admin, status="cleared")
    assert [a["subject_id"] for a in cleared] == [first["id"]]
    assert {a["kind"] for a in await alerts(client, admin, status="raised")} == {
        "sensor_out_of_band",
        "sensor_silent",
    }
    silent = await alerts(client, admin, kind="sensor_silent")
    assert [a["subject_type"] for a in silent] == ["sensor"]
    assert len(await alerts(client, admin, severity="warning")) == 3
    assert await alerts(client, admin, severity="critical") == []
    by_subject = await alerts(client, admin, subject_id=second["id"])
    assert [a["kind"] for a in by_subject] == ["sensor_out_of_band"]


async def test_bad_filters_and_cursors_are_422(client: httpx.AsyncClient, admin: Headers) -> None:
    assert_invalid(await client.get("/v1/alerts?status=open", headers=admin), "query.status")
    assert_invalid(await client.get("/v1/alerts?limit=501", headers=admin), "query.limit")
    response = await client.get("/v1/alerts?cursor=nonsense", headers=admin)
    assert_problem(response, 422, "invalid_cursor")


async def test_ack_moves_raised_to_acknowledged_once_and_is_idempotent(
    client: httpx.AsyncClient,
    admin: Headers,
    operator: Headers,
    sessions: Sessions,
    settings: Settings,
) -> None:
    await raise_out_of_band(client, admin, sessions, settings, 1)
    (alert,) = await alerts(client, admin)

    first = await client.post(f"/v1/alerts/{alert['id']}/ack", headers=operator)
    clock.move(timedelta(minutes=1))
    again = await client.post(f"/v1/alerts/{alert['id']}/ack", headers=operator)

    assert first.status_code == 200, first.text
    assert first.json()["status"] == "acknowledged"
    assert first.json()["acknowledged_at"] is not None
    assert first.json()["acknowledged_by"]  # the key's id
    assert again.status_code == 200
    assert again.json() == first.json()
    shown = await client.get(f"/v1/alerts/{alert['id']}", headers=operator)
    assert shown.json() == first.json()


async def test_ack_of_a_cleared_alert_is_409_alert_cleared(
    client: httpx.AsyncClient, admin: Headers, sessions: Sessions, settings: Settings
) -> None:
    (sensor,) = await raise_out_of_band(client, admin, sessions, settings, 1)
    await send(client, admin, sensor["id"], 1)
    await evaluate(sessions, settings)
    (alert,) = await alerts(client, admin)

    response = await client.post(f"/v1/alerts/{alert['id']}/ack", headers=admin)

    assert_problem(response, 409, "alert_cleared")
    assert (await client.get(f"/v1/alerts/{alert['id']}", headers=admin)).json() == alert


async def test_unknown_alert_is_404(client: httpx.AsyncClient, admin: Headers) -> None:
    missing = uuid.uuid4()
    assert_problem(await client.get(f"/v1/alerts/{missing}", headers=admin), 404, "not_found")
    response = await client.post(f"/v1/alerts/{missing}/ack", headers=admin)
    assert_problem(response, 404, "not_found")


async def test_a_read_key_lists_but_cannot_acknowledge(
    client: httpx.AsyncClient,
    admin: Headers,
    reader: Headers,
    sessions: Sessions,
    settings: Settings,
) -> None:
    await raise_out_of_band(client, admin, sessions, settings, 1)
    (alert,) = await alerts(client, reader)

    response = await client.post(f"/v1/alerts/{alert['id']}/ack", headers=reader)

    assert_problem(response, 403, "insufficient_scope")
    assert_problem(await client.get("/v1/alerts"), 401, "unauthorized")


async def test_another_sites_alerts_are_404_and_not_listed(
    client: httpx.AsyncClient,
    admin: Headers,
    other_admin: Headers,
    sessions: Sessions,
    settings: Settings,
) -> None:
    await raise_out_of_band(client, admin, sessions, settings, 1)
    (alert,) = await alerts(client, admin)

    assert await alerts(client, other_admin) == []
    response = await client.get(f"/v1/alerts/{alert['id']}", headers=other_admin)
    assert_problem(response, 404, "not_found")
    response = await client.post(f"/v1/alerts/{alert['id']}/ack", headers=other_admin)
    assert_problem(response, 404, "not_found")
    assert (await client.get(f"/v1/alerts/{alert['id']}", headers=admin)).json() == alert
