"""The Redis hot cache (latest value and the last 60 per sensor) and the live event feed.

Redis is a convenience, never the record: every call here has a short timeout, failures are
swallowed, and after one failure Redis is skipped for a few seconds so that a dead Redis
costs ingestion one timeout, not one per batch."""

import asyncio
import json
import time
import uuid
from collections.abc import Collection
from typing import Any

import structlog
from arq.connections import ArqRedis

from irrigation import queue
from irrigation.ingest.rows import TAIL_BYTES, Rows, by_sensor, decode_tail

log = structlog.get_logger(__name__)
RECENT = 60
BACKOFF_S = 5.0
CLOCK_SLACK_S = 1.0


class HotCache:
    def __init__(self, redis: ArqRedis, namespace: str, timeout_s: float) -> None:
        self.redis = redis
        self.namespace = namespace
        self.timeout_s = timeout_s
        self._skip_until = 0.0
        self._evaluation_due = 0.0

    def key(self, sensor_id: uuid.UUID) -> str:
        # One string of packed values; the sorted sets of earlier versions were named
        # `...:recent` and are simply no longer read (CHANGELOG.md).
        return f"{self.namespace}:sensor:{sensor_id}:last60"

    @property
    def channel(self) -> str:
        return f"{self.namespace}:readings"

    def _available(self) -> bool:
        return time.monotonic() >= self._skip_until

    def _failed(self, what: str, exc: BaseException) -> None:
        self._skip_until = time.monotonic() + BACKOFF_S
        log.warning("redis_unavailable", action=what, error=repr(exc))

    async def record(
        self, rows: Rows, zone_ids: Collection[uuid.UUID] = (), delay_s: float = 0.0
    ) -> None:
        """Newest 60 per sensor, one event per sensor on the readings channel, and the zones
        marked for their automation to look at the new readings: one round trip for the
        batch. Each sensor's entry is one string of the rows' own bytes from `ts` on, oldest
        first, so nothing is formatted per reading here."""
        if not (rows or zone_ids) or not self._available():
            return
        pipe = self.redis.pipeline(transaction=False)
        if rows:
            keys, args = self._entries(rows)
            # redis-py types its arguments as str; it sends bytes as they are.
            pipe.eval(_RECORD, len(keys), *keys, *args)  # type: ignore[arg-type]
        if zone_ids:
            pipe.sadd(queue.dirty_zones_key(self.redis), *(str(z) for z in zone_ids))
        try:
            await asyncio.wait_for(pipe.execute(), self.timeout_s)
            # The zones are marked; the job that evaluates them only needs queueing when
            # none is known to be due later (arq's worker and this clock may differ by up
            # to CLOCK_SLACK_S). That spares three round trips per batch.
            if zone_ids and time.time() >= self._evaluation_due - CLOCK_SLACK_S:
                due = await asyncio.wait_for(
                    queue.schedule_zone_evaluation(self.redis, delay_s), self.timeout_s
                )
                self._evaluation_due = due or 0.0
        except Exception as exc:  # the database already holds the readings
            self._failed("record", exc)

    def _entries(self, rows: Rows) -> tuple[list[str], list[bytes | str]]:
        keys: list[str] = []
        args: list[bytes | str] = [self.channel, str(RECENT)]
        for sensor_id, start, end in by_sensor(rows):
            keys.append(self.key(sensor_id))
            args.append(rows.tails(max(start, end - RECENT), end))
            ts, value, _ = decode_tail(rows.tails(end - 1, end))
            event = {"sensor_id": str(sensor_id), "count": end - start, "ts": ts.isoformat()}
            args.append(json.dumps({**event, "value": value}))
        return keys, args

    async def recent(self, sensor_id: uuid.UUID) -> list[dict[str, Any]] | None:
        """Newest first; None when Redis cannot say (then ask the database)."""
        if not self._available():
            return None
        try:
            blob = await asyncio.wait_for(self.redis.get(self.key(sensor_id)), self.timeout_s)
        except Exception as exc:
            self._failed("recent", exc)
            return None
        if not blob:
            return None
        newest_first = range(len(blob) - TAIL_BYTES, -1, -TAIL_BYTES)
        return [_entry(blob[at : at + TAIL_BYTES]) for at in newest_first]


# One call instead of commands per sensor: packing ~13,000 arguments in redis-py cost more
# than the whole script. A sensor's newest 60 are one string of 30-byte entries (the time's
# length word and microseconds since 2000, the value's, the quality's), oldest first. A
# batch newer than everything cached is appended, and one older than all 60 cached changes
# nothing, neither reading an entry; otherwise the two runs are merged from their newest
# ends, at most 60 steps. A sorted set with a member per reading cost Redis ~19 ms of CPU
# per 10,000-reading batch.
_RECORD = f"""
local W, channel, keep = {TAIL_BYTES}, ARGV[1], tonumber(ARGV[2])
local function micros(blob, at) return (struct.unpack('>i8', blob, at + 4)) end
local function merge(old, new)
    local out, i, j = {{}}, #old - W + 1, #new - W + 1
    local a, b = micros(old, i), micros(new, j)
    while #out < keep and (a or b) do
        if b and (not a or b >= a) then
            out[#out + 1] = string.sub(new, j, j + W - 1)
            if a == b then i = i - W end  -- one entry per instant
            j = j - W
        else
            out[#out + 1] = string.sub(old, i, i + W - 1)
            i = i - W
        end
        a = i > 0 and micros(old, i) or nil
        b = j > 0 and micros(new, j) or nil
    end
    local oldest_first = {{}}
    for k = #out, 1, -1 do oldest_first[#oldest_first + 1] = out[k] end
    return table.concat(oldest_first)
end
for i, key in ipairs(KEYS) do
    local new, old = ARGV[1 + 2 * i], redis.call('GET', key)
    if not old or micros(old, #old - W + 1) < micros(new, 1) then
        redis.call('SET', key, string.sub((old or '') .. new, -keep * W))
    elseif #old < keep * W or micros(new, #new - W + 1) >= micros(old, 1) then
        redis.call('SET', key, merge(old, new))
    end
    redis.call('PUBLISH', channel, ARGV[2 + 2 * i])
end
return #KEYS
"""


def _entry(tail: bytes) -> dict[str, Any]:
    ts, value, quality = decode_tail(tail)
    return {"ts": ts.isoformat(), "value": value, "quality": quality}
