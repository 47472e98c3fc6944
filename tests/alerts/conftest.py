"""Alert fixtures: the worker's ctx for calling the crons directly, keys per scope, and a
real HTTP receiver of webhooks (uvicorn on a free port) that records what it gets."""

import asyncio
import ipaddress
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
import redis.asyncio as aioredis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.requests import Request
from starlette.responses import Response

from irrigation import feed
from irrigation.db import create_engine, create_sessionmaker
from irrigation.settings import Settings
from tests.support.api import Headers, bearer
from tests.support.factories import MakeKey
from tests.support.servers import serve

WEBHOOK_TIMEOUT_S = 0.5
# The receivers of these tests listen on loopback, which webhooks may reach only when the
# allow-list says so (as an on-premises receiver is let through).
LOOPBACK = ipaddress.ip_network("127.0.0.0/8")


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Short webhook timeouts and few attempts, so retries and give-ups take seconds; the
    local receivers allowed."""
    return settings.model_copy(
        update={
            "webhook_allow_networks": [LOOPBACK],
            "webhook_timeout_s": WEBHOOK_TIMEOUT_S,
            "webhook_max_attempts": 3,
            "webhook_backoff_base_s": 10.0,
            "webhook_backoff_max_s": 60.0,
        }
    )


@pytest.fixture
async def sessions(
    settings: Settings, redis: aioredis.Redis
) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """The worker's sessions: what their transactions emit reaches the site's live feed."""
    engine = create_engine(settings)
    yield create_sessionmaker(engine, feed.create_publisher(settings, redis))
    await engine.dispose()


@pytest.fixture
def ctx(settings: Settings, sessions: async_sessionmaker[AsyncSession]) -> dict[str, Any]:
    """As the worker calls its crons: ctx["irrigation"] carries the settings and sessions."""
    return {"irrigation": SimpleNamespace(settings=settings, sessions=sessions)}


@pytest.fixture
async def reader(make_key: MakeKey) -> Headers:
    return bearer(await make_key("read"))


@pytest.fixture
async def operator(make_key: MakeKey) -> Headers:
    """Read and control: may acknowledge."""
    return bearer(await make_key("read", "control"))


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """Answers by path: `/ok...` 200, `/fail...` 500, `/hang...` never (until teardown),
    `/slow...` after 0.3 s, `/redirect...` 307 to `/ok-redirected`; `script(path, [500,
    200])` sets the next answers of a path."""

    url: str = ""
    requests: list[Received] = field(default_factory=list)
    scripts: dict[str, list[int]] = field(default_factory=dict)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def script(self, path: str, statuses: list[int]) -> None:
        self.scripts[path] = list(statuses)

    def at(self, path: str) -> list[Received]:
        return [r for r in self.requests if r.path == path]

    async def handle(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":  # lifespan
            return
        request = Request(scope, receive)
        body = await request.body()
        path = request.url.path
        self.requests.append(Received(path, dict(request.headers), body))
        if path.startswith("/hang"):
            await self.release.wait()
        if path.startswith("/slow"):
            await asyncio.sleep(0.3)
        if path.startswith("/redirect"):
            await Response(status_code=307, headers={"Location": "/ok-redirected"})(
                scope, receive, send
            )
            return
        script = self.scripts.get(path)
        status = script.pop(0) if script else 500 if path.startswith("/fail") else 200
        await Response(
            b"internal detail: db at 10.0.0.5", status_code=status, media_type="text/plain"
        )(scope, receive, send)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    recorder = Receiver()
    async with serve(recorder.handle) as url:
        recorder.url = url
        yield recorder
        recorder.release.set()
