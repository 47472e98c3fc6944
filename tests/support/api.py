"""What every client of the API does: authenticate with a bearer key, walk a list's pages."""

from typing import Any

import httpx

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
