"""The Redis hot cache (latest value and the last 60 per sensor) and the live event feed.

Redis is a convenience, never the record: every call here has a short timeout, failures are
swallowed, and after one failure Redis is skipped for a few seconds so that a dead Redis
costs ingestion one timeout, not one per batch."""

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Any, cast

import structlog
from arq.connections import ArqRedis

from irrigation import queue
from irrigation.ingest.rows import (
    PG_EPOCH,
    TAIL,
    TAIL_BYTES,
    TS_LENGTH,
    Rows,
    by_sensor,
    decode_tail,
)

log = structlog.get_logger(__name__)
RECENT = 60
PG_EPOCH_S = int(PG_EPOCH.timestamp())
BACKOFF_S = 5.0


class HotCache:
    def __init__(self, redis: ArqRedis, namespace: str, timeout_s: float) -> None:
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
        if not zone_ids or not self._available():
            return
        try:
            await queue.request_zone_evaluation(self.redis, zone_ids, delay_s)
        except Exception as exc:  # Redis down must never fail the ingestion that asks
            self._failed("request_evaluation", exc)

    async def record(self, rows: Rows) -> None:
        """Newest 60 per sensor in a sorted set scored by time (late data sorts itself in),
        and one event per sensor on the readings channel: one script call for the batch.
        The members are the rows' own bytes from `ts` on, so nothing is formatted here."""
        if not rows or not self._available():
            return
        keys: list[str] = []
        args: list[bytes | str] = [self.channel, str(RECENT)]
        for sensor_id, group in by_sensor(rows):
            newest = group[-RECENT:]
            ts, value, _ = decode_tail(newest[-1][TAIL])
            keys.append(self.key(sensor_id))
            args.append(b"".join([row[TAIL] for row in newest]))
            args.append(
                json.dumps(
                    {
                        "sensor_id": str(sensor_id),
                        "count": len(group),
                        "ts": ts.isoformat(),
                        "value": value,
                    }
                )
            )
        try:
            await asyncio.wait_for(
                # redis-py types its arguments as str; it sends bytes as they are.
                cast(Awaitable[int], self.redis.eval(_RECORD, len(keys), *keys, *args)),  # type: ignore[arg-type]
                self.timeout_s,
            )
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
        return [_unpack(m) for m in members] if members else None


# One call instead of three commands per sensor: packing ~13,000 arguments in redis-py cost
# more than the whole script. Each sensor's members arrive as one string (30 bytes each:
# the time's length word and microseconds since 2000, the value's, the quality's), scored
# in epoch seconds like the members of the earlier text form that a set may still hold.
_RECORD = f"""
local channel, keep = ARGV[1], tonumber(ARGV[2])
for i, key in ipairs(KEYS) do
    local tails, args = ARGV[1 + 2 * i], {{}}
    for pos = 1, #tails, {TAIL_BYTES} do
        local member = string.sub(tails, pos, pos + {TAIL_BYTES - 1})
        args[#args + 1] = struct.unpack('>i8', member, 5) / 1000000 + {PG_EPOCH_S}
        args[#args + 1] = member
    end
    redis.call('ZADD', key, unpack(args))
    redis.call('ZREMRANGEBYRANK', key, 0, -keep - 1)
    redis.call('PUBLISH', channel, ARGV[2 + 2 * i])
end
return #KEYS
"""


def _unpack(member: bytes | str) -> dict[str, Any]:
    if isinstance(member, bytes) and len(member) == TAIL_BYTES and member.startswith(TS_LENGTH):
        ts, value, quality = decode_tail(member)
        return {"ts": ts.isoformat(), "value": value, "quality": quality}
    # Written by earlier versions (a text member, never starting with a NUL byte).
    text = member.decode() if isinstance(member, bytes) else member
    if text.startswith("{"):
        old: dict[str, Any] = json.loads(text)
        return old
    epoch, number, level = text.split("|")
    return {
        "ts": datetime.fromtimestamp(float(epoch), UTC).isoformat(),
        "value": float(number),
        "quality": int(level),
    }
