"""Sensors: CRUD, kinds, and valid ranges that are finite and never empty."""

import uuid

import httpx
import pytest

from tests.fleet.conftest import Fleet
from tests.support.api import Headers
from tests.support.factories import make_sensor, make_zone
from tests.support.problems import assert_invalid, assert_problem


async def test_create_sensor_returns_201_with_the_full_sensor(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    zone = await make_zone(client, admin)
    response = await client.post(
        "/v1/sensors",
        json={
            "zone_id": zone["id"],
            "name": "Soil probe",
            "kind": "soil_moisture",
            "unit": "%",
            "min_value": 5,
            "max_value": 60.5,
        },
        headers=admin,
    )
    assert response.status_code == 201, response.text
    sensor = response.json()
    assert uuid.UUID(sensor["id"])
    assert sensor["version"] == 1
    assert sensor["zone_id"] == zone["id"]
    assert sensor["name"] == "Soil probe"
    assert sensor["kind"] == "soil_moisture"
    assert sensor["unit"] == "%"
    assert sensor["min_value"] == 5
    assert sensor["max_value"] == 60.5
    assert sensor["valid_min"] == 5
    assert sensor["valid_max"] == 60.5
    assert sensor["last_seen_at"] is None


async def test_sensor_without_bounds_gets_its_kinds_valid_range(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    zone = await make_zone(client, admin)
    sensor = await make_sensor(client, admin, zone["id"], kind="temperature", unit="C")
    assert sensor["min_value"] is None
    assert sensor["max_value"] is None
    assert (sensor["valid_min"], sensor["valid_max"]) == (-40, 120)


async def test_get_and_list_sensors_show_what_was_created(
    client: httpx.AsyncClient, reader: Headers, fleet: Fleet
) -> None:
    sensor = fleet["sensor"]
    one = await client.get(f"/v1/sensors/{sensor['id']}", headers=reader)
    assert one.status_code == 200
    assert one.json() == sensor
    listed = await client.get("/v1/sensors", headers=reader)
    assert listed.json() == {"items": [sensor], "next_cursor": None}


async def test_patch_sensor_changes_fields_and_bumps_the_version(
    client: httpx.AsyncClient, admin: Headers, fleet: Fleet
) -> None:
    sensor = fleet["sensor"]
    response = await client.patch(
        f"/v1/sensors/{sensor['id']}",
        json={"version": 1, "name": "Deep probe", "min_value": 10, "max_value": 90},
        headers=admin,
    )
    assert response.status_code == 200, response.text
    assert response.json() == {
        **sensor,
        "name": "Deep probe",
        "min_value": 10,
        "max_value": 90,
        "valid_min": 10,
        "valid_max": 90,
        "version": 2,
    }


async def test_patch_sensor_with_null_bounds_falls_back_to_the_kinds_range(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    zone = await make_zone(client, admin)
    sensor = await make_sensor(client, admin, zone["id"], min_value=10, max_value=90)
    response = await client.patch(
        f"/v1/sensors/{sensor['id']}",
        json={"version": 1, "min_value": None, "max_value": None},
        headers=admin,
    )
    assert response.status_code == 200, response.text
    cleared = response.json()
    assert (cleared["min_value"], cleared["max_value"]) == (None, None)
    assert (cleared["valid_min"], cleared["valid_max"]) == (0, 100)


async def test_delete_sensor_is_204_and_it_is_gone(
    client: httpx.AsyncClient, admin: Headers, fleet: Fleet
) -> None:
    sensor_id = fleet["sensor"]["id"]
    response = await client.delete(f"/v1/sensors/{sensor_id}", headers=admin)
    assert response.status_code == 204
    gone = await client.get(f"/v1/sensors/{sensor_id}", headers=admin)
    assert_problem(gone, 404, "not_found")


async def test_unknown_sensor_kind_is_422(client: httpx.AsyncClient, admin: Headers) -> None:
    zone = await make_zone(client, admin)
    response = await client.post(
        "/v1/sensors",
        json={"zone_id": zone["id"], "name": "S", "kind": "telepathy", "unit": "x"},
        headers=admin,
    )
    assert_invalid(response, "body.kind")


async def test_kind_cannot_be_changed_by_patch(
    client: httpx.AsyncClient, admin: Headers, fleet: Fleet
) -> None:
    response = await client.patch(
        f"/v1/sensors/{fleet['sensor']['id']}",
        json={"version": 1, "kind": "rain"},
        headers=admin,
    )
    assert_invalid(response, "body.kind")


# Valid ranges ----------------------------------------------------------------------------

NOT_FINITE = ["NaN", "Infinity", "-Infinity", "1e400", '"NaN"', '"Infinity"', '"-inf"']


async def test_non_finite_bounds_are_422(
    client: httpx.AsyncClient, admin: Headers, fleet: Fleet, subtests: pytest.Subtests
) -> None:
    sensor = fleet["sensor"]
    json_headers = {**admin, "Content-Type": "application/json"}
    for literal in NOT_FINITE:
        with subtests.test(literal=literal, method="POST"):
            raw = (
                f'{{"zone_id": "{sensor["zone_id"]}", "name": "S", "kind": "flow",'
                f' "unit": "l/min", "min_value": {literal}}}'
            )
            response = await client.post("/v1/sensors", content=raw, headers=json_headers)
            assert_invalid(response, "body.min_value")
        with subtests.test(literal=literal, method="PATCH"):
            response = await client.patch(
                f"/v1/sensors/{sensor['id']}",
                content=f'{{"version": 1, "max_value": {literal}}}',
                headers=json_headers,
            )
            assert_invalid(response, "body.max_value")
    assert (await client.get("/v1/sensors", headers=admin)).json()["items"] == [sensor]


async def test_min_value_not_below_max_value_is_422(
    client: httpx.AsyncClient, admin: Headers, subtests: pytest.Subtests
) -> None:
    zone = await make_zone(client, admin)
    for low, high in [(10, 10), (50, 10)]:
        with subtests.test(min_value=low, max_value=high):
            response = await client.post(
                "/v1/sensors",
                json={
                    "zone_id": zone["id"],
                    "name": "S",
                    "kind": "flow",
                    "unit": "l",
                    "min_value": low,
                    "max_value": high,
                },
                headers=admin,
            )
            body = assert_problem(response, 422, "validation_error")
            assert "min_value" in body["detail"]


async def test_min_value_above_the_kinds_upper_bound_is_422(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    zone = await make_zone(client, admin)
    response = await client.post(
        "/v1/sensors",
        json={
            "zone_id": zone["id"],
            "name": "S",
            "kind": "soil_moisture",
            "unit": "%",
            "min_value": 150,
        },
        headers=admin,
    )
    assert_invalid(response, "body.min_value")
    assert (await client.get("/v1/sensors", headers=admin)).json()["items"] == []


async def test_patch_that_would_empty_the_valid_range_is_422_not_500(
    client: httpx.AsyncClient, admin: Headers, subtests: pytest.Subtests
) -> None:
    zone = await make_zone(client, admin)
    bounded = await make_sensor(client, admin, zone["id"], min_value=5, max_value=10)
    unbounded = await make_sensor(client, admin, zone["id"])  # soil moisture: 0..100
    cases = [
        (bounded, {"min_value": 20}, "body.min_value"),
        (bounded, {"min_value": 10}, "body.min_value"),
        (bounded, {"max_value": 5}, "body.max_value"),
        (bounded, {"max_value": 1}, "body.max_value"),
        (unbounded, {"min_value": 150}, "body.min_value"),
        (unbounded, {"max_value": -1}, "body.max_value"),
    ]
    for sensor, change, field in cases:
        with subtests.test(**change):
            url = f"/v1/sensors/{sensor['id']}"
            response = await client.patch(url, json={"version": 1, **change}, headers=admin)
            assert_invalid(response, field)
            assert (await client.get(url, headers=admin)).json() == sensor
