"""The keys API: a secret shown once, lists that never show it, revocation that bites at once."""

import uuid

import httpx
import pytest

from tests.support.api import Headers, bearer, walk
from tests.support.problems import assert_invalid, assert_problem


async def _create(client: httpx.AsyncClient, admin: Headers, *scopes: str) -> dict[str, object]:
    response = await client.post(
        "/v1/api-keys", json={"name": "irrigation bot", "scopes": list(scopes)}, headers=admin
    )
    assert response.status_code == 201, response.text
    created: dict[str, object] = response.json()
    return created


async def test_created_key_shows_its_secret_once_and_the_secret_works(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    created = await _create(client, admin, "read")
    secret = created["key"]
    assert isinstance(secret, str)
    assert secret.startswith("irr_")
    assert len(secret) > 40
    assert created["prefix"] == secret[:12]
    assert created["name"] == "irrigation bot"
    assert created["scopes"] == ["read"]
    assert created["revoked_at"] is None
    assert uuid.UUID(str(created["id"]))

    site = (await client.get("/v1/sites/current", headers=admin)).json()
    assert created["site_id"] == site["id"]
    as_new_key = await client.get("/v1/sites/current", headers=bearer(secret))
    assert as_new_key.status_code == 200
    assert as_new_key.json() == site


async def test_new_key_has_exactly_the_scopes_it_was_given(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    secret = str((await _create(client, admin, "read"))["key"])
    assert (await client.get("/v1/zones", headers=bearer(secret))).status_code == 200
    response = await client.post(
        "/v1/zones", json={"name": "N", "timezone": "UTC"}, headers=bearer(secret)
    )
    assert_problem(response, 403, "insufficient_scope")
    repeated = await _create(client, admin, "read", "control", "read")
    assert repeated["scopes"] == ["control", "read"]


async def test_list_never_shows_a_secret(client: httpx.AsyncClient, admin: Headers) -> None:
    secrets = [str((await _create(client, admin, "read"))["key"]) for _ in range(2)]
    response = await client.get("/v1/api-keys", headers=admin)
    assert response.status_code == 200
    items = response.json()["items"]
    assert len(items) == 3  # the fixture's admin key and the two new ones
    for item in items:
        assert set(item) == {
            "id",
            "site_id",
            "name",
            "prefix",
            "scopes",
            "created_at",
            "revoked_at",
        }
    for secret in [*secrets, admin["Authorization"].removeprefix("Bearer ")]:
        assert secret not in response.text
        assert secret[12:] not in response.text


async def test_key_list_pages_like_every_other_list(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    made = [str((await _create(client, admin, "read"))["id"]) for _ in range(4)]
    pages = await walk(client, "/v1/api-keys", admin, limit=2)
    walked = [key["id"] for page in pages for key in page]
    assert walked[1:] == made  # the first is the fixture's admin key
    assert len(set(walked)) == len(walked) == 5


async def test_revoking_a_key_stamps_it_and_it_gets_401_at_once(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    created = await _create(client, admin, "admin")
    headers = bearer(str(created["key"]))
    assert (await client.get("/v1/zones", headers=headers)).status_code == 200

    response = await client.delete(f"/v1/api-keys/{created['id']}", headers=admin)
    assert response.status_code == 200, response.text
    revoked = response.json()
    assert revoked["id"] == created["id"]
    assert revoked["revoked_at"] is not None
    assert "key" not in revoked

    refused = await client.get("/v1/zones", headers=headers)
    assert_problem(refused, 401, "unauthorized")
    assert refused.headers["www-authenticate"] == "Bearer"
    listed = (await client.get("/v1/api-keys", headers=admin)).json()["items"]
    assert (
        next(k for k in listed if k["id"] == created["id"])["revoked_at"] == revoked["revoked_at"]
    )

    again = await client.delete(f"/v1/api-keys/{created['id']}", headers=admin)
    assert again.status_code == 200
    assert again.json()["revoked_at"] == revoked["revoked_at"]


async def test_a_key_may_revoke_itself(client: httpx.AsyncClient, admin: Headers) -> None:
    own_id = (await client.get("/v1/api-keys", headers=admin)).json()["items"][0]["id"]
    assert (await client.delete(f"/v1/api-keys/{own_id}", headers=admin)).status_code == 200
    assert_problem(await client.get("/v1/zones", headers=admin), 401, "unauthorized")


async def test_revoking_an_unknown_key_is_404(client: httpx.AsyncClient, admin: Headers) -> None:
    response = await client.delete(f"/v1/api-keys/{uuid.uuid4()}", headers=admin)
    assert_problem(response, 404, "not_found")


async def test_key_of_another_site_can_be_neither_listed_nor_revoked(
    client: httpx.AsyncClient, admin: Headers, other_admin: Headers
) -> None:
    theirs = (await client.get("/v1/api-keys", headers=other_admin)).json()["items"]
    assert len(theirs) == 1
    their_id = theirs[0]["id"]

    mine = (await client.get("/v1/api-keys", headers=admin)).json()["items"]
    assert their_id not in {k["id"] for k in mine}
    assert all(k["site_id"] != theirs[0]["site_id"] for k in mine)

    response = await client.delete(f"/v1/api-keys/{their_id}", headers=admin)
    made_up = await client.delete(f"/v1/api-keys/{uuid.uuid4()}", headers=admin)
    assert assert_problem(response, 404, "not_found") == made_up.json()
    # Their key still works and is not revoked.
    assert (await client.get("/v1/zones", headers=other_admin)).status_code == 200
    after = (await client.get("/v1/api-keys", headers=other_admin)).json()["items"]
    assert after[0]["revoked_at"] is None
    # No single-key route answers differently for their key than for none.
    for method in ("GET", "PATCH"):
        probe = await client.request(method, f"/v1/api-keys/{their_id}", json={}, headers=admin)
        blind = await client.request(method, f"/v1/api-keys/{uuid.uuid4()}", json={}, headers=admin)
        assert probe.status_code == blind.status_code
        assert probe.json() == blind.json()
    # And each key sees its own site.
    a = (await client.get("/v1/sites/current", headers=admin)).json()
    b = (await client.get("/v1/sites/current", headers=other_admin)).json()
    assert (a["name"], b["name"]) == ("site-a", "site-b")


async def test_bad_key_requests_are_422(
    client: httpx.AsyncClient, admin: Headers, subtests: pytest.Subtests
) -> None:
    cases: list[tuple[dict[str, object], str]] = [
        ({"name": "k", "scopes": ["root"]}, "body.scopes.0"),
        ({"name": "k", "scopes": []}, "body.scopes"),
        ({"name": "k"}, "body.scopes"),
        ({"name": "   ", "scopes": ["read"]}, "body.name"),
        ({"name": "k" * 201, "scopes": ["read"]}, "body.name"),
        ({"scopes": ["read"]}, "body.name"),
        ({"name": "k", "scopes": "admin"}, "body.scopes"),
    ]
    for body, field in cases:
        with subtests.test(field=field, body=str(body)[:40]):
            response = await client.post("/v1/api-keys", json=body, headers=admin)
            assert_invalid(response, field)
    assert len((await client.get("/v1/api-keys", headers=admin)).json()["items"]) == 1
