"""Who may call: a valid, unrevoked key, with the scope the route needs (admin implies all)."""

import uuid

import httpx
import pytest

from tests.support.api import Headers, bearer
from tests.support.factories import MakeKey, make_zone
from tests.support.problems import assert_problem

# One route of each kind and scope, with a body that would otherwise be valid.
READS = ["/v1/zones", "/v1/water-sources", "/v1/pumps", "/v1/sensors", "/v1/sites/current"]
ZONE = {"name": "North", "timezone": "UTC"}
SOME_ID = "00000000-0000-0000-0000-000000000001"
ADMIN_WRITES: list[tuple[str, str, dict[str, object] | None]] = [
    ("POST", "/v1/zones", ZONE),
    ("POST", "/v1/water-sources", {"name": "Well"}),
    ("POST", "/v1/pumps", {"zone_id": SOME_ID, "name": "P", "hardware_id": "r1"}),
    ("POST", "/v1/sensors", {"zone_id": SOME_ID, "name": "S", "kind": "rain", "unit": "mm"}),
    ("PATCH", f"/v1/zones/{SOME_ID}", {"version": 1}),
    ("DELETE", f"/v1/pumps/{SOME_ID}", None),
    ("GET", "/v1/api-keys", None),
    ("POST", "/v1/api-keys", {"name": "k", "scopes": ["read"]}),
    ("DELETE", f"/v1/api-keys/{SOME_ID}", None),
]


def _assert_unauthorized(response: httpx.Response) -> None:
    assert_problem(response, 401, "unauthorized")
    assert response.headers["www-authenticate"] == "Bearer"


async def test_no_key_is_401_with_a_bearer_challenge(
    client: httpx.AsyncClient, subtests: pytest.Subtests
) -> None:
    for method, path, body in [*(("GET", p, None) for p in READS), *ADMIN_WRITES]:
        with subtests.test(method=method, path=path):
            _assert_unauthorized(await client.request(method, path, json=body))


async def test_unknown_or_malformed_keys_are_401(
    client: httpx.AsyncClient, admin: Headers, subtests: pytest.Subtests
) -> None:
    real = admin["Authorization"].removeprefix("Bearer ")
    for authorization in [
        "Bearer irr_not-a-real-key",
        "Bearer " + real[:-1],
        "Bearer " + real + "x",
        "Bearer ",
        "Basic " + real,
        real,
        "Bearer " + "x" * 5000,
    ]:
        with subtests.test(authorization=authorization[:24]):
            response = await client.get("/v1/zones", headers={"Authorization": authorization})
            _assert_unauthorized(response)


async def test_401_comes_before_any_lookup_so_existence_is_not_revealed(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    zone = await make_zone(client, admin)
    real = await client.get(f"/v1/zones/{zone['id']}")
    made_up = await client.get(f"/v1/zones/{uuid.uuid4()}")
    _assert_unauthorized(real)
    assert real.json() == made_up.json()


async def test_revoked_key_is_401(
    client: httpx.AsyncClient, admin: Headers, make_key: MakeKey
) -> None:
    doomed = bearer(await make_key("read"))
    assert (await client.get("/v1/zones", headers=doomed)).status_code == 200
    key_id = (await client.get("/v1/api-keys", headers=admin)).json()["items"][-1]["id"]
    assert (await client.delete(f"/v1/api-keys/{key_id}", headers=admin)).status_code == 200
    _assert_unauthorized(await client.get("/v1/zones", headers=doomed))


async def test_read_key_may_read_but_every_write_is_403_insufficient_scope(
    client: httpx.AsyncClient, make_key: MakeKey, subtests: pytest.Subtests
) -> None:
    reader = bearer(await make_key("read"))
    for path in READS:
        with subtests.test(method="GET", path=path):
            assert (await client.get(path, headers=reader)).status_code == 200
    for method, path, body in ADMIN_WRITES:
        with subtests.test(method=method, path=path):
            response = await client.request(method, path, json=body, headers=reader)
            problem = assert_problem(response, 403, "insufficient_scope")
            assert problem["required"] == ["admin"]
    assert (await client.get("/v1/zones", headers=reader)).json()["items"] == []


async def test_ingest_and_control_keys_may_not_read_the_fleet(
    client: httpx.AsyncClient, make_key: MakeKey, subtests: pytest.Subtests
) -> None:
    for scope in ("ingest", "control"):
        key = bearer(await make_key(scope))
        with subtests.test(scope=scope):
            response = await client.get("/v1/zones", headers=key)
            problem = assert_problem(response, 403, "insufficient_scope")
            assert problem["required"] == ["read"]
            assert_problem(
                await client.post("/v1/zones", json=ZONE, headers=key), 403, "insufficient_scope"
            )


async def test_admin_key_alone_may_read_and_write(
    client: httpx.AsyncClient, make_key: MakeKey, subtests: pytest.Subtests
) -> None:
    owner = bearer(await make_key("admin"))
    zone = await make_zone(client, owner)
    for path in READS:
        with subtests.test(path=path):
            assert (await client.get(path, headers=owner)).status_code == 200
    patched = await client.patch(
        f"/v1/zones/{zone['id']}", json={"version": 1, "name": "South"}, headers=owner
    )
    assert patched.status_code == 200
    assert (await client.get("/v1/api-keys", headers=owner)).status_code == 200


async def test_403_does_not_reveal_whether_the_object_exists(
    client: httpx.AsyncClient, admin: Headers, make_key: MakeKey
) -> None:
    reader = bearer(await make_key("read"))
    zone = await make_zone(client, admin)
    real = await client.delete(f"/v1/zones/{zone['id']}", headers=reader)
    made_up = await client.delete(f"/v1/zones/{uuid.uuid4()}", headers=reader)
    assert assert_problem(real, 403, "insufficient_scope") == made_up.json()
    assert (await client.get(f"/v1/zones/{zone['id']}", headers=admin)).status_code == 200
