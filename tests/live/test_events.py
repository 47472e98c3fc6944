"""`GET /v1/events`: Server-Sent Events of the caller's site, resumable without loss or
repetition, filtered, authenticated by header or ticket."""

import uuid

import httpx
from redis.asyncio import Redis
from sqlalchemy import text

from irrigation import feed
from irrigation.common.clock import utcnow
from irrigation.db import create_engine, create_sessionmaker
from irrigation.settings import Settings
from tests.live.clients import EventReader, Frame, publish, pumps, sse
from tests.live.conftest import Key, Server, StartServer
from tests.support.api import bearer
from tests.support.factories import MakeKey, make_sensor
from tests.support.problems import assert_invalid, assert_problem


async def _ticket(server: Server, key: Key) -> str:
    response = await server.client.post("/v1/live/tickets", headers=key.headers)
    assert response.status_code == 201, response.text
    ticket: str = response.json()["ticket"]
    return ticket


async def _nothing_more(stream: EventReader) -> None:
    """The next frame is a heartbeat: nothing else was waiting to be sent."""
    assert (await stream.frame()).comments == ["ping"]


def _ids(frames: list[Frame]) -> list[str | None]:
    return [f.id for f in frames]


async def test_each_event_is_id_event_and_data_with_the_full_event(
    server: Server, reader: Key, redis: Redis, settings: Settings
) -> None:
    async with sse(server.client, headers=reader.headers) as stream:
        zone = str(uuid.uuid4())
        [entry] = await publish(
            redis, settings, reader.site_id, [(feed.EventType.pump, {"zone_id": zone})]
        )
        got = await stream.event()
    assert got.id == entry
    assert got.event == "pump"
    event = got.json()
    assert event["id"] == entry
    assert event["type"] == "pump"
    assert event["site_id"] == reader.site_id
    assert event["data"] == {"zone_id": zone}
    assert event["at"]


async def test_a_new_stream_starts_with_what_is_published_after_it_opened(
    server: Server, reader: Key, redis: Redis, settings: Settings
) -> None:
    await publish(redis, settings, reader.site_id, pumps(3))
    async with sse(server.client, headers=reader.headers) as stream:
        after = await publish(redis, settings, reader.site_id, pumps(2, start=3))
        got = await stream.events(2)
        assert _ids(got) == after
        await _nothing_more(stream)


async def test_a_reconnect_with_the_last_id_loses_nothing_and_repeats_nothing(
    server: Server, reader: Key, redis: Redis, settings: Settings
) -> None:
    async with sse(server.client, headers=reader.headers) as stream:
        first = await publish(redis, settings, reader.site_id, pumps(3))
        seen = await stream.events(3)
    assert _ids(seen) == first
    missed = await publish(redis, settings, reader.site_id, pumps(4, start=3))

    resumed = {"Last-Event-ID": str(seen[-1].id)}
    async with sse(server.client, headers={**reader.headers, **resumed}) as stream:
        assert _ids(await stream.events(4)) == missed
        later = await publish(redis, settings, reader.site_id, pumps(1, start=7))
        assert _ids(await stream.events(1)) == later
        await _nothing_more(stream)


async def test_a_browser_resumes_with_a_fresh_ticket_and_last_event_id_in_the_query(
    server: Server, reader: Key, redis: Redis, settings: Settings
) -> None:
    params = {"ticket": await _ticket(server, reader)}
    async with sse(server.client, params=params) as stream:
        first = await publish(redis, settings, reader.site_id, pumps(2))
        seen = await stream.events(2)
    missed = await publish(redis, settings, reader.site_id, pumps(3, start=2))
    params = {"ticket": await _ticket(server, reader), "last_event_id": str(seen[-1].id)}
    async with sse(server.client, params=params) as stream:
        assert _ids(await stream.events(3)) == missed
        await _nothing_more(stream)
    assert _ids(seen) == first


