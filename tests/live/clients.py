"""What a live-feed client does: read Server-Sent Events frame by frame, open a
WebSocket, and put events into a site's stream as the feed's publisher does."""

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.frames import Close

from irrigation import feed
from irrigation.settings import Settings


@dataclass
class Frame:
    id: str | None = None
    event: str | None = None
    data: str | None = None
    comments: list[str] = field(default_factory=list)

    def json(self) -> Any:
        assert self.data is not None, self
        return json.loads(self.data)


class EventReader:
    """Frames of an SSE response, one at a time, each within a timeout."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()

    async def frame(self, timeout_s: float = 5) -> Frame:
        found = Frame()
        seen = False
        async with asyncio.timeout(timeout_s):
            async for line in self._lines:
                if line == "":
                    if seen:
                        return found
                    continue
                seen = True
                if line.startswith(":"):
                    found.comments.append(line[1:].strip())
                    continue
                name, _, value = line.partition(":")
                setattr(found, name, value.removeprefix(" "))
        raise EOFError("the stream ended")

    async def event(self, timeout_s: float = 5) -> Frame:
        """The next frame that is not only comments (pings)."""
        while True:
            found = await self.frame(timeout_s)
            if found.event is not None:
                return found

    async def events(self, count: int, timeout_s: float = 5) -> list[Frame]:
        return [await self.event(timeout_s) for _ in range(count)]


@asynccontextmanager
async def sse(
    client: httpx.AsyncClient,
    params: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
) -> AsyncIterator[EventReader]:
    """An open `GET /v1/events`; returns once the stream has opened (its position taken)."""
    async with client.stream("GET", "/v1/events", params=params, headers=headers) as response:
        if response.status_code != 200:
            await response.aread()
            raise AssertionError(f"{response.status_code}: {response.text}")
        assert response.headers["content-type"].startswith("text/event-stream")
        reader = EventReader(response)
        assert (await reader.frame()).comments == ["connected"]
        yield reader


def ws_url(base_url: str, query: str = "") -> str:
    return base_url.replace("http://", "ws://") + "/v1/live" + (f"?{query}" if query else "")


def websocket(
    base_url: str, query: str = "", headers: Mapping[str, str] | None = None, **options: Any
) -> connect:
    return connect(
        ws_url(base_url, query),
        additional_headers=dict(headers or {}),
        proxy=None,
        # Only a hung handshake waits this long; three xdist workers on embedded servers
        # took over 5 s to open one once (the ticket is spent in Redis before the accept).
        open_timeout=20,
        **options,
    )


async def messages(socket: ClientConnection, count: int, timeout_s: float = 5) -> list[Any]:
    received = []
    for _ in range(count):
        async with asyncio.timeout(timeout_s):
            received.append(json.loads(await socket.recv()))
    return received


async def until_closed(socket: ClientConnection, timeout_s: float = 5) -> tuple[list[Any], Close]:
    """Every message until the server closes, and its close frame."""
    received: list[Any] = []
    frame: Close | None = None
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                received.append(json.loads(await socket.recv()))
    except ConnectionClosed as closed:
        frame = closed.rcvd
    assert frame is not None, "closed without a close frame"
    return received, frame


async def publish(
    redis: Redis,
    settings: Settings,
    site_id: str,
    events: Sequence[tuple[feed.EventType, Mapping[str, Any]]],
    maxlen: int | None = None,
) -> list[str]:
    """Puts `events` into the site's stream as the feed's publisher does; their ids."""
    publisher = feed.Publisher(
        redis, settings.redis_namespace, timeout_s=30, maxlen=maxlen or settings.live_stream_maxlen
    )
    site = uuid.UUID(site_id)
    await publisher.publish([feed.Event(t, site, data, datetime.now(UTC)) for t, data in events])
    newest = await redis.xrevrange(
        feed.stream_key(settings.redis_namespace, site), count=len(events)
    )
    return [entry_id.decode() for entry_id, _ in reversed(newest)]


def pumps(
    count: int, zone_id: str | None = None, start: int = 0
) -> list[tuple[feed.EventType, dict[str, Any]]]:
    return [
        (feed.EventType.pump, {"n": start + i, "zone_id": zone_id or str(uuid.uuid4())})
        for i in range(count)
    ]
