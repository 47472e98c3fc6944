"""Water sources: CRUD, limits on concurrency and refusal to delete one still feeding pumps."""

import uuid

import httpx
import pytest

from tests.fleet.conftest import Fleet
from tests.support.api import Headers
from tests.support.factories import make_pump, make_water_source, make_zone
from tests.support.problems import assert_invalid, assert_problem


async def test_create_water_source_returns_201_with_the_full_source(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    response = await client.post(
        "/v1/water-sources", json={"name": "Well", "max_concurrent_pumps": 3}, headers=admin
    )
    assert response.status_code == 201, response.text
    source = response.json()
    assert uuid.UUID(source["id"])
    assert source["version"] == 1
    assert source["name"] == "Well"
    assert source["max_concurrent_pumps"] == 3
    assert source["created_at"]
    default = await client.post("/v1/water-sources", json={"name": "Tank"}, headers=admin)
    assert default.status_code == 201
    assert default.json()["max_concurrent_pumps"] == 1  # one pump at a time unless told


async def test_get_and_list_water_sources_show_what_was_created(
    client: httpx.AsyncClient, admin: Headers, reader: Headers
) -> None:
    well = await make_water_source(client, admin, "Well")
    tank = await make_water_source(client, admin, "Tank")
    one = await client.get(f"/v1/water-sources/{well['id']}", headers=reader)
    assert one.status_code == 200
    assert one.json() == well
    listed = await client.get("/v1/water-sources", headers=reader)
    assert listed.status_code == 200
    assert listed.json() == {"items": [well, tank], "next_cursor": None}


async def test_patch_water_source_changes_fields_and_bumps_the_version(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    source = await make_water_source(client, admin)
    response = await client.patch(
        f"/v1/water-sources/{source['id']}",
        json={"max_concurrent_pumps": 5},
        headers={**admin, "If-Match": '"1"'},
    )
    assert response.status_code == 200, response.text
    assert response.json() == {**source, "max_concurrent_pumps": 5, "version": 2}


async def test_max_concurrent_pumps_out_of_range_is_422(
    client: httpx.AsyncClient, admin: Headers, subtests: pytest.Subtests
) -> None:
    for count in (0, -1, 1001, 2**31):
        with subtests.test(count=count):
            response = await client.post(
                "/v1/water-sources",
                json={"name": "Well", "max_concurrent_pumps": count},
                headers=admin,
            )
            assert_invalid(response, "body.max_concurrent_pumps")


async def test_delete_water_source_is_204_and_it_is_gone(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    source = await make_water_source(client, admin)
    response = await client.delete(f"/v1/water-sources/{source['id']}", headers=admin)
    assert response.status_code == 204
    gone = await client.get(f"/v1/water-sources/{source['id']}", headers=admin)
    assert_problem(gone, 404, "not_found")


async def test_water_source_feeding_a_pump_cannot_be_deleted_409_in_use(
    client: httpx.AsyncClient, admin: Headers, fleet: Fleet
) -> None:
    source_id = fleet["water_source"]["id"]
    response = await client.delete(f"/v1/water-sources/{source_id}", headers=admin)
    assert_problem(response, 409, "in_use")
    still = await client.get(f"/v1/water-sources/{source_id}", headers=admin)
    assert still.status_code == 200


async def test_zone_default_water_source_feeding_a_pump_cannot_be_deleted(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    zone = await make_zone(client, admin)
    pump = await make_pump(client, admin, zone_id=zone["id"])
    response = await client.delete(f"/v1/water-sources/{pump['water_source_id']}", headers=admin)
    assert_problem(response, 409, "in_use")


async def test_deleting_an_unused_default_source_clears_it_from_the_zone(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    zone = await make_zone(client, admin)
    pump = await make_pump(client, admin, zone_id=zone["id"])
    assert (await client.delete(f"/v1/pumps/{pump['id']}", headers=admin)).status_code == 204
    response = await client.delete(f"/v1/water-sources/{pump['water_source_id']}", headers=admin)
    assert response.status_code == 204
    after = await client.get(f"/v1/zones/{zone['id']}", headers=admin)
    assert after.json()["default_water_source_id"] is None
    # The next pump without a source gets a fresh default.
    second = await make_pump(client, admin, zone_id=zone["id"])
    assert second["water_source_id"] != pump["water_source_id"]


# Flow budgets -----------------------------------------------------------------------------


async def test_a_flow_budget_is_set_changed_and_cleared(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    unlimited = await make_water_source(client, admin, "Tank")
    assert unlimited["max_flow_lpm"] is None  # no flow limit unless told
    source = await make_water_source(client, admin, "Well", max_flow_lpm=100)
    assert source["max_flow_lpm"] == 100
    changed = await client.patch(
        f"/v1/water-sources/{source['id']}",
        json={"version": 1, "max_flow_lpm": 62.5},
        headers=admin,
    )
    assert changed.status_code == 200, changed.text
    assert changed.json() == {**source, "max_flow_lpm": 62.5, "version": 2}
    cleared = await client.patch(
        f"/v1/water-sources/{source['id']}",
        json={"version": 2, "max_flow_lpm": None},
        headers=admin,
    )
    assert cleared.status_code == 200, cleared.text
    assert cleared.json()["max_flow_lpm"] is None


async def test_a_pump_nominal_flow_is_set_changed_and_cleared(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    pump = await make_pump(client, admin, "relay-flow", nominal_flow_lpm=60)
    assert pump["nominal_flow_lpm"] == 60
    assert (await make_pump(client, admin, "relay-unknown"))["nominal_flow_lpm"] is None
    for version, value in ((1, 12.25), (2, None)):
        response = await client.patch(
            f"/v1/pumps/{pump['id']}",
            json={"version": version, "nominal_flow_lpm": value},
            headers=admin,
        )
        assert response.status_code == 200, response.text
        assert response.json()["nominal_flow_lpm"] == value


async def test_flows_that_are_not_positive_finite_litres_per_minute_are_422(
    client: httpx.AsyncClient, admin: Headers, subtests: pytest.Subtests
) -> None:
    zone = await make_zone(client, admin)
    for value in (0, -5, 1_000_001, "NaN", "Infinity", "a lot"):
        with subtests.test(value=value):
            source = await client.post(
                "/v1/water-sources", json={"name": "Well", "max_flow_lpm": value}, headers=admin
            )
            assert_invalid(source, "body.max_flow_lpm")
            body = {"zone_id": zone["id"], "name": "P", "hardware_id": "p-1"}
            pump = await client.post(
                "/v1/pumps", json={**body, "nominal_flow_lpm": value}, headers=admin
            )
            assert_invalid(pump, "body.nominal_flow_lpm")
