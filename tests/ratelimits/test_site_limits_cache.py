"""Each API process keeps a site's limits a short while: a herd of requests at a cold
cache reads them once, and a change made meanwhile is not overwritten by an older read."""

import asyncio
import uuid

from irrigation.common.limiter import RateClass
from irrigation.ratelimits.deps import Limits, SiteLimitsCache
from irrigation.settings import parse_rate_limit

SITE = uuid.uuid4()


def limits(text: str) -> Limits:
    return dict.fromkeys(RateClass, parse_rate_limit(text))


async def test_a_herd_at_a_cold_cache_reads_the_limits_once() -> None:
    cache = SiteLimitsCache(ttl_s=60)
    reads = 0

    async def read() -> Limits:
        nonlocal reads
        reads += 1
        await asyncio.sleep(0.05)
        return limits("5/minute")

    got = await asyncio.gather(*(cache.get(SITE, read) for _ in range(200)))

    assert reads == 1
    assert all(g[RateClass.read].amount == 5 for g in got)
    await cache.get(SITE, read)
    assert reads == 1  # then from the cache


async def test_a_waiter_that_gives_up_does_not_cancel_the_others_read() -> None:
    cache = SiteLimitsCache(ttl_s=60)

    async def read() -> Limits:
        await asyncio.sleep(0.05)
        return limits("5/minute")

    first = asyncio.ensure_future(cache.get(SITE, read))
    second = asyncio.ensure_future(cache.get(SITE, read))
    await asyncio.sleep(0.01)
    first.cancel()

    assert (await second)[RateClass.read].amount == 5


async def test_a_read_begun_before_a_change_is_not_kept() -> None:
    cache = SiteLimitsCache(ttl_s=60)
    release = asyncio.Event()

    async def old_read() -> Limits:
        await release.wait()
        return limits("5/minute")

    async def new_read() -> Limits:
        return limits("7/minute")

    stale = asyncio.ensure_future(cache.get(SITE, old_read))
    await asyncio.sleep(0.01)
    cache.forget(SITE)  # the PUT committed meanwhile
    release.set()
    await stale

    assert (await cache.get(SITE, new_read))[RateClass.read].amount == 7
