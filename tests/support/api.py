"""What every client of the API does: authenticate with a bearer key, walk a list's pages;
and an in-process app of its own for a test that changes a setting."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from irrigation.app import create_app
from irrigation.settings import Settings

Headers = dict[str, str]


def bearer(key: str) -> Headers:
    return {"Authorization": f"Bearer {key}"}


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


@asynccontextmanager
async def app_client(settings: Settings, **changes: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A client of an app made from `settings` with `changes`, closed with its pools."""
    app = create_app(settings.model_copy(update=changes))
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://test"
        ) as client:
            yield client
    finally:
        await app.state.redis.aclose()
        await app.state.engine.dispose()
