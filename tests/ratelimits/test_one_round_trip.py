"""The limiter charges and reads its window in one script; what it counts is `limits`'
own sliding window counter: the same keys, the same figures as `limits` reads them (a
process of an older version, charging through `limits` itself, shares the counts)."""

import math
import time
from collections.abc import AsyncIterator

import pytest
from limits import parse
from limits.aio.storage import RedisStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from redis.asyncio import ConnectionPool

from irrigation.common.limiter import RateClass, RateLimiter


@pytest.fixture
async def pool(redis_url: str) -> AsyncIterator[ConnectionPool]:
    connections = ConnectionPool.from_url(redis_url)
    yield connections
    await connections.aclose()


async def test_the_charge_counts_in_limits_own_window_and_reads_it_as_limits_does(
    pool: ConnectionPool, redis_namespace: str
) -> None:
    mine = RateLimiter(pool, redis_namespace)
    theirs = SlidingWindowCounterRateLimiter(
        RedisStorage(
            "async+redis://",
            implementation="redispy",
            connection_pool=pool,  # type: ignore[arg-type]
            key_prefix=f"{redis_namespace}:ratelimit",
        )
    )
    limit = parse("5/minute")
    seen = []
    for cost in (1, 2, 3, 1, 6, 1):
        charged = await mine.hit(RateClass.read, limit, "key:k", cost)
        assert charged is not None
        allowed, quota = charged
        stats = await theirs.get_window_stats(limit, RateClass.read, "key:k")
        assert quota.remaining == stats.remaining
        # limits reads the reset a moment later: the same whole second, or the one before.
        # It takes the window's expiry modulo the window, so a window begun within the same
        # millisecond (a unix socket to an idle Redis) reads as resetting now: 0 is 60.
        theirs_s = math.ceil(stats.reset_time - time.time())
        assert (quota.reset_s - theirs_s) % 60 in (0, 1), (quota.reset_s, theirs_s)
        seen.append((allowed, quota.remaining))
        # Charged through limits itself: counted in the same window.
        assert await theirs.test(limit, RateClass.read, "key:k") == (quota.remaining > 0)
    # 1 + 2 pass (2 left), 3 is refused, 1 passes (1 left), 6 is more than the limit, 1 passes.
    assert seen == [(True, 4), (True, 2), (False, 2), (True, 1), (False, 1), (True, 0)]
    await theirs.hit(limit, RateClass.read, "key:k")  # over the limit through limits: refused
    refused = await mine.hit(RateClass.read, limit, "key:k")
    assert refused is not None
    assert refused[0] is False
    assert refused[1].remaining == 0
    assert 0 < refused[1].reset_s <= 60
