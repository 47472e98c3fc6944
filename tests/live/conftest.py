"""Real uvicorn servers of the app (SSE and WebSockets need a real connection), keys of two
sites, and their site ids."""

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from irrigation.app import create_app
from irrigation.live.hub import LiveHub
from irrigation.settings import Settings
from tests.support.api import bearer
from tests.support.factories import MakeKey
from tests.support.servers import serve

# Short, so a test sees pings, lease renewals and key checks within a second.
HEARTBEAT_S = 0.3


@dataclass
class Server:
    url: str
    app: FastAPI
    client: httpx.AsyncClient

    @property
    def hub(self) -> LiveHub:
        hub: LiveHub = self.app.state.live
        return hub


StartServer = Callable[..., Awaitable[Server]]


@pytest.fixture
async def start_server(settings: Settings) -> AsyncIterator[StartServer]:
    """`await start_server(live_max_backlog=5)`: the app with these settings on uvicorn."""
    async with AsyncExitStack() as stack:

        async def start(**changes: Any) -> Server:
            app = create_app(
                settings.model_copy(update={"live_heartbeat_s": HEARTBEAT_S, **changes})
            )

            async def close_app() -> None:
                await app.state.redis.aclose()
                await app.state.engine.dispose()

            stack.push_async_callback(close_app)
            url = await stack.enter_async_context(serve(app))
            client = await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=10))
            return Server(url, app, client)

        yield start


@pytest.fixture
async def server(start_server: StartServer) -> Server:
    return await start_server()


async def site_of(client: httpx.AsyncClient, headers: dict[str, str]) -> str:
    response = await client.get("/v1/sites/current", headers=headers)
    assert response.status_code == 200, response.text
    site_id: str = response.json()["id"]
    return site_id


@dataclass
class Key:
    headers: dict[str, str]
    site_id: str


@pytest.fixture
async def reader(make_key: MakeKey, server: Server) -> Key:
    """A read key of site A."""
    headers = bearer(await make_key("read"))
    return Key(headers, await site_of(server.client, headers))


@pytest.fixture
async def other_reader(make_key: MakeKey, server: Server) -> Key:
    """A read key of site B."""
    headers = bearer(await make_key("read", site="site-b"))
    return Key(headers, await site_of(server.client, headers))
