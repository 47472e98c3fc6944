"""Flow sensors attached to a pump (`pump_id`) or a water source (`water_source_id`): only
flow sensors, one attachment each, one meter per pump or source, only the site's own."""

import httpx

from tests.fleet.conftest import Fleet
from tests.support.api import Headers
from tests.support.factories import make_pump, make_sensor, make_water_source
from tests.support.problems import assert_invalid, assert_problem

FLOW = {"kind": "flow", "unit": "L/min", "name": "Line meter"}


async def test_a_flow_sensor_attaches_to_a_pump_and_is_listed_by_it(
    client: httpx.AsyncClient, admin: Headers, fleet: Fleet
) -> None:
    pump = fleet["pump"]
    meter = await make_sensor(client, admin, fleet["zone"]["id"], pump_id=pump["id"], **FLOW)
    assert (meter["pump_id"], meter["water_source_id"]) == (pump["id"], None)
    listed = await client.get("/v1/sensors", params={"pump_id": pump["id"]}, headers=admin)
    assert [s["id"] for s in listed.json()["items"]] == [meter["id"]]
    unattached = await client.get(
        "/v1/sensors", params={"water_source_id": fleet["water_source"]["id"]}, headers=admin
    )
    assert unattached.json()["items"] == []


async def test_a_flow_sensor_attaches_to_a_source_then_moves_to_a_pump(
    client: httpx.AsyncClient, admin: Headers, fleet: Fleet
) -> None:
    source = fleet["water_source"]
    meter = await make_sensor(
        client, admin, fleet["zone"]["id"], water_source_id=source["id"], **FLOW
    )
    assert meter["water_source_id"] == source["id"]
    both = await client.patch(
        f"/v1/sensors/{meter['id']}",
        json={"version": 1, "pump_id": fleet["pump"]["id"]},
        headers=admin,
    )
    assert_invalid(both, "body.pump_id")
    moved = await client.patch(
        f"/v1/sensors/{meter['id']}",
        json={"version": 1, "pump_id": fleet["pump"]["id"], "water_source_id": None},
        headers=admin,
    )
    assert moved.status_code == 200, moved.text
    assert (moved.json()["pump_id"], moved.json()["water_source_id"]) == (
        fleet["pump"]["id"],
        None,
    )
    detached = await client.patch(
        f"/v1/sensors/{meter['id']}", json={"version": 2, "pump_id": None}, headers=admin
    )
    assert detached.json()["pump_id"] is None


async def test_only_flow_sensors_attach_and_never_to_both(
    client: httpx.AsyncClient, admin: Headers, fleet: Fleet
) -> None:
    zone_id, pump_id = fleet["zone"]["id"], fleet["pump"]["id"]
    moisture = {"zone_id": zone_id, "name": "Probe", "kind": "soil_moisture", "unit": "%"}
    refused = await client.post("/v1/sensors", json={**moisture, "pump_id": pump_id}, headers=admin)
    assert_invalid(refused)
    both = {**FLOW, "zone_id": zone_id, "pump_id": pump_id}
    both["water_source_id"] = fleet["water_source"]["id"]
    assert_invalid(await client.post("/v1/sensors", json=both, headers=admin))
    probe = fleet["sensor"]  # a soil moisture sensor: not attachable on PATCH either
    patched = await client.patch(
        f"/v1/sensors/{probe['id']}", json={"version": 1, "pump_id": pump_id}, headers=admin
    )
    assert_invalid(patched, "body.pump_id")


async def test_one_meter_per_pump_and_per_source(
    client: httpx.AsyncClient, admin: Headers, fleet: Fleet
) -> None:
    zone_id = fleet["zone"]["id"]
    for field, target in (("pump_id", fleet["pump"]), ("water_source_id", fleet["water_source"])):
        await make_sensor(client, admin, zone_id, **{field: target["id"]}, **FLOW)
        second = await client.post(
            "/v1/sensors",
            json={**FLOW, "zone_id": zone_id, field: target["id"], "name": "Second meter"},
            headers=admin,
        )
        assert_problem(second, 409, "duplicate")


async def test_another_sites_pump_or_source_is_refused_like_a_missing_one(
    client: httpx.AsyncClient, admin: Headers, fleet: Fleet, other_fleet: Fleet
) -> None:
    for field, key in (("pump_id", "pump"), ("water_source_id", "water_source")):
        body = {**FLOW, "zone_id": fleet["zone"]["id"], field: other_fleet[key]["id"]}
        assert_invalid(await client.post("/v1/sensors", json=body, headers=admin), f"body.{field}")


async def test_deleting_the_pump_leaves_the_meter_unattached(
    client: httpx.AsyncClient, admin: Headers, fleet: Fleet
) -> None:
    source = await make_water_source(client, admin, "Spare well")
    pump = await make_pump(client, admin, zone_id=fleet["zone"]["id"], water_source_id=source["id"])
    meter = await make_sensor(client, admin, fleet["zone"]["id"], pump_id=pump["id"], **FLOW)
    gone = await client.delete(f"/v1/pumps/{pump['id']}", headers=admin)
    assert gone.status_code == 204, gone.text
    after = await client.get(f"/v1/sensors/{meter['id']}", headers=admin)
    assert after.json()["pump_id"] is None
