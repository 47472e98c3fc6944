"""`POST /v1/live/tickets`: a single-use credential for the stream URLs, valid briefly,
bound to the key that asked (its site and scopes), kept only as a hash."""

import asyncio
from datetime import UTC, datetime, timedelta

from redis.asyncio import Redis

from irrigation.db import create_engine, create_sessionmaker
from irrigation.settings import Settings
from tests.live.clients import sse
from tests.live.conftest import Key, Server, StartServer
from tests.support.api import bearer
from tests.support.factories import MakeKey
from tests.support.problems import assert_problem

DOWN = "postgresql+asyncpg://postgres@127.0.0.1:1/nowhere"


async def test_a_ticket_is_201_single_use_and_expires_in_a_minute(
    server: Server, reader: Key
) -> None:
    response = await server.client.post("/v1/live/tickets", headers=reader.headers)
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == {"ticket", "expires_at"}
    expires_at = datetime.fromisoformat(body["expires_at"])
    left = expires_at - datetime.now(UTC)
    assert timedelta(seconds=55) < left <= timedelta(seconds=60)
    # Counted in `read`, like any GET.
    assert response.headers["RateLimit-Policy"].startswith('"read";')

    async with sse(server.client, params={"ticket": body["ticket"]}):
        pass
    again = await server.client.get("/v1/events", params={"ticket": body["ticket"]})
    assert_problem(again, 401, "invalid_ticket")


async def test_of_two_requests_with_one_ticket_exactly_one_gets_it(
    server: Server, reader: Key
) -> None:
    ticket = (await server.client.post("/v1/live/tickets", headers=reader.headers)).json()
    url = f"{server.url}/v1/events?ticket={ticket['ticket']}"

    async def open_one() -> int:
        async with server.client.stream("GET", url) as response:
            return response.status_code

    assert sorted(await asyncio.gather(*(open_one() for _ in range(4)))) == [200, 401, 401, 401]


async def test_an_expired_ticket_is_refused(start_server: StartServer, make_key: MakeKey) -> None:
    server = await start_server(live_ticket_ttl_s=0.2)
    headers = bearer(await make_key("read"))
    ticket = (await server.client.post("/v1/live/tickets", headers=headers)).json()["ticket"]
    await asyncio.sleep(0.4)
    response = await server.client.get("/v1/events", params={"ticket": ticket})
    body = assert_problem(response, 401, "invalid_ticket")
    assert "expired" in body["detail"]


async def test_unknown_tickets_and_api_keys_in_the_url_are_refused(
    server: Server, reader: Key
) -> None:
    key = reader.headers["Authorization"].removeprefix("Bearer ")
    for ticket in ["lt_" + "A" * 43, "nonsense", "", key]:
        response = await server.client.get("/v1/events", params={"ticket": ticket})
        assert_problem(response, 401, "invalid_ticket")
    # A ticket is the only credential a URL may carry: with one, the header is not read.
    both = await server.client.get(
        "/v1/events", params={"ticket": "lt_" + "A" * 43}, headers=reader.headers
    )
    assert_problem(both, 401, "invalid_ticket")


async def test_a_revoked_keys_ticket_is_refused(server: Server, make_key: MakeKey) -> None:
    admin = bearer(await make_key("admin"))
    key = (
        await server.client.post(
            "/v1/api-keys", json={"name": "tablet", "scopes": ["read"]}, headers=admin
        )
    ).json()
    ticket = await server.client.post("/v1/live/tickets", headers=bearer(key["key"]))
    revoked = await server.client.delete(f"/v1/api-keys/{key['id']}", headers=admin)
    assert revoked.status_code == 200
    response = await server.client.get("/v1/events", params={"ticket": ticket.json()["ticket"]})
    assert_problem(response, 401, "invalid_ticket")


async def test_a_ticket_needs_a_read_key_and_is_stored_only_as_a_hash(
    server: Server, reader: Key, make_key: MakeKey, redis: Redis, settings: Settings
) -> None:
    assert_problem(await server.client.post("/v1/live/tickets"), 401, "unauthorized")
    ingest_only = bearer(await make_key("ingest"))
    response = await server.client.post("/v1/live/tickets", headers=ingest_only)
    assert_problem(response, 403, "insufficient_scope")

    ticket = (await server.client.post("/v1/live/tickets", headers=reader.headers)).json()
    stored = [k async for k in redis.scan_iter(f"{settings.redis_namespace}:live:ticket:*")]
    assert len(stored) == 1
    assert ticket["ticket"] not in stored[0].decode()
    assert ticket["ticket"].encode() not in await redis.get(stored[0])


async def test_a_ticket_the_database_could_not_check_is_not_spent(
    server: Server, reader: Key, settings: Settings
) -> None:
    ticket = (await server.client.post("/v1/live/tickets", headers=reader.headers)).json()
    hub = server.hub
    working = hub.sessions
    # Nothing listens on port 1: every connection is refused.
    unreachable = create_engine(settings.model_copy(update={"database_url": DOWN}))
    hub.sessions = create_sessionmaker(unreachable)
    try:
        response = await server.client.get("/v1/events", params={"ticket": ticket["ticket"]})
        assert_problem(response, 503, "database_unavailable")
    finally:
        hub.sessions = working
        await unreachable.dispose()
    async with sse(server.client, params={"ticket": ticket["ticket"]}):
        pass
