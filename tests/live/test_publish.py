"""What a transaction emits reaches its site's stream on commit, and only then."""

import uuid

from redis.asyncio import Redis
from sqlalchemy import text

from irrigation import feed
from irrigation.db import create_engine, create_sessionmaker
from irrigation.settings import Settings


async def _stream(redis: Redis, settings: Settings, site_id: uuid.UUID) -> list[dict[str, object]]:
    entries = await redis.xrange(feed.stream_key(settings.redis_namespace, site_id))
    return [feed.decode(entry_id, fields) for entry_id, fields in entries]


async def test_committed_events_are_published_in_order_and_rolled_back_ones_never(
    settings: Settings, redis: Redis
) -> None:
    engine = create_engine(settings)
    sessions = create_sessionmaker(engine, feed.create_publisher(settings, redis))
    site, other = uuid.uuid4(), uuid.uuid4()
    try:
        async with sessions() as session:
            async with session.begin():
                await session.execute(text("SELECT 1"))
                feed.emit(session, feed.EventType.alert, site, {"n": 1})
                feed.emit(session, feed.EventType.pump, site, {"n": 2})
                feed.emit(session, feed.EventType.pump, other, {"n": 3})
            async with session.begin():
                feed.emit(session, feed.EventType.alert, site, {"n": 4})
                await session.rollback()
            async with session.begin():
                async with session.begin_nested() as savepoint:
                    feed.emit(session, feed.EventType.decision, site, {"n": 5})
                    await savepoint.rollback()
                feed.emit(session, feed.EventType.decision, site, {"n": 6})
    finally:
        await engine.dispose()

    mine = await _stream(redis, settings, site)
    assert [(e["type"], e["data"]) for e in mine] == [
        ("alert", {"n": 1}),
        ("pump", {"n": 2}),
        ("decision", {"n": 6}),
    ]
    assert all(e["site_id"] == str(site) and e["id"] and e["at"] for e in mine)
    assert [e["data"] for e in await _stream(redis, settings, other)] == [{"n": 3}]


async def test_a_session_without_a_publisher_keeps_nothing(settings: Settings) -> None:
    engine = create_engine(settings)
    try:
        async with create_sessionmaker(engine)() as session:
            feed.emit(session, feed.EventType.alert, uuid.uuid4(), {"n": 1})
            assert "feed.pending" not in session.info
    finally:
        await engine.dispose()
