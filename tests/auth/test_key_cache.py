"""The in-process cache of checked keys: fewer lookups, and revocation through the API
still takes effect at once."""

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import event

from irrigation.app import create_app
from irrigation.settings import Settings
from tests.support.api import bearer
from tests.support.factories import MakeKey


@pytest.fixture
async def app_of_cached(settings: Settings) -> AsyncIterator[FastAPI]:
    app = create_app(settings.model_copy(update={"auth_cache_ttl_s": 60.0}))
    yield app
    await app.state.redis.aclose()
    await app.state.engine.dispose()


@pytest.fixture
async def cached(app_of_cached: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    app = app_of_cached
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as client:
        yield client


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


async def test_a_herd_of_requests_with_one_uncached_key_looks_it_up_once(
    cached: httpx.AsyncClient, app_of_cached: FastAPI, make_key: MakeKey
) -> None:
    lookups: list[str] = []

    def count(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if "FROM api_keys" in statement:
            lookups.append(statement)

    engine = app_of_cached.state.engine.sync_engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        device = bearer(await make_key("read"))
        answers = await asyncio.gather(
            *(cached.get("/v1/zones", headers=device) for _ in range(20))
        )
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert [a.status_code for a in answers] == [200] * 20
    assert len(lookups) == 1
