"""The hot cache: a row's own bytes on write, the same JSON as ever on read, and the
newest 60 per sensor whatever order batches arrive in."""

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta, timezone

import redis.asyncio as aioredis

from irrigation import feed, queue
from irrigation.ingest.cache import HotCache, Live, _entry, _ReadingEvents
from irrigation.ingest.rows import Rows, encode
from irrigation.ingest.schemas import ReadingIn


def test_an_entry_reads_back_as_the_reading_in_utc() -> None:
    ts = datetime(2026, 11, 23, 7, 30, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
    reading = ReadingIn(sensor_id=uuid.uuid4(), ts=ts, value=41.25, quality=87)
    assert _entry(encode([reading]).tails(0, 1)) == {
        "ts": "2026-11-23T05:30:00.123456+00:00",
        "value": 41.25,
        "quality": 87,
    }


async def test_the_newest_60_survive_appends_late_data_and_resent_instants(
    redis: aioredis.Redis, redis_namespace: str
) -> None:
    cache = HotCache(redis, redis_namespace, timeout_s=2, stream_maxlen=100)  # type: ignore[arg-type]
    sensor = uuid.uuid4()
    t0 = datetime(1999, 12, 31, 23, 59, tzinfo=UTC)  # across 2000: negative times too

    def at(*minutes: int) -> Rows:
        return encode(
            [
                ReadingIn(sensor_id=sensor, ts=t0 + timedelta(minutes=m), value=float(m))
                for m in minutes
            ]
        )

    async def cached() -> list[float]:
        recent = await cache.recent(sensor)
        assert recent is not None
        return [r["value"] for r in recent]

    await cache.record(at(*range(0, 50)))
    await cache.record(at(*range(50, 70)))  # newer: appended, the oldest 10 cut
    assert await cached() == [float(m) for m in range(69, 9, -1)]
    await cache.record(at(5, 30, 30, 69, 100))  # late, re-sent and newer, in one batch
    assert await cached() == [100.0, *(float(m) for m in range(69, 10, -1))]
    await cache.record(at(1, 2, 3))  # older than all 60 cached: nothing changes
    assert await cached() == [100.0, *(float(m) for m in range(69, 10, -1))]
    assert await cache.recent(uuid.uuid4()) is None

    sensor = uuid.uuid4()  # fewer than 60 cached: older readings join them
    await cache.record(at(50, 51))
    await cache.record(at(1, 51, 2))
    assert await cached() == [51.0, 50.0, 2.0, 1.0]


async def test_batches_mark_their_zones_and_queue_one_evaluation_until_it_has_run(
    redis: aioredis.Redis, redis_namespace: str, redis_url: str
) -> None:
    """Every batch marks its zones; the deferred evaluation job is queued once while it is
    due later, and again by the first batch after it has run."""
    base = f"{redis_namespace}:queue"
    arq = queue.create_redis(redis_url, 2.0, base)
    cache = HotCache(arq, redis_namespace, timeout_s=2, stream_maxlen=100)
    job_id = f"{base}:evaluate-zones"
    queue_name = f"{base}:automation"  # the queue the automation workers serve
    zones = [uuid.uuid4() for _ in range(3)]
    rows = encode([ReadingIn(sensor_id=uuid.uuid4(), ts=datetime.now(UTC), value=1.0)])
    try:
        await cache.record(rows, {zones[0]}, delay_s=1.5)
        due = await redis.zscore(queue_name, job_id)
        assert due is not None
        await cache.record(rows, {zones[1]}, delay_s=1.5)  # due later: not queued again
        assert await redis.zrange(queue_name, 0, -1, withscores=True) == [(job_id.encode(), due)]
        marked = await redis.smembers(queue.dirty_zones_key(arq))
        assert {uuid.UUID(m.decode()) for m in marked} == set(zones[:2])

        # The worker takes the job when it is due; the next batch queues it again. Time
        # passes on purpose (no condition to poll): a worker takes nothing before it is due.
        await asyncio.sleep(max(0.0, due / 1000 - time.time()) + 0.05)
        await redis.zrem(queue_name, job_id)
        await redis.delete(f"arq:job:{job_id}")
        await cache.record(rows, {zones[2]}, delay_s=1.5)
        again = await redis.zscore(queue_name, job_id)
        assert again is not None
        assert again > due
    finally:
        await redis.delete(f"arq:job:{job_id}", queue_name)
        await arq.aclose()


def test_a_reading_event_is_what_the_feed_would_encode() -> None:
    """The batch's events share one encoded head: byte for byte `feed.encode`'s."""
    sensor, site, zone = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    at = datetime(2026, 11, 23, 7, 30, 1, 5, tzinfo=UTC)
    reading = ReadingIn(sensor_id=sensor, ts=at - timedelta(seconds=3), value=0.1, quality=7)
    rows = encode([reading])
    data = {
        "sensor_id": str(sensor),
        "zone_id": str(zone),
        "value": 0.1,
        "ts": "2026-11-23T07:29:58.000005+00:00",
        "quality": 7,
    }
    events = _ReadingEvents(Live(site, {sensor: zone}), at)
    assert events.of(sensor, rows.tails(0, 1)) == feed.encode("reading", site, at, data)
    unzoned = _ReadingEvents(Live(site), at).of(sensor, rows.tails(0, 1))
    assert unzoned == feed.encode("reading", site, at, {**data, "zone_id": None})
