"""Lists: cursor pagination that returns each row once, bounded pages, and filters."""

import base64
import json
import uuid

import httpx
import pytest

from tests.support.api import Headers, walk
from tests.support.factories import make_pump, make_sensor, make_water_source, make_zone
from tests.support.problems import assert_invalid


async def test_walking_seven_zones_three_at_a_time_returns_each_once_in_order(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    made = [(await make_zone(client, admin, f"Zone {i}"))["id"] for i in range(7)]
    pages = await walk(client, "/v1/zones", admin, limit=3)
    assert [len(page) for page in pages] == [3, 3, 1]
    assert [zone["id"] for page in pages for zone in page] == made
    # A full last page announces no next page.
    pages = await walk(client, "/v1/zones", admin, limit=7)
    assert [len(page) for page in pages] == [7]


async def test_walking_pumps_and_sensors_returns_each_once(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    zone = await make_zone(client, admin)
    pumps = [(await make_pump(client, admin, zone_id=zone["id"]))["id"] for _ in range(7)]
    sensors = [(await make_sensor(client, admin, zone["id"]))["id"] for _ in range(7)]
    assert [p["id"] for page in await walk(client, "/v1/pumps", admin, 3) for p in page] == pumps
    walked = [s["id"] for page in await walk(client, "/v1/sensors", admin, 3) for s in page]
    assert walked == sensors


LIST_PATHS = ["/v1/zones", "/v1/water-sources", "/v1/pumps", "/v1/sensors", "/v1/api-keys"]


async def test_limit_between_1_and_500_is_accepted(
    client: httpx.AsyncClient, admin: Headers, subtests: pytest.Subtests
) -> None:
    for path in LIST_PATHS:
        for limit in (1, 500):
            with subtests.test(path=path, limit=limit):
                response = await client.get(path, params={"limit": limit}, headers=admin)
                assert response.status_code == 200, response.text


async def test_limit_outside_1_to_500_is_422(
    client: httpx.AsyncClient, admin: Headers, subtests: pytest.Subtests
) -> None:
    for path in LIST_PATHS:
        for limit in ("0", "-1", "501", "many"):
            with subtests.test(path=path, limit=limit):
                response = await client.get(path, params={"limit": limit}, headers=admin)
                assert_invalid(response, "query.limit")


def _cursor(payload: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


BAD_CURSORS = {
    "not base64": "!!!not-a-cursor!!!",
    "bad padding": "a",
    "not json": base64.urlsafe_b64encode(b"hello").decode(),
    "not utf-8": base64.urlsafe_b64encode(b"\xff\xfe\xfd").decode(),
    "a number": _cursor(42),
    "three parts": _cursor(["2024-01-01T00:00:00+00:00", str(uuid.uuid4()), 1]),
    "bad time": _cursor(["yesterday", str(uuid.uuid4())]),
    "naive time": _cursor(["2024-01-01T00:00:00", str(uuid.uuid4())]),
    "bad uuid": _cursor(["2024-01-01T00:00:00+00:00", "nope"]),
    "numeric uuid": _cursor(["2024-01-01T00:00:00+00:00", 12345]),
    "list uuid": _cursor(["2024-01-01T00:00:00+00:00", []]),
    "numeric time": _cursor([1700000000, str(uuid.uuid4())]),
    "time before year 1 in UTC": _cursor(["0001-01-01T00:00:00+14:00", str(uuid.uuid4())]),
    "time after year 9999 in UTC": _cursor(["9999-12-31T23:59:59-14:00", str(uuid.uuid4())]),
}


async def test_bad_cursor_is_422_not_500(
    client: httpx.AsyncClient, admin: Headers, subtests: pytest.Subtests
) -> None:
    for path in ("/v1/zones", "/v1/api-keys"):
        for case, cursor in BAD_CURSORS.items():
            with subtests.test(path=path, case=case):
                response = await client.get(path, params={"cursor": cursor}, headers=admin)
                assert_invalid(response, "query.cursor", code="invalid_cursor")
    with subtests.test("longer than 200 characters"):
        response = await client.get("/v1/zones", params={"cursor": "A" * 201}, headers=admin)
        assert_invalid(response, "query.cursor")


async def test_pumps_filter_by_zone_and_water_source(
    client: httpx.AsyncClient, admin: Headers, reader: Headers
) -> None:
    north = await make_zone(client, admin, "North")
    south = await make_zone(client, admin, "South")
    well = await make_water_source(client, admin, "Well")
    a = await make_pump(client, admin, zone_id=north["id"], water_source_id=well["id"])
    b = await make_pump(client, admin, zone_id=north["id"])
    c = await make_pump(client, admin, zone_id=south["id"], water_source_id=well["id"])

    async def ids(**params: str) -> list[str]:
        response = await client.get("/v1/pumps", params=params, headers=reader)
        assert response.status_code == 200, response.text
        return [p["id"] for p in response.json()["items"]]

    assert await ids(zone_id=north["id"]) == [a["id"], b["id"]]
    assert await ids(zone_id=south["id"]) == [c["id"]]
    assert await ids(water_source_id=well["id"]) == [a["id"], c["id"]]
    assert await ids(zone_id=north["id"], water_source_id=well["id"]) == [a["id"]]
    assert await ids(zone_id=str(uuid.uuid4())) == []


async def test_sensors_filter_by_zone_and_kind(
    client: httpx.AsyncClient, admin: Headers, reader: Headers
) -> None:
    north = await make_zone(client, admin, "North")
    south = await make_zone(client, admin, "South")
    soil = await make_sensor(client, admin, north["id"], kind="soil_moisture")
    rain = await make_sensor(client, admin, north["id"], kind="rain", unit="mm")
    south_soil = await make_sensor(client, admin, south["id"], kind="soil_moisture")

    async def ids(**params: str) -> list[str]:
        response = await client.get("/v1/sensors", params=params, headers=reader)
        assert response.status_code == 200, response.text
        return [s["id"] for s in response.json()["items"]]

    assert await ids(zone_id=north["id"]) == [soil["id"], rain["id"]]
    assert await ids(kind="soil_moisture") == [soil["id"], south_soil["id"]]
    assert await ids(kind="rain") == [rain["id"]]
    assert await ids(zone_id=south["id"], kind="rain") == []


async def test_filtered_list_paginates_over_the_filtered_rows_only(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    north = await make_zone(client, admin, "North")
    south = await make_zone(client, admin, "South")
    wanted = []
    for _ in range(4):
        wanted.append((await make_pump(client, admin, zone_id=north["id"]))["id"])
        await make_pump(client, admin, zone_id=south["id"])
    pages = await walk(client, "/v1/pumps", admin, limit=3, zone_id=north["id"])
    assert [p["id"] for page in pages for p in page] == wanted


async def test_malformed_filters_are_422(
    client: httpx.AsyncClient, admin: Headers, subtests: pytest.Subtests
) -> None:
    cases = [
        ("/v1/pumps", {"zone_id": "north"}, "query.zone_id"),
        ("/v1/pumps", {"water_source_id": "1"}, "query.water_source_id"),
        ("/v1/sensors", {"zone_id": "north"}, "query.zone_id"),
        ("/v1/sensors", {"kind": "telepathy"}, "query.kind"),
    ]
    for path, params, field in cases:
        with subtests.test(path=path, field=field):
            response = await client.get(path, params=params, headers=admin)
            assert_invalid(response, field)
