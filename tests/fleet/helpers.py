"""What a client checks on every answer: the problem+json shape and the fields named in 422s."""

import uuid
from typing import Any

import httpx

Headers = dict[str, str]
PROBLEM_BASE = "https://irrigation.dev/problems/"


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """An RFC 9457 body with a stable `code`; returns it for further checks."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["type"] == PROBLEM_BASE + code.replace("_", "-")
    assert body["status"] == status
    assert body["code"] == code
    assert isinstance(body["title"], str)
    assert body["title"]
    assert isinstance(body["detail"], str)
    assert body["detail"]
    return body


def assert_invalid(
    response: httpx.Response, *paths: str, code: str = "validation_error"
) -> dict[str, Any]:
    """A 422 whose `errors[].path` names every given field."""
    body = assert_problem(response, 422, code)
    named = {error["path"] for error in body["errors"]}
    for path in paths:
        assert path in named, body
    return body


async def created(
    client: httpx.AsyncClient, path: str, body: dict[str, Any], headers: Headers
) -> dict[str, Any]:
    response = await client.post(path, json=body, headers=headers)
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


async def make_zone(
    client: httpx.AsyncClient, headers: Headers, name: str = "North field"
) -> dict[str, Any]:
    return await created(client, "/v1/zones", {"name": name, "timezone": "Europe/Berlin"}, headers)


async def make_water_source(
    client: httpx.AsyncClient, headers: Headers, name: str = "Well"
) -> dict[str, Any]:
    return await created(
        client, "/v1/water-sources", {"name": name, "max_concurrent_pumps": 2}, headers
    )


async def make_pump(
    client: httpx.AsyncClient, headers: Headers, zone_id: str, **fields: Any
) -> dict[str, Any]:
    body = {"zone_id": zone_id, "name": "Pump", "hardware_id": f"hw-{uuid.uuid4().hex[:8]}"}
    return await created(client, "/v1/pumps", {**body, **fields}, headers)


async def make_sensor(
    client: httpx.AsyncClient, headers: Headers, zone_id: str, **fields: Any
) -> dict[str, Any]:
    body = {"zone_id": zone_id, "name": "Probe", "kind": "soil_moisture", "unit": "%"}
    return await created(client, "/v1/sensors", {**body, **fields}, headers)


async def walk(
    client: httpx.AsyncClient, path: str, headers: Headers, limit: int, **filters: str
) -> list[Any]:
    """Every page of a list, following `next_cursor` until it is null."""
    pages: list[Any] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {**filters, "limit": limit}
        if cursor is not None:
            params["cursor"] = cursor
        response = await client.get(path, params=params, headers=headers)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["items"]) <= limit
        pages.append(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return pages
        assert len(pages) < 100, "pagination does not end"
