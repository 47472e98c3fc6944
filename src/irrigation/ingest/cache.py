"""The Redis hot cache (latest value and the last 60 per sensor) and the live event feed.

Redis is a convenience, never the record: every call here has a short timeout, failures are
swallowed, and after one failure Redis is skipped for a few seconds so that a dead Redis
costs ingestion one timeout, not one per batch."""

import asyncio
import json
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC
from typing import Any

import structlog
from arq.connections import ArqRedis
from redis.asyncio import Redis

from irrigation import queue
from irrigation.ingest.schemas import ReadingIn

log = structlog.get_logger(__name__)
RECENT = 60
BACKOFF_S = 5.0


class HotCache:
    def __init__(self, redis: Redis, namespace: str, timeout_s: float) -> None:
        self.redis = redis
        self.namespace = namespace
        self.timeout_s = timeout_s
        self._skip_until = 0.0

    def key(self, sensor_id: uuid.UUID) -> str:
        return f"{self.namespace}:sensor:{sensor_id}:recent"

    @property
    def channel(self) -> str:
        return f"{self.namespace}:readings"

    def _available(self) -> bool:
        return time.monotonic() >= self._skip_until

    def _failed(self, what: str, exc: BaseException) -> None:
        self._skip_until = time.monotonic() + BACKOFF_S
        log.warning("redis_unavailable", action=what, error=repr(exc))

    async def request_evaluation(self, zone_ids: set[uuid.UUID], delay_s: float) -> None:
        """Ask for the automation of these zones to look at their new readings; behind the
        same breaker as the cache, so a dead Redis costs one timeout per back-off, not one
        per batch."""
        if not zone_ids or not self._available() or not isinstance(self.redis, ArqRedis):
            return
        try:
            await queue.request_zone_evaluation(self.redis, zone_ids, delay_s)
        except Exception as exc:  # Redis down must never fail the ingestion that asks
            self._failed("request_evaluation", exc)

    async def record(self, readings: Sequence[ReadingIn]) -> None:
        """Newest 60 per sensor in a sorted set scored by time (late data sorts itself in),
        and one event per sensor on the readings channel."""
        if not readings or not self._available():
            return
        by_sensor: dict[uuid.UUID, list[ReadingIn]] = defaultdict(list)
        for reading in readings:
            by_sensor[reading.sensor_id].append(reading)
        pipe = self.redis.pipeline(transaction=False)
        for sensor_id, items in by_sensor.items():
            newest = sorted(items, key=lambda r: r.ts)[-RECENT:]
            key = self.key(sensor_id)
            pipe.zadd(key, {_member(r): r.ts.timestamp() for r in newest})
            pipe.zremrangebyrank(key, 0, -RECENT - 1)
            last = newest[-1]
            event = {
                "sensor_id": str(sensor_id),
                "count": len(items),
                "ts": last.ts.isoformat(),
                "value": last.value,
            }
            pipe.publish(self.channel, json.dumps(event))
        try:
            await asyncio.wait_for(pipe.execute(), self.timeout_s)
        except Exception as exc:  # the database already holds the readings
            self._failed("record", exc)

    async def recent(self, sensor_id: uuid.UUID) -> list[dict[str, Any]] | None:
        """Newest first; None when Redis cannot say (then ask the database)."""
        if not self._available():
            return None
        try:
            members = await asyncio.wait_for(
                self.redis.zrange(self.key(sensor_id), 0, RECENT - 1, desc=True),
                self.timeout_s,
            )
        except Exception as exc:
            self._failed("recent", exc)
            return None
        return [json.loads(m) for m in members] if members else None


def _member(reading: ReadingIn) -> str:
    # In UTC: one instant is one member, whatever offset the device wrote it with.
    ts = reading.ts.astimezone(UTC).isoformat()
    # The text json.dumps would give (a finite float's repr is valid JSON), at half the cost.
    return f'{{"ts": "{ts}", "value": {reading.value!r}, "quality": {reading.quality}}}'
