"""The per-key cap on open streams, across every API process: each open stream holds a
lease, a member of the key's sorted set in Redis scored with its expiry. A stream renews
its lease while it is open and removes it when it ends; a process that dies without
saying so leaves leases that expire on their own, so a crash never locks a key out for
longer than a lease's time to live."""

import uuid

from redis.asyncio import Redis

# Redis's own clock, so API hosts with skewed clocks agree on what has expired.
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""
_ACQUIRE = (
    _NOW
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""
)
# Every lease's expiry is at most now + ttl, so the set's own expiry covers them all.
_RENEW = (
    _NOW
    + """
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""
)


class Leases:
    def __init__(self, redis: Redis, namespace: str, limit: int, ttl_s: float) -> None:
        self.redis = redis
        self.namespace = namespace
        self.limit = limit
        self.ttl_ms = max(1, round(ttl_s * 1000))
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)

    def key(self, key_id: uuid.UUID) -> str:
        return f"{self.namespace}:live:streams:{key_id}"

    async def acquire(self, key_id: uuid.UUID) -> str | None:
        """A new lease, or None when the key already holds `limit` live ones."""
        lease = uuid.uuid4().hex
        taken = await self._acquire(keys=[self.key(key_id)], args=[lease, self.limit, self.ttl_ms])
        return lease if taken else None

    async def renew(self, key_id: uuid.UUID, lease: str) -> None:
        await self._renew(keys=[self.key(key_id)], args=[lease, self.ttl_ms])

    async def release(self, key_id: uuid.UUID, lease: str) -> None:
        await self.redis.zrem(self.key(key_id), lease)
