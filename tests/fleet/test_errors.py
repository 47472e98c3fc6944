"""Bad input of every kind gets a problem+json 4xx naming what is wrong, never a 500."""

from collections.abc import AsyncIterator

import httpx
import pytest

from irrigation.settings import Settings
from tests.fleet.conftest import Fleet
from tests.support.api import Headers
from tests.support.factories import make_zone
from tests.support.problems import assert_invalid, assert_problem


async def test_unknown_timezone_is_422_naming_body_timezone(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    response = await client.post(
        "/v1/zones", json={"name": "North", "timezone": "Mars/Olympus"}, headers=admin
    )
    body = assert_invalid(response, "body.timezone")
    assert "Mars/Olympus" in body["detail"]


async def test_malformed_json_is_422_not_500(
    client: httpx.AsyncClient, admin: Headers, subtests: pytest.Subtests
) -> None:
    json_headers = {**admin, "Content-Type": "application/json"}
    for raw in [b'{"name": "North", ', b"{'name': 'North'}", b"\xff\xfe", b"nul\x00l"]:
        with subtests.test(raw=raw):
            response = await client.post("/v1/zones", content=raw, headers=json_headers)
            assert_problem(response, 422, "validation_error")


async def test_body_of_the_wrong_shape_is_422(
    client: httpx.AsyncClient, admin: Headers, subtests: pytest.Subtests
) -> None:
    for body in ["", "[]", '"North"', "null", "42", "{}"]:
        with subtests.test(body=body):
            response = await client.post(
                "/v1/zones", content=body, headers={**admin, "Content-Type": "application/json"}
            )
            assert_problem(response, 422, "validation_error")


async def test_extra_fields_are_422_naming_them(
    client: httpx.AsyncClient, admin: Headers, fleet: Fleet, subtests: pytest.Subtests
) -> None:
    zone_id = fleet["zone"]["id"]
    cases = [
        ("POST", "/v1/zones", {"name": "N", "timezone": "UTC", "colour": "green"}),
        ("POST", "/v1/water-sources", {"name": "W", "colour": "blue"}),
        ("POST", "/v1/pumps", {"zone_id": zone_id, "name": "P", "hardware_id": "r", "colour": 1}),
        (
            "POST",
            "/v1/sensors",
            {"zone_id": zone_id, "name": "S", "kind": "rain", "unit": "mm", "colour": 1},
        ),
        ("PATCH", f"/v1/zones/{zone_id}", {"version": 1, "colour": "green"}),
        ("PATCH", f"/v1/pumps/{fleet['pump']['id']}", {"version": 1, "status": "running"}),
        ("PATCH", f"/v1/sensors/{fleet['sensor']['id']}", {"version": 1, "site_id": zone_id}),
        ("POST", "/v1/api-keys", {"name": "k", "scopes": ["read"], "site_id": zone_id}),
    ]
    for method, path, body in cases:
        extra = next(k for k in body if k in ("colour", "status", "site_id"))
        with subtests.test(method=method, path=path):
            response = await client.request(method, path, json=body, headers=admin)
            assert_invalid(response, f"body.{extra}")


async def test_non_uuid_path_id_is_422_naming_the_parameter(
    client: httpx.AsyncClient, admin: Headers, subtests: pytest.Subtests
) -> None:
    cases = [
        ("/v1/zones", "zone_id"),
        ("/v1/water-sources", "water_source_id"),
        ("/v1/pumps", "pump_id"),
        ("/v1/sensors", "sensor_id"),
    ]
    for path, param in cases:
        for method in ("GET", "PATCH", "DELETE"):
            with subtests.test(path=path, method=method):
                body = {"version": 1} if method == "PATCH" else None
                response = await client.request(
                    method, f"{path}/not-a-uuid", json=body, headers=admin
                )
                assert_invalid(response, f"path.{param}")
    response = await client.delete("/v1/api-keys/42", headers=admin)
    assert_invalid(response, "path.key_id")


async def test_text_that_postgres_cannot_store_is_422_not_500(
    client: httpx.AsyncClient, admin: Headers, fleet: Fleet, subtests: pytest.Subtests
) -> None:
    cases = [
        ("POST", "/v1/zones", {"name": "North\x00", "timezone": "UTC"}, "body.name"),
        ("POST", "/v1/water-sources", {"name": "W\x00ll"}, "body.name"),
        (
            "POST",
            "/v1/sensors",
            {"zone_id": fleet["zone"]["id"], "name": "S", "kind": "rain", "unit": "m\x00m"},
            "body.unit",
        ),
        ("PATCH", f"/v1/pumps/{fleet['pump']['id']}", {"version": 1, "name": "\x00"}, "body.name"),
        ("POST", "/v1/api-keys", {"name": "key\x00", "scopes": ["read"]}, "body.name"),
    ]
    for method, path, body, field in cases:
        with subtests.test(method=method, path=path):
            response = await client.request(method, path, json=body, headers=admin)
            assert_invalid(response, field)


async def test_over_long_names_are_422(client: httpx.AsyncClient, admin: Headers) -> None:
    response = await client.post(
        "/v1/zones", json={"name": "n" * 201, "timezone": "UTC"}, headers=admin
    )
    assert_invalid(response, "body.name")


async def test_body_above_the_limit_with_content_length_is_413(
    client: httpx.AsyncClient, admin: Headers, settings: Settings
) -> None:
    name = "n" * settings.max_body_bytes
    response = await client.post("/v1/zones", json={"name": name, "timezone": "UTC"}, headers=admin)
    assert "content-length" in response.request.headers
    body = assert_problem(response, 413, "payload_too_large")
    assert str(settings.max_body_bytes) in body["detail"]


async def test_chunked_body_above_the_limit_without_content_length_is_413(
    client: httpx.AsyncClient, admin: Headers, settings: Settings
) -> None:
    chunk = b" " * 65536

    async def stream() -> AsyncIterator[bytes]:
        yield b'{"name": "North", "timezone": "UTC", "padding": "'
        for _ in range(settings.max_body_bytes // len(chunk) + 1):
            yield chunk
        yield b'"}'

    response = await client.post(
        "/v1/zones",
        content=stream(),
        headers={**admin, "Content-Type": "application/json"},
    )
    assert "content-length" not in response.request.headers
    assert response.request.headers["transfer-encoding"] == "chunked"
    body = assert_problem(response, 413, "payload_too_large")
    assert str(settings.max_body_bytes) in body["detail"]
    assert (await client.get("/v1/zones", headers=admin)).json()["items"] == []


async def test_chunked_body_under_the_limit_is_accepted(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    async def stream() -> AsyncIterator[bytes]:
        yield b'{"name": "North", '
        yield b'"timezone": "UTC"}'

    response = await client.post(
        "/v1/zones", content=stream(), headers={**admin, "Content-Type": "application/json"}
    )
    assert response.status_code == 201, response.text


async def test_unknown_route_is_404_and_unknown_method_405_both_problem_json(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    for headers in (admin, {}):
        response = await client.get("/v1/sprinklers", headers=headers)
        assert_problem(response, 404, "not_found")
    response = await client.put("/v1/zones", json={}, headers=admin)
    assert_problem(response, 405, "method_not_allowed")


async def test_duplicate_name_after_trimming_is_409_not_500(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    await make_zone(client, admin, "North")
    response = await client.post(
        "/v1/zones", json={"name": "  North  ", "timezone": "UTC"}, headers=admin
    )
    assert_problem(response, 409, "duplicate")
