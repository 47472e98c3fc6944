"""Zones: CRUD, versioned edits and refusal to delete a zone still in use."""

import uuid

import httpx

from tests.fleet.conftest import Fleet
from tests.support.api import Headers
from tests.support.factories import make_pump, make_sensor, make_zone
from tests.support.problems import assert_invalid, assert_problem


async def test_create_zone_returns_201_with_the_full_zone(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    response = await client.post(
        "/v1/zones", json={"name": "  North field ", "timezone": "Europe/Berlin"}, headers=admin
    )
    assert response.status_code == 201, response.text
    zone = response.json()
    assert uuid.UUID(zone["id"])
    assert uuid.UUID(zone["site_id"])
    assert zone["version"] == 1
    assert zone["name"] == "North field"
    assert zone["timezone"] == "Europe/Berlin"
    assert zone["default_water_source_id"] is None
    assert zone["created_at"]


async def test_get_zone_returns_what_was_created(
    client: httpx.AsyncClient, admin: Headers, reader: Headers
) -> None:
    zone = await make_zone(client, admin)
    response = await client.get(f"/v1/zones/{zone['id']}", headers=reader)
    assert response.status_code == 200
    assert response.json() == zone


async def test_list_zones_returns_every_zone_of_the_site(
    client: httpx.AsyncClient, admin: Headers, reader: Headers
) -> None:
    north = await make_zone(client, admin, "North")
    south = await make_zone(client, admin, "South")
    response = await client.get("/v1/zones", headers=reader)
    assert response.status_code == 200
    page = response.json()
    assert page["items"] == [north, south]
    assert page["next_cursor"] is None


async def test_patch_zone_changes_fields_and_bumps_the_version(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    zone = await make_zone(client, admin)
    response = await client.patch(
        f"/v1/zones/{zone['id']}",
        json={"version": 1, "name": "Orchard", "timezone": "America/Chicago"},
        headers=admin,
    )
    assert response.status_code == 200, response.text
    assert response.json() == {
        **zone,
        "name": "Orchard",
        "timezone": "America/Chicago",
        "version": 2,
    }
    again = await client.get(f"/v1/zones/{zone['id']}", headers=admin)
    assert again.json() == response.json()


async def test_patch_zone_to_an_unknown_timezone_is_422_naming_the_field(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    zone = await make_zone(client, admin)
    response = await client.patch(
        f"/v1/zones/{zone['id']}", json={"version": 1, "timezone": "Mars/Olympus"}, headers=admin
    )
    assert_invalid(response, "body.timezone")
    unchanged = await client.get(f"/v1/zones/{zone['id']}", headers=admin)
    assert unchanged.json() == zone


async def test_delete_zone_is_204_and_the_zone_is_gone(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    zone = await make_zone(client, admin)
    response = await client.delete(f"/v1/zones/{zone['id']}", headers=admin)
    assert response.status_code == 204
    assert response.content == b""
    gone = await client.get(f"/v1/zones/{zone['id']}", headers=admin)
    assert_problem(gone, 404, "not_found")
    again = await client.delete(f"/v1/zones/{zone['id']}", headers=admin)
    assert_problem(again, 404, "not_found")


async def test_second_zone_with_the_same_name_is_409_duplicate(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    await make_zone(client, admin, "North")
    response = await client.post(
        "/v1/zones", json={"name": "North", "timezone": "UTC"}, headers=admin
    )
    assert_problem(response, 409, "duplicate")


async def test_renaming_a_zone_onto_another_zones_name_is_409_duplicate(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    await make_zone(client, admin, "North")
    south = await make_zone(client, admin, "South")
    response = await client.patch(
        f"/v1/zones/{south['id']}", json={"version": 1, "name": "North"}, headers=admin
    )
    assert_problem(response, 409, "duplicate")


async def test_zones_of_different_sites_may_share_a_name(
    client: httpx.AsyncClient, admin: Headers, other_admin: Headers
) -> None:
    await make_zone(client, admin, "North")
    await make_zone(client, other_admin, "North")


async def test_zone_with_a_pump_cannot_be_deleted_409_in_use(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    zone = await make_zone(client, admin)
    await make_pump(client, admin, zone_id=zone["id"])
    response = await client.delete(f"/v1/zones/{zone['id']}", headers=admin)
    assert_problem(response, 409, "in_use")
    still = await client.get(f"/v1/zones/{zone['id']}", headers=admin)
    assert still.status_code == 200


async def test_zone_with_a_sensor_cannot_be_deleted_409_in_use(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    zone = await make_zone(client, admin)
    await make_sensor(client, admin, zone["id"])
    response = await client.delete(f"/v1/zones/{zone['id']}", headers=admin)
    assert_problem(response, 409, "in_use")


async def test_zone_can_be_deleted_once_its_pump_and_sensor_are_gone(
    client: httpx.AsyncClient, admin: Headers, fleet: Fleet
) -> None:
    zone_id = fleet["zone"]["id"]
    for kind in ("pumps", "sensors"):
        item = fleet[kind.rstrip("s")]
        response = await client.delete(f"/v1/{kind}/{item['id']}", headers=admin)
        assert response.status_code == 204
    response = await client.delete(f"/v1/zones/{zone_id}", headers=admin)
    assert response.status_code == 204


async def test_deleting_a_zone_keeps_its_default_water_source(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    zone = await make_zone(client, admin)
    pump = await make_pump(client, admin, zone_id=zone["id"])
    assert (await client.delete(f"/v1/pumps/{pump['id']}", headers=admin)).status_code == 204
    assert (await client.delete(f"/v1/zones/{zone['id']}", headers=admin)).status_code == 204
    source = await client.get(f"/v1/water-sources/{pump['water_source_id']}", headers=admin)
    assert source.status_code == 200
