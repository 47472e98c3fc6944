"""Inputs that get past the schema but not past PostgreSQL are the client's error, never a 500."""

import httpx


async def test_nul_byte_in_a_name_is_422_not_500(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    response = await client.post(
        "/v1/zones", json={"name": "field\u0000one", "timezone": "UTC"}, headers=admin
    )
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"


async def test_huge_cooldown_is_422_not_500(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    zone = (
        await client.post("/v1/zones", json={"name": "z", "timezone": "UTC"}, headers=admin)
    ).json()
    response = await client.post(
        "/v1/pumps",
        json={"zone_id": zone["id"], "name": "p", "hardware_id": "p1", "cooldown_s": 10**12},
        headers=admin,
    )
    assert response.status_code == 422
