"""What keeps the live feed bounded and private: a per-key cap on open streams (across
processes, leases in Redis), the cut-off of a client that does not keep up, one site's
stream only, and an end to every stream when the server stops."""

import asyncio
import json
import secrets
import signal
import uuid

import httpx
import pytest
from redis.asyncio import Redis

from irrigation import feed
from irrigation.live.leases import Leases
from irrigation.settings import Settings
from tests.live.clients import messages, publish, pumps, sse, until_closed, websocket
from tests.live.conftest import Key, Server, StartServer, site_of
from tests.support.api import bearer
from tests.support.factories import MakeKey
from tests.support.polling import wait_for
from tests.support.problems import assert_problem
from tests.support.processes import free_port, settings_env, spawner, wait_http


async def _no_leases(redis: Redis, settings: Settings) -> bool:
    """No stream holds a lease: every one was released."""
    total = 0
    async for key in redis.scan_iter(f"{settings.redis_namespace}:live:streams:*"):
        total += await redis.zcard(key)
    return total == 0


async def _big_alerts(
    redis: Redis, settings: Settings, site_id: str, until_cut_off: bool = True
) -> None:
    """Alerts of 64 KiB that do not compress, 20 at a time, until the server has cut the
    client off (its lease is gone) or 400 are out."""
    blob = secrets.token_hex(32 * 1024)
    for batch in range(20):
        events = [(feed.EventType.alert, {"n": batch * 20 + n, "blob": blob}) for n in range(20)]
        await publish(redis, settings, site_id, events)
        if until_cut_off and await _no_leases(redis, settings):
            return


async def test_a_key_holds_at_most_the_cap_of_streams_sse_and_websocket_together(
    start_server: StartServer, make_key: MakeKey, redis: Redis, settings: Settings
) -> None:
    server = await start_server(live_max_streams_per_key=2)
    key = bearer(await make_key("read"))
    other = bearer(await make_key("read"))
    async with sse(server.client, headers=key), websocket(server.url, headers=key) as socket:
        await socket.send("{}")
        response = await server.client.get("/v1/events", headers=key)
        body = assert_problem(response, 429, "too_many_streams")
        assert body["limit"] == 2
        async with websocket(server.url, headers=key) as third:
            received, close = await until_closed(third)
        assert received == []
        assert close.code == 1013
        assert close.reason.startswith("too_many_streams: ")
        # Another key of the same site has its own.
        async with sse(server.client, headers=other):
            pass
    # Released when the clients go: the server notices, then a new one opens.
    await wait_for(lambda: _no_leases(redis, settings), timeout_s=5, interval_s=0.02)
    async with sse(server.client, headers=key), sse(server.client, headers=key):
        pass


async def test_leases_of_a_process_that_died_expire_by_themselves(
    start_server: StartServer, make_key: MakeKey, redis: Redis, settings: Settings
) -> None:
    server = await start_server(live_max_streams_per_key=1)
    headers = bearer(await make_key("read"))
    async with sse(server.client, headers=headers):
        [lease_key] = [k async for k in redis.scan_iter(f"{settings.redis_namespace}:live:*")]
    key_id = uuid.UUID(lease_key.decode().rsplit(":", 1)[1])
    await wait_for(lambda: _no_leases(redis, settings), timeout_s=5, interval_s=0.02)
    # Another process took the key's only lease, then died without releasing it.
    crashed = Leases(redis, settings.redis_namespace, limit=1, ttl_s=0.3)
    assert await crashed.acquire(key_id) is not None
    assert_problem(await server.client.get("/v1/events", headers=headers), 429, "too_many_streams")
    await asyncio.sleep(0.35)
    async with sse(server.client, headers=headers):
        pass


async def test_a_websocket_client_that_does_not_read_is_cut_off_with_1013(
    start_server: StartServer, make_key: MakeKey, redis: Redis, settings: Settings
) -> None:
    server = await start_server(live_max_backlog=5)
    headers = bearer(await make_key("read"))
    site_id = await site_of(server.client, headers)
    # A client that stops reading: a tiny queue, no compression, so the server's sends
    # block once the sockets' buffers are full.
    async with websocket(
        server.url, headers=headers, max_queue=1, compression=None, max_size=None
    ) as socket:
        await socket.send("{}")
        await _big_alerts(redis, settings, site_id)
        await wait_for(lambda: _no_leases(redis, settings), timeout_s=5, interval_s=0.05)
        # The server gave up on it: what it had sent, then the close.
        received, close = await until_closed(socket)
    assert close.code == 1013
    assert close.reason.startswith("slow_consumer: ")
    assert 0 < len(received) < 400


async def test_an_sse_client_that_does_not_read_is_cut_off(
    start_server: StartServer, make_key: MakeKey, redis: Redis, settings: Settings
) -> None:
    server = await start_server(live_max_backlog=5)
    headers = bearer(await make_key("read"))
    site_id = await site_of(server.client, headers)
    async with sse(server.client, headers=headers) as stream:
        await _big_alerts(redis, settings, site_id)
        await wait_for(lambda: _no_leases(redis, settings), timeout_s=5, interval_s=0.05)
        frames = []
        while True:
            frame = await stream.event()
            frames.append(frame)
            if frame.event == "end":
                break
    assert frames[-1].json()["reason"] == "slow_consumer"
    assert 0 < len(frames) - 1 < 400


