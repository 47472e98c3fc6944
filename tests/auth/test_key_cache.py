"""The in-process cache of checked keys: fewer lookups, and revocation through the API
still takes effect at once."""

from collections.abc import AsyncIterator

import httpx
import pytest

from irrigation.app import create_app
from irrigation.settings import Settings
from tests.support.api import bearer
from tests.support.factories import MakeKey


@pytest.fixture
async def cached(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings.model_copy(update={"auth_cache_ttl_s": 60.0}))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as client:
        yield client
    await app.state.redis.aclose()
    await app.state.engine.dispose()


async def test_a_key_revoked_through_the_api_is_refused_at_once_despite_the_cache(
    cached: httpx.AsyncClient, make_key: MakeKey
) -> None:
    admin = bearer(await make_key("admin"))
    created = await cached.post(
        "/v1/api-keys", json={"name": "device", "scopes": ["read"]}, headers=admin
    )
    device = bearer(created.json()["key"])
    assert (await cached.get("/v1/zones", headers=device)).status_code == 200  # now cached
    revoked = await cached.delete(f"/v1/api-keys/{created.json()['id']}", headers=admin)
    assert revoked.status_code == 200
    refused = await cached.get("/v1/zones", headers=device)
    assert refused.status_code == 401
    assert refused.json()["code"] == "unauthorized"
