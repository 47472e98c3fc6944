"""Raw readings: cursor pagination walks every reading of the range exactly once, oldest
first; `Accept: text/csv` streams the same readings as CSV rows."""

import csv
import io
from datetime import UTC, datetime, timedelta

import httpx

from tests.readings.helpers import Reading, ingest
from tests.support.api import Headers
from tests.support.factories import make_sensor, make_zone
from tests.support.problems import assert_invalid


async def readings_of_one_sensor(
    client: httpx.AsyncClient, admin: Headers, count: int
) -> tuple[str, list[Reading]]:
    zone = (await make_zone(client, admin, timezone="Europe/Berlin"))["id"]
    sensor = (await make_sensor(client, admin, zone))["id"]
    other = (await make_sensor(client, admin, zone))["id"]
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(days=5)
    readings = [
        Reading(
            sensor, base + timedelta(seconds=57 * i, microseconds=i), i * 0.37 % 100, 50 + i % 51
        )
        for i in range(count)
    ]
    noise = [Reading(other, r.ts, 1.0) for r in readings[:50]]
    await ingest(client, admin, readings[1::2] + noise)
    await ingest(client, admin, readings[::2])  # late ones, in between
    return sensor, readings


async def test_pages_walk_every_reading_of_the_range_once_in_order(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    sensor, readings = await readings_of_one_sensor(client, admin, 237)
    start, end = readings[10].ts, readings[-10].ts
    want = [r for r in readings if start <= r.ts < end]
    seen: list[dict[str, object]] = []
    params: dict[str, str | int] = {"start": start.isoformat(), "end": end.isoformat(), "limit": 50}
    pages = 0
    while True:
        response = await client.get(f"/v1/sensors/{sensor}/readings", params=params, headers=admin)
        assert response.status_code == 200, response.text
        body = response.json()
        pages += 1
        seen += body["items"]
        if body["next_cursor"] is None:
            break
        params["cursor"] = body["next_cursor"]
    assert pages == -(-len(want) // 50)
    assert [datetime.fromisoformat(str(item["ts"])) for item in seen] == [r.ts for r in want]
    assert [(item["value"], item["quality"]) for item in seen] == [
        (r.value, r.quality) for r in want
    ]


async def test_bad_cursor_and_range_are_422(client: httpx.AsyncClient, admin: Headers) -> None:
    zone = (await make_zone(client, admin, timezone="UTC"))["id"]
    sensor = (await make_sensor(client, admin, zone))["id"]
    path = f"/v1/sensors/{sensor}/readings"
    assert_invalid(
        await client.get(path, params={"cursor": "not-a-cursor"}, headers=admin),
        "query.cursor",
        code="invalid_cursor",
    )
    now = datetime.now(UTC).isoformat()
    assert_invalid(
        await client.get(path, params={"start": now, "end": now}, headers=admin), "query.start"
    )
    assert_invalid(
        await client.get(path, params={"start": "2026-11-01T00:00:00"}, headers=admin),
        "query.start",
    )


async def test_csv_export_has_exactly_the_readings_of_the_range(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    sensor, readings = await readings_of_one_sensor(client, admin, 5600)  # > one 5000-row chunk
    start, end = readings[3].ts, readings[-3].ts
    response = await client.get(
        f"/v1/sensors/{sensor}/readings",
        params={"start": start.isoformat(), "end": end.isoformat()},
        headers={**admin, "Accept": "text/csv"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    assert f'filename="{sensor}.csv"' in response.headers["content-disposition"]
    rows = list(csv.reader(io.StringIO(response.text)))
    assert rows[0] == ["ts", "value", "quality", "raw_value"]
    assert rows[1:] == [
        [r.ts.isoformat(), repr(r.value), str(r.quality), repr(r.value)]
        for r in readings
        if start <= r.ts < end
    ]
