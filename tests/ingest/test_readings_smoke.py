"""First end-to-end look at POST /v1/readings (the full suite lives beside it)."""

from datetime import UTC, datetime, timedelta

import httpx


async def test_batch_counts_inserted_duplicates_and_each_quarantine_reason(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    zone = (
        await client.post("/v1/zones", json={"name": "z", "timezone": "UTC"}, headers=admin)
    ).json()
    sensor = (
        await client.post(
            "/v1/sensors",
            json={"zone_id": zone["id"], "name": "m", "kind": "soil_moisture", "unit": "%"},
            headers=admin,
        )
    ).json()
    now = datetime.now(UTC).replace(microsecond=0)
    sid = sensor["id"]
    items = [
        {"sensor_id": sid, "ts": (now - timedelta(minutes=1)).isoformat(), "value": 30.5},
        {"sensor_id": sid, "ts": (now - timedelta(minutes=2)).isoformat(), "value": 31.0},
        {"sensor_id": sid, "ts": (now - timedelta(minutes=2)).isoformat(), "value": 31.0},
        {"sensor_id": sid, "ts": "not a time", "value": 1},
        {"sensor_id": "00000000-0000-0000-0000-000000000000", "ts": now.isoformat(), "value": 1},
        {"sensor_id": sid, "ts": now.isoformat(), "value": 1, "unit": "°C"},
        {"sensor_id": sid, "ts": now.isoformat(), "value": 101},
        {"sensor_id": sid, "ts": "2026-01-01T00:00:00", "value": 1},
        {"sensor_id": sid, "ts": now.isoformat(), "value": 1, "quality": 10},
    ]
    response = await client.post("/v1/readings", json={"readings": items}, headers=admin)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["total"], body["inserted"], body["duplicates"], body["quarantined"]) == (
        9,
        2,
        1,
        6,
    )
    reasons = {q["index"]: q["reason"] for q in body["quarantine"]}
    assert reasons == {
        3: "parse_error",
        4: "unknown_sensor",
        5: "invalid_unit",
        6: "out_of_range",
        7: "invalid_timestamp",
        8: "low_quality",
    }
    latest = (await client.get(f"/v1/sensors/{sid}/latest", headers=admin)).json()
    assert latest["value"] == 30.5
    assert latest["source"] == "cache"
    assert [r["value"] for r in latest["recent"]] == [30.5, 31.0]