async def test_the_header_wins_over_the_query_as_a_browser_reconnecting_by_itself_sends_both(
    server: Server, reader: Key, redis: Redis, settings: Settings
) -> None:
    ids = await publish(redis, settings, reader.site_id, pumps(4))
    headers = {**reader.headers, "Last-Event-ID": ids[2]}
    async with sse(server.client, params={"last_event_id": ids[0]}, headers=headers) as stream:
        assert _ids(await stream.events(1)) == ids[3:]
        await _nothing_more(stream)


async def test_a_resume_id_older_than_what_is_kept_starts_with_a_gap_event(
    start_server: StartServer, reader: Key, redis: Redis, settings: Settings
) -> None:
    # The server's own bound, as every writer uses it: a Redis 6 (the embedded one) tells
    # a trimmed stream only by its length at that bound. Redis trims whole nodes of 100, so
    # 400 entries leave one or two nodes.
    server = await start_server(live_stream_maxlen=100)
    [seen] = await publish(redis, settings, reader.site_id, pumps(1))
    await publish(redis, settings, reader.site_id, pumps(400, start=1), maxlen=100)
    key = feed.stream_key(settings.redis_namespace, uuid.UUID(reader.site_id))
    kept = [entry_id.decode() for entry_id, _ in await redis.xrange(key)]
    assert 100 <= len(kept) < 400
    assert seen not in kept
    headers = {**reader.headers, "Last-Event-ID": seen}
    async with sse(server.client, headers=headers) as stream:
        gap = await stream.event()
        assert gap.event == "gap"
        assert gap.id is None
        assert gap.json() == {
            "type": "gap",
            "last_event_id": seen,
            "first_available_id": kept[0],
        }
        assert _ids(await stream.events(len(kept))) == kept
        await _nothing_more(stream)


async def test_a_resume_id_still_kept_has_no_gap_however_old(
    server: Server, reader: Key, redis: Redis, settings: Settings
) -> None:
    ids = await publish(redis, settings, reader.site_id, pumps(3))
    async with sse(server.client, headers={**reader.headers, "Last-Event-ID": "0-0"}) as stream:
        assert _ids(await stream.events(3)) == ids
        await _nothing_more(stream)


async def test_types_and_zone_id_filter_the_events(
    server: Server, reader: Key, redis: Redis, settings: Settings
) -> None:
    zone, other_zone = str(uuid.uuid4()), str(uuid.uuid4())
    params = {"types": "pump,alert", "zone_id": zone}
    async with sse(server.client, params=params, headers=reader.headers) as stream:
        ids = await publish(
            redis,
            settings,
            reader.site_id,
            [
                (feed.EventType.pump, {"zone_id": zone}),
                (feed.EventType.pump, {"zone_id": other_zone}),
                (feed.EventType.reading, {"zone_id": zone}),
                (feed.EventType.alert, {"zone_id": zone, "change": "raised"}),
                (feed.EventType.ingest_job, {"id": "no zone"}),
                (feed.EventType.decision, {"zone_id": zone}),
            ],
        )
        got = await stream.events(2)
        assert [(f.id, f.event) for f in got] == [(ids[0], "pump"), (ids[3], "alert")]
        await _nothing_more(stream)


async def test_an_event_emitted_in_a_committed_transaction_reaches_the_stream(
    server: Server, reader: Key, redis: Redis, settings: Settings
) -> None:
    engine = create_engine(settings)
    sessions = create_sessionmaker(engine, feed.create_publisher(settings, redis))
    try:
        async with sse(server.client, headers=reader.headers) as stream:
            async with sessions() as session:
                async with session.begin():
                    await session.execute(text("SELECT 1"))
                    feed.emit(session, feed.EventType.alert, uuid.UUID(reader.site_id), {"n": 1})
                async with session.begin():
                    feed.emit(session, feed.EventType.alert, uuid.UUID(reader.site_id), {"n": 2})
                    await session.rollback()
            got = await stream.event()
            assert got.json()["data"] == {"n": 1}
            await _nothing_more(stream)
    finally:
        await engine.dispose()


