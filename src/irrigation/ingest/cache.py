"""The Redis hot cache (latest value and the last 60 per sensor) and the readings' live
events (irrigation/feed.py: the site's stream), written in one round trip per batch.

Redis is a convenience, never the record: every call here has a short timeout, failures are
swallowed, and after one failure Redis is skipped for a few seconds so that a dead Redis
costs ingestion one timeout, not one per batch."""

import asyncio
import json
import time
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog
from arq.connections import ArqRedis

from irrigation import feed, queue
from irrigation.ingest.rows import TAIL_BYTES, Rows, by_sensor, decode_tail
from irrigation.settings import Settings

log = structlog.get_logger(__name__)
RECENT = 60
BACKOFF_S = 5.0
CLOCK_SLACK_S = 1.0
# At most one `reading` event per sensor per this long: the first newer reading in it wins.
THROTTLE_MS = 1000


@dataclass(frozen=True)
class Live:
    """What a batch tells its site's live feed: with `readings`, each sensor's newest
    reading (with the sensor's zone from `zones`) when it is newer than every reading cached
    for the sensor, at most one per sensor per second; and `job`, the batch's ingestion job
    (IngestionJobOut), if given."""

    site_id: uuid.UUID
    zones: Mapping[uuid.UUID, uuid.UUID | None] = field(default_factory=dict)
    readings: bool = True
    job: Mapping[str, Any] | None = None


class HotCache:
    def __init__(
        self, redis: ArqRedis, namespace: str, timeout_s: float, *, stream_maxlen: int
    ) -> None:
        self.redis = redis
        self.namespace = namespace
        self.timeout_s = timeout_s
        self.stream_maxlen = stream_maxlen
        self._skip_until = 0.0
        self._evaluation_due = 0.0

    @classmethod
    def of(cls, settings: Settings, redis: ArqRedis) -> "HotCache":
        return cls(
            redis,
            settings.redis_namespace,
            settings.redis_timeout_s,
            stream_maxlen=settings.live_stream_maxlen,
        )

    def key(self, sensor_id: uuid.UUID) -> str:
        # One string of packed values; the sorted sets of earlier versions were named
        # `...:recent` and are simply no longer read (CHANGELOG.md).
        return f"{self.namespace}:sensor:{sensor_id}:last60"

    def throttle_key(self, sensor_id: uuid.UUID) -> str:
        return f"{self.namespace}:feed:throttle:{sensor_id}"

    def _available(self) -> bool:
        return time.monotonic() >= self._skip_until

    def _failed(self, what: str, exc: BaseException) -> None:
        self._skip_until = time.monotonic() + BACKOFF_S
        log.warning("redis_unavailable", action=what, error=repr(exc))

    async def record(
        self,
        rows: Rows,
        zone_ids: Collection[uuid.UUID] = (),
        delay_s: float = 0.0,
        *,
        live: Live | None = None,
    ) -> None:
        """Newest 60 per sensor, the batch's live events (`live`), and the zones marked for
        their automation to look at the new readings: one round trip for the batch. Each
        sensor's entry is one string of the rows' own bytes from `ts` on, oldest first, so
        nothing is formatted per reading here."""
        job = live.job if live is not None else None
        if not (rows or zone_ids or job) or not self._available():
            return
        at = datetime.now(UTC)
        stream = feed.stream_key(self.namespace, live.site_id) if live is not None else ""
        pipe = self.redis.pipeline(transaction=False)
        if rows:
            keys, args = self._entries(rows, stream, live if live and live.readings else None, at)
            # redis-py types its arguments as str; it sends bytes as they are.
            pipe.eval(_RECORD, len(keys), *keys, *args)  # type: ignore[arg-type]
        if live is not None and job is not None:
            event = feed.encode(feed.EventType.ingest_job, live.site_id, at, job)
            pipe.xadd(stream, {"e": event}, maxlen=self.stream_maxlen, approximate=True)
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

    async def supervise_flow(self, site_id: uuid.UUID) -> None:
        """Ask for the site's flows to be judged (its flow meters sent readings): one job per
        site at a time, so a burst of batches costs one queued job."""
        if not self._available():
            return
        try:
            await asyncio.wait_for(queue.enqueue_flow_check(self.redis, site_id), self.timeout_s)
        except Exception as exc:  # the next batch of the meters asks again
            self._failed("supervise_flow", exc)

    def _entries(
        self, rows: Rows, stream: str, live: Live | None, at: datetime
    ) -> tuple[list[str], list[bytes | str]]:
        """KEYS: the stream, then each sensor's entry and throttle; ARGV: the entries' bound
        and the stream's, then each sensor's newest rows and its event ('' for none)."""
        keys: list[str] = [stream]
        args: list[bytes | str] = [str(RECENT), str(self.stream_maxlen)]
        events = _ReadingEvents(live, at) if live is not None else None
        for sensor_id, start, end in by_sensor(rows):
            keys += (self.key(sensor_id), self.throttle_key(sensor_id))
            args.append(rows.tails(max(start, end - RECENT), end))
            args.append(events.of(sensor_id, rows.tails(end - 1, end)) if events else "")
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


