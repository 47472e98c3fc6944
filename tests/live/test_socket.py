"""`/v1/live`: the same events over a WebSocket, as JSON text messages; refusals as close
frames whose reason starts with the problem code."""

import asyncio
import json
import uuid

import pytest
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection

from irrigation import feed
from irrigation.settings import Settings
from tests.live.clients import messages, publish, pumps, until_closed, websocket
from tests.live.conftest import Key, Server, StartServer
from tests.support.api import bearer
from tests.support.factories import MakeKey


async def _ticket(server: Server, key: Key) -> str:
    response = await server.client.post("/v1/live/tickets", headers=key.headers)
    assert response.status_code == 201, response.text
    ticket: str = response.json()["ticket"]
    return ticket


async def _closed(socket: ClientConnection) -> tuple[int, str]:
    """The close code and reason the server ends with (it sends nothing before)."""
    received, frame = await until_closed(socket)
    assert received == []
    return frame.code, frame.reason


async def _quiet(socket: ClientConnection, for_s: float = 0.5) -> None:
    """Nothing more arrives for a while."""
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(for_s):
            raise AssertionError(f"unexpected message: {await socket.recv()}")


async def test_events_arrive_as_the_full_event_in_json(
    server: Server, reader: Key, redis: Redis, settings: Settings
) -> None:
    async with websocket(server.url, headers=reader.headers) as socket:
        await socket.send("{}")
        ids = await publish(redis, settings, reader.site_id, pumps(2))
        got = await messages(socket, 2)
    assert [m["id"] for m in got] == ids
    assert all(m["type"] == "pump" and m["site_id"] == reader.site_id for m in got)
    assert [m["data"]["n"] for m in got] == [0, 1]


async def test_without_a_first_message_it_starts_where_it_was_when_it_connected(
    server: Server, reader: Key, redis: Redis, settings: Settings
) -> None:
    await publish(redis, settings, reader.site_id, pumps(2))
    async with websocket(server.url, headers=reader.headers) as socket:
        # Published while the server still waits for a first message: not lost.
        ids = await publish(redis, settings, reader.site_id, pumps(3, start=2))
        assert [m["id"] for m in await messages(socket, 3)] == ids
        await _quiet(socket)


async def test_resume_from_loses_nothing_and_repeats_nothing(
    server: Server, reader: Key, redis: Redis, settings: Settings
) -> None:
    async with websocket(server.url, headers=reader.headers) as socket:
        await socket.send("{}")
        first = await publish(redis, settings, reader.site_id, pumps(3))
        seen = await messages(socket, 3)
    assert [m["id"] for m in seen] == first
    missed = await publish(redis, settings, reader.site_id, pumps(4, start=3))
    query = f"ticket={await _ticket(server, reader)}"
    async with websocket(server.url, query) as socket:
        await socket.send(json.dumps({"resume_from": seen[-1]["id"]}))
        assert [m["id"] for m in await messages(socket, 4)] == missed
        later = await publish(redis, settings, reader.site_id, pumps(1, start=7))
        assert [m["id"] for m in await messages(socket, 1)] == later
        await _quiet(socket)


async def test_last_event_id_in_the_query_resumes_without_a_first_message(
    server: Server, reader: Key, redis: Redis, settings: Settings
) -> None:
    ids = await publish(redis, settings, reader.site_id, pumps(3))
    async with websocket(server.url, f"last_event_id={ids[0]}", reader.headers) as socket:
        assert [m["id"] for m in await messages(socket, 2, timeout_s=0.5)] == ids[1:]
        await _quiet(socket)


