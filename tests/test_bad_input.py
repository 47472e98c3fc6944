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


async def test_null_for_a_required_field_in_a_patch_is_422(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    zone = (
        await client.post("/v1/zones", json={"name": "z", "timezone": "UTC"}, headers=admin)
    ).json()
    response = await client.patch(
        f"/v1/zones/{zone['id']}", json={"version": 1, "name": None}, headers=admin
    )
    assert response.status_code == 422
    unchanged = (await client.get(f"/v1/zones/{zone['id']}", headers=admin)).json()
    assert unchanged["version"] == 1


async def test_default_water_source_name_already_taken_still_makes_a_pump(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    zone = (
        await client.post("/v1/zones", json={"name": "North", "timezone": "UTC"}, headers=admin)
    ).json()
    await client.post("/v1/water-sources", json={"name": "North (default)"}, headers=admin)
    response = await client.post(
        "/v1/pumps",
        json={"zone_id": zone["id"], "name": "p", "hardware_id": "p1"},
        headers=admin,
    )
    assert response.status_code == 201, response.text
