"""A sensor with readings cannot be deleted, though sensor_readings has no foreign key:
the hourly rollup written in the same statement holds the reference."""

from datetime import UTC, datetime, timedelta

import httpx


async def test_a_sensor_with_readings_is_in_use_and_one_without_is_deleted(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    zone = (
        await client.post("/v1/zones", json={"name": "z", "timezone": "UTC"}, headers=admin)
    ).json()
    sensors = []
    for name in ("used", "unused"):
        created = await client.post(
            "/v1/sensors",
            json={"zone_id": zone["id"], "name": name, "kind": "soil_moisture", "unit": "%"},
            headers=admin,
        )
        sensors.append(created.json())
    ts = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    posted = await client.post(
        "/v1/readings",
        json={"readings": [{"sensor_id": sensors[0]["id"], "ts": ts, "value": 40}]},
        headers=admin,
    )
    assert posted.json()["inserted"] == 1

    refused = await client.delete(f"/v1/sensors/{sensors[0]['id']}", headers=admin)
    assert refused.status_code == 409, refused.text
    assert refused.json()["code"] == "in_use"
    latest = await client.get(f"/v1/sensors/{sensors[0]['id']}/latest", headers=admin)
    assert latest.json()["recent"][0]["value"] == 40

    deleted = await client.delete(f"/v1/sensors/{sensors[1]['id']}", headers=admin)
    assert deleted.status_code == 204
