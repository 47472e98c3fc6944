"""An app with the limits a test sets, on the test's own database and Redis namespace, and
what a client reads in the IETF RateLimit headers."""

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from irrigation.app import create_app
from irrigation.common.limiter import RateClass
from irrigation.settings import Settings

STATE = re.compile(r'^"(?P<name>[a-z]+)";r=(?P<r>\d+);t=(?P<t>\d+)$')

# `await limited(read="3/minute")`: a client of an app with these settings; a class name
# stands for its `rate_limit_<class>` setting.
Limited = Callable[..., Awaitable[httpx.AsyncClient]]


@pytest.fixture
async def limited(settings: Settings) -> AsyncIterator[Limited]:
    apps: list[FastAPI] = []
    clients: list[httpx.AsyncClient] = []

    async def make(**changes: Any) -> httpx.AsyncClient:
        names = {c.value for c in RateClass}
        update = {f"rate_limit_{k}" if k in names else k: v for k, v in changes.items()}
        app = create_app(settings.model_copy(update=update))
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")
        apps.append(app)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()
    for app in apps:
        await app.state.redis.aclose()
        await app.state.engine.dispose()


def policies(response: httpx.Response) -> dict[str, str]:
    """`{"read": '"read";q=3;w=60'}` from the RateLimit-Policy field."""
    items = [item.strip() for item in response.headers["RateLimit-Policy"].split(",")]
    return {item.split(";")[0].strip('"'): item for item in items}


def states(response: httpx.Response) -> dict[str, tuple[int, int]]:
    """`{"read": (remaining, seconds)}` from the RateLimit field."""
    found = {}
    for item in response.headers["RateLimit"].split(","):
        match = STATE.match(item.strip())
        assert match, response.headers["RateLimit"]
        found[match["name"]] = (int(match["r"]), int(match["t"]))
    return found
