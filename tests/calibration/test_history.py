"""The calibration history API: steps added, listed in the order they apply, refused with a
problem when they make no sense, and deleted only while no reading can have met them."""

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from irrigation.readings import calibrations
from tests.calibration.helpers import calibrate
from tests.support.api import Headers, bearer, walk
from tests.support.factories import make_sensor
from tests.support.problems import assert_invalid, assert_problem


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({}, "body"),
        ({"gain": 2, "raw_dry": 1, "raw_wet": 2}, "body"),
        ({"offset": 3}, "body"),
        ({"gain": 0}, "body"),
        ({"raw_dry": 300}, "body"),
        ({"raw_dry": 300, "raw_wet": 300.00001}, "body"),
        ({"gain": "2"}, "body.gain"),
        ({"gain": 1e7}, "body.gain"),
        ({"gain": 2, "offset": 1e10}, "body.offset"),
        ({"gain": 2, "effective_from": "2026-01-01T00:00:00"}, "body.effective_from"),
        ({"gain": 2, "effective_from": "1899-12-31T00:00:00Z"}, "body.effective_from"),
        ({"gain": 2, "effective_from": "2999-01-01T00:00:00Z"}, "body.effective_from"),
        ({"gain": 2, "unit": "%"}, "body.unit"),
    ],
)
async def test_bad_calibrations_are_422_problems(
    client: httpx.AsyncClient, admin: Headers, body: dict[str, Any], path: str
) -> None:
    sensor = (await make_sensor(client, admin))["id"]
    response = await client.post(f"/v1/sensors/{sensor}/calibrations", json=body, headers=admin)
    assert_invalid(response, path)
    assert (await client.get(f"/v1/sensors/{sensor}/calibrations", headers=admin)).json()[
        "items"
    ] == []


async def test_the_history_lists_in_effective_order_across_pages(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    sensor = (await make_sensor(client, admin))["id"]
    base = datetime(2026, 1, 1, tzinfo=UTC)
    for days in (3, 1, 4, 2, 0):
        await calibrate(
            client, admin, sensor, effective_from=base + timedelta(days=days), gain=days + 1
        )
    pages = await walk(client, f"/v1/sensors/{sensor}/calibrations", admin, limit=2)
    assert [len(page) for page in pages] == [2, 2, 1]
    steps = [step for page in pages for step in page]
    assert [s["gain"] for s in steps] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert [datetime.fromisoformat(s["effective_from"]) for s in steps] == [
        base + timedelta(days=d) for d in range(5)
    ]
    assert all(s["sensor_id"] == sensor and s["raw_dry"] is None for s in steps)


async def test_a_default_effective_from_is_now_and_one_instant_holds_one_step(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    sensor = (await make_sensor(client, admin))["id"]
    before = datetime.now(UTC)
    step = await calibrate(client, admin, sensor, gain=2)
    assert before <= datetime.fromisoformat(step["effective_from"]) <= datetime.now(UTC)
    again = await client.post(
        f"/v1/sensors/{sensor}/calibrations",
        json={"gain": 3, "effective_from": step["effective_from"]},
        headers=admin,
    )
    assert_problem(again, 409, "duplicate")


async def test_only_a_step_no_reading_can_have_met_may_be_deleted(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    sensor = (await make_sensor(client, admin))["id"]
    path = f"/v1/sensors/{sensor}/calibrations"
    now = datetime.now(UTC)
    past = await calibrate(client, admin, sensor, effective_from=now - timedelta(days=1), gain=2)
    # Readings may carry times up to 5 minutes ahead: 2 minutes ahead is in effect already.
    soon = await calibrate(client, admin, sensor, effective_from=now + timedelta(minutes=2), gain=3)
    later = await calibrate(client, admin, sensor, effective_from=now + timedelta(days=1), gain=4)
    for step in (past, soon):
        refused = await client.delete(f"{path}/{step['id']}", headers=admin)
        assert_problem(refused, 409, "calibration_in_effect")
    assert (await client.delete(f"{path}/{later['id']}", headers=admin)).status_code == 204
    assert_problem(await client.delete(f"{path}/{later['id']}", headers=admin), 404, "not_found")
    left = (await client.get(path, headers=admin)).json()["items"]
    assert [s["id"] for s in left] == [past["id"], soon["id"]]


async def test_a_sensor_holds_a_bounded_number_of_steps(
    client: httpx.AsyncClient, admin: Headers, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(calibrations, "MAX_CALIBRATIONS", 3)
    sensor = (await make_sensor(client, admin))["id"]
    base = datetime(2026, 1, 1, tzinfo=UTC)
    for days in range(3):
        await calibrate(client, admin, sensor, effective_from=base + timedelta(days=days), gain=2)
    refused = await client.post(
        f"/v1/sensors/{sensor}/calibrations",
        json={"gain": 2, "effective_from": (base + timedelta(days=9)).isoformat()},
        headers=admin,
    )
    assert assert_problem(refused, 409, "too_many_calibrations")["limit"] == 3


async def test_reading_the_history_takes_the_read_scope_and_writing_it_admin(
    client: httpx.AsyncClient, admin: Headers, make_key: Any
) -> None:
    sensor = (await make_sensor(client, admin))["id"]
    reader = bearer(await make_key("read"))
    path = f"/v1/sensors/{sensor}/calibrations"
    assert (await client.get(path, headers=reader)).status_code == 200
    assert_problem(
        await client.post(path, json={"gain": 2}, headers=reader), 403, "insufficient_scope"
    )