async def test_a_trimmed_resume_id_gets_a_gap_message_first(
    start_server: StartServer, reader: Key, redis: Redis, settings: Settings
) -> None:
    # The server's own bound (a Redis 6 tells a trimmed stream only by its length at it).
    server = await start_server(live_stream_maxlen=100)
    [seen] = await publish(redis, settings, reader.site_id, pumps(1))
    await publish(redis, settings, reader.site_id, pumps(400, start=1), maxlen=100)
    key = feed.stream_key(settings.redis_namespace, uuid.UUID(reader.site_id))
    [(first, _)] = await redis.xrange(key, count=1)
    async with websocket(server.url, headers=reader.headers) as socket:
        await socket.send(json.dumps({"resume_from": seen}))
        [gap, event] = await messages(socket, 2)
    assert gap == {"type": "gap", "last_event_id": seen, "first_available_id": first.decode()}
    assert event["id"] == first.decode()


async def test_types_and_zone_id_filter_the_messages(
    server: Server, reader: Key, redis: Redis, settings: Settings
) -> None:
    zone = str(uuid.uuid4())
    async with websocket(server.url, f"types=reading&zone_id={zone}", reader.headers) as socket:
        await socket.send("{}")
        ids = await publish(
            redis,
            settings,
            reader.site_id,
            [
                (feed.EventType.pump, {"zone_id": zone}),
                (feed.EventType.reading, {"zone_id": str(uuid.uuid4())}),
                (feed.EventType.reading, {"zone_id": zone, "value": 3}),
            ],
        )
        assert [m["id"] for m in await messages(socket, 1)] == ids[2:]
        await _quiet(socket)


@pytest.mark.parametrize(
    ("query", "code", "reason"),
    [
        ("", 1008, "unauthorized: missing bearer API key"),
        ("ticket=lt_" + "x" * 43, 1008, "invalid_ticket: "),
        ("ticket=irr_" + "x" * 43, 1008, "invalid_ticket: "),
        ("types=pump,rainbow", 1008, "validation_error: query.types"),
        ("zone_id=zone-1", 1008, "validation_error: query.zone_id"),
        ("last_event_id=latest", 1008, "validation_error: query.last_event_id"),
    ],
)
async def test_refusals_close_with_1008_and_the_problem_code(
    server: Server, query: str, code: int, reason: str
) -> None:
    async with websocket(server.url, query) as socket:
        got = await _closed(socket)
    assert got[0] == code
    assert got[1].startswith(reason), got


async def test_a_key_without_read_is_refused_and_a_bad_first_message_too(
    server: Server, reader: Key, make_key: MakeKey
) -> None:
    async with websocket(server.url, headers=bearer(await make_key("ingest"))) as socket:
        code, reason = await _closed(socket)
    assert (code, reason.split(":")[0]) == (1008, "insufficient_scope")
    for first in ["resume", '{"resume_from": "soon"}', '{"resume_from": 7}', '{"from": "1-0"}']:
        async with websocket(server.url, headers=reader.headers) as socket:
            await socket.send(first)
            code, reason = await _closed(socket)
        assert (code, reason.split(":")[0]) == (1008, "validation_error"), first


async def test_a_ticket_works_once(server: Server, reader: Key) -> None:
    ticket = await _ticket(server, reader)
    async with websocket(server.url, f"ticket={ticket}") as socket:
        await socket.send("{}")
        await _quiet(socket, 0.2)
    async with websocket(server.url, f"ticket={ticket}") as socket:
        code, reason = await _closed(socket)
    assert (code, reason.split(":")[0]) == (1008, "invalid_ticket")


async def test_opening_a_socket_counts_once_in_read_and_over_the_limit_closes_1013(
    start_server: StartServer, make_key: MakeKey
) -> None:
    server = await start_server(rate_limit_read="2/minute")
    headers = bearer(await make_key("read"))
    async with websocket(server.url, headers=headers) as socket:
        await socket.send("{}")
        await _quiet(socket, 0.2)
    async with websocket(server.url, headers=headers) as socket:
        await socket.send("{}")
        await _quiet(socket, 0.2)
    async with websocket(server.url, headers=headers) as socket:
        code, reason = await _closed(socket)
    assert (code, reason.split(":")[0]) == (1013, "rate_limited")
