"""Small builders for pump tests: a zone, water source and pump over the real API."""

from typing import Any

import httpx


async def make_pump(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    hardware_id: str,
    *,
    zone_id: str | None = None,
    water_source_id: str | None = None,
    **fields: Any,
) -> dict[str, Any]:
    if zone_id is None:
        zone = await client.post(
            "/v1/zones", json={"name": f"zone {hardware_id}", "timezone": "UTC"}, headers=headers
        )
        assert zone.status_code == 201, zone.text
        zone_id = zone.json()["id"]
    body: dict[str, Any] = {"zone_id": zone_id, "name": hardware_id, "hardware_id": hardware_id}
    if water_source_id:
        body["water_source_id"] = water_source_id
    response = await client.post("/v1/pumps", json={**body, **fields}, headers=headers)
    assert response.status_code == 201, response.text
    pump: dict[str, Any] = response.json()
    return pump


async def activate(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    pump_id: str,
    duration_s: int = 2,
    **extra: Any,
) -> httpx.Response:
    idem = extra.pop("idempotency_key", None)
    h = {**headers, **({"Idempotency-Key": idem} if idem else {})}
    return await client.post(
        f"/v1/pumps/{pump_id}/activations",
        json={"duration_s": duration_s, "priority": "manual", **extra},
        headers=h,
    )
