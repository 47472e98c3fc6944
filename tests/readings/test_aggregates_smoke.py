"""A first exact check of the aggregates (the full suite lives beside it)."""

from datetime import UTC, datetime, timedelta

import httpx


async def test_hourly_points_match_the_readings_including_partial_edges(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    zone = (
        await client.post(
            "/v1/zones", json={"name": "z", "timezone": "Europe/Berlin"}, headers=admin
        )
    ).json()
    sensor = (
        await client.post(
            "/v1/sensors",
            json={"zone_id": zone["id"], "name": "m", "kind": "soil_moisture", "unit": "%"},
            headers=admin,
        )
    ).json()
    base = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=5)
    values = [(base + timedelta(minutes=7 * i), float(i % 50)) for i in range(40)]
    items = [{"sensor_id": sensor["id"], "ts": ts.isoformat(), "value": v} for ts, v in values]
    assert (await client.post("/v1/readings", json={"readings": items}, headers=admin)).json()[
        "inserted"
    ] == 40

    start = base + timedelta(minutes=20)  # a partial first hour
    end = base + timedelta(hours=4, minutes=10)  # a partial last hour
    response = await client.get(
        f"/v1/sensors/{sensor['id']}/aggregates",
        params={"bucket": "hour", "start": start.isoformat(), "end": end.isoformat()},
        headers=admin,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["timezone"] == "Europe/Berlin"

    expected: dict[datetime, list[float]] = {}
    for ts, v in values:
        if start <= ts < end:
            expected.setdefault(ts.replace(minute=0), []).append(v)
    got = {datetime.fromisoformat(p["start"]): p for p in body["points"]}
    assert set(got) == set(expected)
    for hour, vs in expected.items():
        point = got[hour]
        assert point["count"] == len(vs)
        assert point["min"] == min(vs)
        assert point["max"] == max(vs)
        assert abs(point["avg"] - sum(vs) / len(vs)) < 1e-9

    csv = await client.get(
        f"/v1/sensors/{sensor['id']}/readings",
        params={"start": start.isoformat(), "end": end.isoformat()},
        headers={**admin, "Accept": "text/csv"},
    )
    assert csv.status_code == 200
    assert csv.text.splitlines()[0] == "ts,value,quality,raw_value"
    assert len(csv.text.splitlines()) == 1 + sum(len(v) for v in expected.values())