async def test_bad_filters_and_resume_ids_are_422_and_leave_the_ticket_unspent(
    server: Server, reader: Key
) -> None:
    ticket = await _ticket(server, reader)
    bad = [
        ({"types": "pump,rainbow"}, {}, "query.types"),
        ({"types": ""}, {}, "query.types"),
        ({"zone_id": "zone-1"}, {}, "query.zone_id"),
        ({"last_event_id": "yesterday"}, {}, "query.last_event_id"),
        ({"last_event_id": "1-2-3"}, {}, "query.last_event_id"),
        ({"last_event_id": "99999999999999999999-0"}, {}, "query.last_event_id"),
        ({}, {"Last-Event-ID": "$"}, "header.Last-Event-ID"),
    ]
    for params, headers, path in bad:
        response = await server.client.get(
            "/v1/events", params={**params, "ticket": ticket}, headers=headers
        )
        assert_invalid(response, path)
    async with sse(server.client, params={"ticket": ticket}):
        pass


async def test_without_a_key_it_is_401_and_without_read_403(
    server: Server, make_key: MakeKey
) -> None:
    assert_problem(await server.client.get("/v1/events"), 401, "unauthorized")
    junk = bearer("irr_" + "x" * 43)
    assert_problem(await server.client.get("/v1/events", headers=junk), 401, "unauthorized")
    ingest_only = bearer(await make_key("ingest"))
    body = assert_problem(
        await server.client.get("/v1/events", headers=ingest_only), 403, "insufficient_scope"
    )
    assert body["required"] == ["read"]
    # An admin may do whatever read may.
    async with sse(server.client, headers=bearer(await make_key("admin"))):
        pass


async def test_a_stream_ends_when_its_key_is_revoked(server: Server, make_key: MakeKey) -> None:
    admin = bearer(await make_key("admin"))
    created = await server.client.post(
        "/v1/api-keys", json={"name": "wall", "scopes": ["read"]}, headers=admin
    )
    key = created.json()
    async with sse(server.client, headers=bearer(key["key"])) as stream:
        revoked = await server.client.delete(f"/v1/api-keys/{key['id']}", headers=admin)
        assert revoked.status_code == 200
        end = await stream.event()
        assert end.event == "end"
        assert end.json()["reason"] == "revoked"
        try:
            await stream.frame(timeout_s=2)
            raise AssertionError("the stream went on")
        except (EOFError, httpx.ReadError, httpx.RemoteProtocolError):
            pass


async def test_the_stream_is_counted_once_in_read_for_the_tickets_key(
    start_server: object, make_key: MakeKey
) -> None:
    from tests.live.conftest import StartServer, site_of

    assert callable(start_server)
    starter: StartServer = start_server  # type: ignore[assignment]
    server = await starter(rate_limit_read="5/minute")
    headers = bearer(await make_key("read"))
    key = Key(headers, await site_of(server.client, headers))  # 1
    ticket = await _ticket(server, key)  # 2
    async with server.client.stream("GET", "/v1/events", params={"ticket": ticket}) as response:
        assert response.status_code == 200
        assert response.headers["RateLimit"].startswith('"read";r=2;')  # 3


async def test_a_reading_sent_to_the_api_reaches_an_open_stream_filtered_by_its_zone(
    server: Server, make_key: MakeKey
) -> None:
    admin = bearer(await make_key("admin"))
    sensor = await make_sensor(server.client, admin)
    await make_sensor(server.client, admin)  # another zone's
    params = {"types": "reading", "zone_id": sensor["zone_id"]}
    async with sse(server.client, params=params, headers=admin) as stream:
        sent = await server.client.post(
            "/v1/readings",
            json={
                "readings": [{"sensor_id": sensor["id"], "ts": utcnow().isoformat(), "value": 31}]
            },
            headers=admin,
        )
        assert sent.status_code == 200, sent.text
        got = (await stream.event()).json()
    assert got["type"] == "reading"
    assert got["data"]["sensor_id"] == sensor["id"]
    assert got["data"]["zone_id"] == sensor["zone_id"]
    assert got["data"]["value"] == 31
