"""Decision filters: a time without a UTC offset is a 422 naming the parameter, never a
guess (or a 500)."""

import httpx

from tests.support.factories import make_pump


async def test_since_and_until_need_an_offset(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    pump = await make_pump(client, admin, "hw-1")
    url = f"/v1/zones/{pump['zone_id']}/decisions"
    for name in ("since", "until"):
        naive = await client.get(url, params={name: "2026-11-23T06:00:00"}, headers=admin)
        assert naive.status_code == 422, naive.text
        assert naive.json()["errors"][0]["path"] == f"query.{name}"
        aware = await client.get(url, params={name: "2026-11-23T06:00:00+01:00"}, headers=admin)
        assert aware.status_code == 200, aware.text