async def test_a_key_of_another_site_never_sees_its_events_even_resuming_from_its_ids(
    server: Server, reader: Key, other_reader: Key, redis: Redis, settings: Settings
) -> None:
    a_ids = await publish(redis, settings, reader.site_id, pumps(3))
    ticket = await server.client.post("/v1/live/tickets", headers=other_reader.headers)
    params = {"ticket": ticket.json()["ticket"], "last_event_id": a_ids[0]}
    async with (
        sse(server.client, params=params) as stream,
        websocket(server.url, headers=other_reader.headers) as socket,
    ):
        await socket.send(json.dumps({"resume_from": a_ids[0]}))
        await publish(redis, settings, reader.site_id, pumps(2, start=3))
        b_ids = await publish(redis, settings, other_reader.site_id, pumps(1))
        got = await stream.event()
        [message] = await messages(socket, 1)
        assert (await stream.frame()).comments == ["ping"]
    assert got.id == message["id"] == b_ids[0]
    assert got.json()["site_id"] == message["site_id"] == other_reader.site_id


async def test_stopping_the_server_ends_every_stream_at_once(server: Server, reader: Key) -> None:
    async with sse(server.client, headers=reader.headers) as stream:
        async with websocket(server.url, headers=reader.headers) as socket:
            await socket.send("{}")
            await asyncio.sleep(0.1)  # the socket's first message taken
            server.hub.stop()
            received, close = await until_closed(socket)
        end = await stream.event()
        assert end.event == "end"
        assert end.json()["reason"] == "shutdown"
        with pytest.raises(EOFError):
            await stream.frame()
    assert (received, close.code) == ([], 1012)
    assert close.reason.startswith("shutdown: ")
    # One opened while the server stops ends at once.
    async with sse(server.client, headers=reader.headers) as stream:
        assert (await stream.event()).json()["reason"] == "shutdown"


@pytest.mark.slow
async def test_a_served_api_stops_promptly_with_streams_open(
    settings: Settings, make_key: MakeKey, redis: Redis
) -> None:
    """`irrigation serve` (uvicorn) waits for open responses before it stops; an event
    stream is ended by the signal instead of holding the stop until `up` kills it."""
    headers = bearer(await make_key("read"))
    port = free_port()
    with spawner(settings_env(settings)) as spawn:
        api = spawn("serve", "--port", str(port))
        url = f"http://127.0.0.1:{port}"
        await wait_http(f"{url}/healthz", proc=api)
        async with (
            httpx.AsyncClient(base_url=url, timeout=10) as client,
            sse(client, headers=headers) as stream,
            websocket(url, headers=headers) as socket,
        ):
            await socket.send("{}")
            site_id = await site_of(client, headers)
            [entry] = await publish(redis, settings, site_id, pumps(1))
            assert (await stream.event()).id == entry
            assert [m["id"] for m in await messages(socket, 1)] == [entry]
            api.proc.send_signal(signal.SIGTERM)
            end = await stream.event()
            _, close = await until_closed(socket)
        await asyncio.to_thread(api.proc.wait, 5)
        output = api.output()
    assert end.json()["reason"] == "shutdown"
    assert close.code == 1012
    # uvicorn raises the signal it caught again once it has stopped.
    assert api.proc.returncode == -signal.SIGTERM, output[-3000:]
    assert "Exception in ASGI application" not in output


async def test_without_redis_tickets_and_streams_are_503_and_sockets_close_1011(
    start_server: StartServer, make_key: MakeKey
) -> None:
    # Nothing listens on port 1: Redis refuses at once (the rate limiter lets requests by).
    server = await start_server(redis_url="redis://127.0.0.1:1/0")
    headers = bearer(await make_key("read"))
    response = await server.client.post("/v1/live/tickets", headers=headers)
    assert_problem(response, 503, "unavailable")
    assert response.headers["Retry-After"] == "1"
    assert_problem(await server.client.get("/v1/events", headers=headers), 503, "unavailable")
    ticket = {"ticket": "lt_" + "A" * 43}
    assert_problem(await server.client.get("/v1/events", params=ticket), 503, "unavailable")
    async with websocket(server.url, headers=headers) as socket:
        received, close = await until_closed(socket)
    assert (received, close.code) == ([], 1011)
    assert close.reason.startswith("unavailable: ")


@pytest.mark.slow
async def test_a_served_api_stops_even_when_a_client_reads_nothing(
    settings: Settings, make_key: MakeKey, redis: Redis
) -> None:
    """Its stream ends at the signal, but its socket stays full of what it did not read:
    uvicorn would wait for it for ever without `serve`'s graceful-shutdown timeout."""
    headers = bearer(await make_key("read"))
    port = free_port()
    with spawner(settings_env(settings)) as spawn:
        api = spawn("serve", "--port", str(port), IRRIGATION_SHUTDOWN_GRACE_S="1")
        url = f"http://127.0.0.1:{port}"
        await wait_http(f"{url}/healthz", proc=api)
        async with (
            httpx.AsyncClient(base_url=url, timeout=10) as client,
            sse(client, headers=headers),
        ):
            site_id = await site_of(client, headers)
            await _big_alerts(redis, settings, site_id, until_cut_off=False)
            api.proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(api.proc.wait, 8)
        output = api.output()
    assert "timeout graceful shutdown exceeded" in output, output[-3000:]