class _ReadingEvents:
    """A batch's `reading` events, as `feed.encode` writes them: everything but `data` is
    the batch's, so it is encoded once (encoded per sensor, it cost `_entries` a third of
    its time)."""

    def __init__(self, live: Live, at: datetime) -> None:
        self.zones = live.zones
        whole = feed.encode(feed.EventType.reading, live.site_id, at, {})
        self.head = whole.removesuffix("{}}")

    def of(self, sensor_id: uuid.UUID, newest: bytes) -> str:
        ts, value, quality = decode_tail(newest)
        zone_id = self.zones.get(sensor_id)
        data = {
            "sensor_id": str(sensor_id),
            "zone_id": str(zone_id) if zone_id else None,
            "value": value,
            "ts": ts.isoformat(),
            "quality": quality,
        }
        return f"{self.head}{json.dumps(data, separators=(',', ':'))}}}"


# One call instead of commands per sensor: packing ~13,000 arguments in redis-py cost more
# than the whole script. A sensor's newest 60 are one string of 30-byte entries (the time's
# length word and microseconds since 2000, the value's, the quality's), oldest first. A
# batch newer than everything cached is appended, and one older than all 60 cached changes
# nothing, neither reading an entry; otherwise the two runs are merged from their newest
# ends, at most 60 steps. A sorted set with a member per reading cost Redis ~19 ms of CPU
# per 10,000-reading batch.
#
# A sensor's `reading` event goes to the site's stream only when the batch's newest reading
# is newer than every one cached (a late or re-sent reading is not the sensor's latest
# value), and only if the sensor's throttle key was free: at most one per sensor per
# THROTTLE_MS, the first newer reading in it winning.
_RECORD = f"""
local W, stream, keep, maxlen = {TAIL_BYTES}, KEYS[1], tonumber(ARGV[1]), ARGV[2]
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
for i = 1, (#KEYS - 1) / 2 do
    local key, throttle = KEYS[2 * i], KEYS[2 * i + 1]
    local new, event, old = ARGV[1 + 2 * i], ARGV[2 + 2 * i], redis.call('GET', key)
    local is_newest = not old or micros(old, #old - W + 1) < micros(new, #new - W + 1)
    if not old or micros(old, #old - W + 1) < micros(new, 1) then
        redis.call('SET', key, string.sub((old or '') .. new, -keep * W))
    elseif #old < keep * W or micros(new, #new - W + 1) >= micros(old, 1) then
        redis.call('SET', key, merge(old, new))
    end
    if is_newest and event ~= '' and redis.call('SET', throttle, 1, 'PX', {THROTTLE_MS}, 'NX') then
        redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'e', event)
    end
end
return (#KEYS - 1) / 2
"""


def _entry(tail: bytes) -> dict[str, Any]:
    ts, value, quality = decode_tail(tail)
    return {"ts": ts.isoformat(), "value": value, "quality": quality}
