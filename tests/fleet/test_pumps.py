"""Pumps: CRUD, the zone's default water source and the site's runtime/cooldown limits."""

import asyncio
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from irrigation.app import create_app
from irrigation.gateway import HARDWARE_ID_PATTERN
from irrigation.settings import Settings
from tests.fleet.conftest import Fleet
from tests.support.api import Headers
from tests.support.factories import activate, make_pump, make_water_source, make_zone
from tests.support.problems import assert_invalid, assert_problem


async def test_create_pump_returns_201_with_the_full_pump(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    zone = await make_zone(client, admin)
    source = await make_water_source(client, admin)
    response = await client.post(
        "/v1/pumps",
        json={
            "zone_id": zone["id"],
            "water_source_id": source["id"],
            "name": "Drip line 1",
            "hardware_id": "relay-01",
            "max_runtime_s": 20,
            "cooldown_s": 60,
        },
        headers=admin,
    )
    assert response.status_code == 201, response.text
    pump = response.json()
    assert uuid.UUID(pump["id"])
    assert pump["version"] == 1
    assert pump["zone_id"] == zone["id"]
    assert pump["water_source_id"] == source["id"]
    assert pump["name"] == "Drip line 1"
    assert pump["hardware_id"] == "relay-01"
    assert pump["max_runtime_s"] == 20
    assert pump["cooldown_s"] == 60
    assert pump["enabled"] is True
    assert pump["status"] == "idle"
    assert pump["cooldown_until"] is None
    assert pump["fault"] is None
    assert pump["fault_at"] is None


async def test_pump_without_limits_gets_the_safe_defaults(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    zone = await make_zone(client, admin)
    pump = await make_pump(client, admin, zone_id=zone["id"])
    assert pump["max_runtime_s"] == 30
    assert pump["cooldown_s"] == 900


async def test_pump_without_water_source_uses_the_zones_default_made_once(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    zone = await make_zone(client, admin, "Orchard")
    first = await make_pump(client, admin, zone_id=zone["id"])
    source_id = first["water_source_id"]
    source = await client.get(f"/v1/water-sources/{source_id}", headers=admin)
    assert source.status_code == 200
    assert source.json()["name"] == "Orchard (default)"
    after = (await client.get(f"/v1/zones/{zone['id']}", headers=admin)).json()
    assert after["default_water_source_id"] == source_id

    second = await make_pump(client, admin, zone_id=zone["id"])
    assert second["water_source_id"] == source_id
    sources = (await client.get("/v1/water-sources", headers=admin)).json()["items"]
    assert [s["id"] for s in sources] == [source_id]


async def test_concurrent_first_pumps_of_a_zone_share_one_default_water_source(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    zone = await make_zone(client, admin)
    pumps = await asyncio.gather(*(make_pump(client, admin, zone_id=zone["id"]) for _ in range(4)))
    assert len({p["water_source_id"] for p in pumps}) == 1
    sources = (await client.get("/v1/water-sources", headers=admin)).json()["items"]
    assert len(sources) == 1


async def test_get_and_list_pumps_show_what_was_created(
    client: httpx.AsyncClient, reader: Headers, fleet: Fleet
) -> None:
    pump = fleet["pump"]
    one = await client.get(f"/v1/pumps/{pump['id']}", headers=reader)
    assert one.status_code == 200
    assert one.json() == pump
    listed = await client.get("/v1/pumps", headers=reader)
    assert listed.json() == {"items": [pump], "next_cursor": None}


async def test_patch_pump_changes_fields_and_bumps_the_version(
    client: httpx.AsyncClient, admin: Headers, fleet: Fleet
) -> None:
    pump = fleet["pump"]
    response = await client.patch(
        f"/v1/pumps/{pump['id']}",
        json={"version": 1, "name": "Renamed", "max_runtime_s": 10, "enabled": False},
        headers=admin,
    )
    assert response.status_code == 200, response.text
    assert response.json() == {
        **pump,
        "name": "Renamed",
        "max_runtime_s": 10,
        "enabled": False,
        "status": "disabled",
        "version": 2,
    }


async def test_patch_pump_moves_it_to_another_zone_and_source(
    client: httpx.AsyncClient, admin: Headers, fleet: Fleet
) -> None:
    zone = await make_zone(client, admin, "South")
    source = await make_water_source(client, admin, "Tank")
    response = await client.patch(
        f"/v1/pumps/{fleet['pump']['id']}",
        json={"version": 1, "zone_id": zone["id"], "water_source_id": source["id"]},
        headers=admin,
    )
    assert response.status_code == 200, response.text
    assert response.json()["zone_id"] == zone["id"]
    assert response.json()["water_source_id"] == source["id"]


async def test_delete_pump_is_204_and_it_is_gone(
    client: httpx.AsyncClient, admin: Headers, fleet: Fleet
) -> None:
    pump_id = fleet["pump"]["id"]
    response = await client.delete(f"/v1/pumps/{pump_id}", headers=admin)
    assert response.status_code == 204
    gone = await client.get(f"/v1/pumps/{pump_id}", headers=admin)
    assert_problem(gone, 404, "not_found")


async def test_second_pump_with_the_same_hardware_id_is_409_duplicate(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    zone = await make_zone(client, admin)
    await make_pump(client, admin, "relay-07", zone_id=zone["id"])
    response = await client.post(
        "/v1/pumps",
        json={"zone_id": zone["id"], "name": "Again", "hardware_id": "relay-07"},
        headers=admin,
    )
    assert_problem(response, 409, "duplicate")


async def test_pump_naming_a_zone_that_does_not_exist_is_422(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    response = await client.post(
        "/v1/pumps",
        json={"zone_id": str(uuid.uuid4()), "name": "P", "hardware_id": "relay-01"},
        headers=admin,
    )
    assert_invalid(response, "body.zone_id")


# Not a device address: empty, too long, no path separators or `..` alone, no MQTT
# wildcards, no leading punctuation, nothing outside [A-Za-z0-9._-].
NOT_AN_ADDRESS = [
    "",
    "x" * 65,
    "has space",
    "semi;colon",
    "a/b",
    "..",
    ".hidden",
    "-lead",
    "_lead",
    "a+b",
    "a#b",
    "a:b",
    "pump\u00e9",
]
ADDRESSES = ["a", "7", "relay-01", "Relay_01.b", "x" * 64, "a..b"]


async def test_a_hardware_id_that_cannot_be_a_device_address_is_422(
    client: httpx.AsyncClient, admin: Headers, fleet: Fleet, subtests: pytest.Subtests
) -> None:
    pump = fleet["pump"]
    for hardware_id in NOT_AN_ADDRESS:
        with subtests.test(hardware_id=hardware_id, method="POST"):
            response = await client.post(
                "/v1/pumps",
                json={"zone_id": pump["zone_id"], "name": "P", "hardware_id": hardware_id},
                headers=admin,
            )
            assert_invalid(response, "body.hardware_id")
        with subtests.test(hardware_id=hardware_id, method="PATCH"):
            response = await client.patch(
                f"/v1/pumps/{pump['id']}",
                json={"version": 1, "hardware_id": hardware_id},
                headers=admin,
            )
            assert_invalid(response, "body.hardware_id")
    assert (await client.get(f"/v1/pumps/{pump['id']}", headers=admin)).json() == pump


async def test_every_device_address_is_accepted(
    client: httpx.AsyncClient, admin: Headers, fleet: Fleet
) -> None:
    for hardware_id in ADDRESSES:
        made = await make_pump(client, admin, hardware_id, zone_id=fleet["zone"]["id"])
        assert made["hardware_id"] == hardware_id


def test_the_hardware_id_pattern_is_in_the_openapi_document() -> None:
    schemas = create_app(Settings()).openapi()["components"]["schemas"]
    for name in ("PumpCreate", "PumpUpdate"):
        field = schemas[name]["properties"]["hardware_id"]
        constraint = field if "pattern" in field else field["anyOf"][0]
        assert constraint["pattern"] == HARDWARE_ID_PATTERN, name
        assert constraint["maxLength"] == 64


# A run in progress ----------------------------------------------------------------------


async def test_what_a_running_pump_is_bound_to_cannot_change_until_its_run_ends(
    client: httpx.AsyncClient, admin: Headers, fleet: Fleet, subtests: pytest.Subtests
) -> None:
    pump = fleet["pump"]
    other_zone = await make_zone(client, admin)
    other_source = await make_water_source(client, admin, "Tank")
    run = await activate(client, admin, pump["id"], 5)  # admitted, queued: the pump is taken
    assert run.status_code == 202, run.text
    changes = {
        "hardware_id": "relay-other",
        "water_source_id": other_source["id"],
        "zone_id": other_zone["id"],
        # The flow the run was admitted with is what its source's budget counts.
        "nominal_flow_lpm": 25.5,
    }
    for field, value in changes.items():
        with subtests.test(field=field):
            response = await client.patch(
                f"/v1/pumps/{pump['id']}", json={"version": 1, field: value}, headers=admin
            )
            body = assert_problem(response, 409, "pump_running")
            assert body["fields"] == [field]
    unchanged = (await client.get(f"/v1/pumps/{pump['id']}", headers=admin)).json()
    assert {k: unchanged[k] for k in changes} == {k: pump[k] for k in changes}

    # What does not move the run is allowed, and so is naming the same values again.
    same = {**{k: pump[k] for k in changes}, "name": "Renamed", "version": 1}
    renamed = await client.patch(f"/v1/pumps/{pump['id']}", json=same, headers=admin)
    assert renamed.status_code == 200, renamed.text

    assert (await client.post(f"/v1/pumps/{pump['id']}/stop", headers=admin)).status_code == 200
    moved = await client.patch(
        f"/v1/pumps/{pump['id']}", json={"version": 2, **changes}, headers=admin
    )
    assert moved.status_code == 200, moved.text
    assert moved.json()["hardware_id"] == "relay-other"


async def test_a_stale_version_is_told_before_the_running_pump(
    client: httpx.AsyncClient, admin: Headers, fleet: Fleet
) -> None:
    pump = fleet["pump"]
    assert (await activate(client, admin, pump["id"], 5)).status_code == 202
    response = await client.patch(
        f"/v1/pumps/{pump['id']}", json={"version": 7, "hardware_id": "x-1"}, headers=admin
    )
    assert_problem(response, 409, "stale_version")


# Limits ----------------------------------------------------------------------------------


async def test_max_runtime_above_the_hard_cap_is_422_naming_the_limit(
    client: httpx.AsyncClient, admin: Headers, settings: Settings
) -> None:
    zone = await make_zone(client, admin)
    response = await client.post(
        "/v1/pumps",
        json={
            "zone_id": zone["id"],
            "name": "P",
            "hardware_id": "relay-01",
            "max_runtime_s": settings.max_runtime_cap_s + 1,
        },
        headers=admin,
    )
    body = assert_invalid(response, "body.max_runtime_s")
    assert body["limit"] == settings.max_runtime_cap_s == 30
    assert "30" in body["detail"]
    listed = await client.get("/v1/pumps", headers=admin)
    assert listed.json()["items"] == []


async def test_max_runtime_at_the_hard_cap_is_accepted(
    client: httpx.AsyncClient, admin: Headers, settings: Settings
) -> None:
    zone = await make_zone(client, admin)
    pump = await make_pump(
        client, admin, zone_id=zone["id"], max_runtime_s=settings.max_runtime_cap_s
    )
    assert pump["max_runtime_s"] == settings.max_runtime_cap_s


async def test_raising_max_runtime_above_the_cap_by_patch_is_422(
    client: httpx.AsyncClient, admin: Headers, fleet: Fleet, settings: Settings
) -> None:
    pump = fleet["pump"]
    response = await client.patch(
        f"/v1/pumps/{pump['id']}",
        json={"version": 1, "max_runtime_s": settings.max_runtime_cap_s + 1},
        headers=admin,
    )
    body = assert_invalid(response, "body.max_runtime_s")
    assert body["limit"] == settings.max_runtime_cap_s
    unchanged = await client.get(f"/v1/pumps/{pump['id']}", headers=admin)
    assert unchanged.json() == pump


async def test_out_of_range_durations_are_422_not_500(
    client: httpx.AsyncClient, admin: Headers, fleet: Fleet, subtests: pytest.Subtests
) -> None:
    pump = fleet["pump"]
    for field in ("max_runtime_s", "cooldown_s"):
        for value in (-1, 2**31, 10**20, 1.5, "ten", None):
            with subtests.test(field=field, value=value, method="POST"):
                response = await client.post(
                    "/v1/pumps",
                    json={
                        "zone_id": pump["zone_id"],
                        "name": "P",
                        "hardware_id": "relay-99",
                        field: value,
                    },
                    headers=admin,
                )
                if value is None:  # null means "the default" on create
                    assert response.status_code == 201, response.text
                    await client.delete(f"/v1/pumps/{response.json()['id']}", headers=admin)
                else:
                    assert_invalid(response, f"body.{field}")
            if value is None:
                continue
            with subtests.test(field=field, value=value, method="PATCH"):
                response = await client.patch(
                    f"/v1/pumps/{pump['id']}", json={"version": 1, field: value}, headers=admin
                )
                assert_invalid(response, f"body.{field}")
    unchanged = await client.get(f"/v1/pumps/{pump['id']}", headers=admin)
    assert unchanged.json() == pump


@pytest.fixture
async def strict_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The same database, served by an app whose site minimum cooldown is 15 minutes."""
    app: FastAPI = create_app(settings.model_copy(update={"min_cooldown_s": 900}))
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            yield c
    finally:
        await app.state.redis.aclose()
        await app.state.engine.dispose()


async def test_cooldown_below_the_site_minimum_is_422_naming_the_limit(
    strict_client: httpx.AsyncClient, admin: Headers
) -> None:
    zone = await make_zone(strict_client, admin)
    response = await strict_client.post(
        "/v1/pumps",
        json={"zone_id": zone["id"], "name": "P", "hardware_id": "relay-01", "cooldown_s": 899},
        headers=admin,
    )
    body = assert_invalid(response, "body.cooldown_s")
    assert body["limit"] == 900
    assert "900" in body["detail"]
    at_minimum = await make_pump(strict_client, admin, zone_id=zone["id"], cooldown_s=900)
    assert at_minimum["cooldown_s"] == 900


async def test_lowering_cooldown_below_the_site_minimum_by_patch_is_422(
    strict_client: httpx.AsyncClient, admin: Headers
) -> None:
    zone = await make_zone(strict_client, admin)
    pump = await make_pump(strict_client, admin, zone_id=zone["id"])
    response = await strict_client.patch(
        f"/v1/pumps/{pump['id']}", json={"version": 1, "cooldown_s": 0}, headers=admin
    )
    body = assert_invalid(response, "body.cooldown_s")
    assert body["limit"] == 900
