"""The dependency every API route runs first: count the request against its caller's limit
for the route's class (429 when over), per API key, or per client address when the request
has no valid key."""

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping

from limits import RateLimitItem
from starlette.requests import HTTPConnection

from irrigation.auth.deps import identify
from irrigation.common.limiter import RateClass, RateLimiter, request_rule, start_budget
from irrigation.ratelimits import service

Limits = dict[RateClass, RateLimitItem]


class SiteLimitsCache:
    """Each site's effective limits for a short TTL: without it, every request would read
    the site's own limits from the database. Concurrent misses of one site share one read
    (a herd of requests at a cold cache is one query, not one each). A change through this
    process takes effect at once; through another, within `ttl_s`."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._entries: dict[uuid.UUID, tuple[Limits, float]] = {}
        self._reading: dict[uuid.UUID, asyncio.Future[Limits]] = {}
        # Bumped by `forget`: a read that began before a change does not keep its result.
        self._changes: dict[uuid.UUID, int] = {}

    async def get(self, site_id: uuid.UUID, read: Callable[[], Awaitable[Limits]]) -> Limits:
        entry = self._entries.get(site_id)
        if entry is not None and entry[1] >= time.monotonic():
            return entry[0]
        reading = self._reading.get(site_id)
        if reading is None:
            # A task of its own: a request that gives up does not cancel the others' read.
            reading = asyncio.ensure_future(self._read(site_id, read))
            reading.add_done_callback(_retrieved)
            self._reading[site_id] = reading
        return await asyncio.shield(reading)

    async def _read(self, site_id: uuid.UUID, read: Callable[[], Awaitable[Limits]]) -> Limits:
        changes = self._changes.get(site_id, 0)
        try:
            limits = await read()
        finally:
            if self._changes.get(site_id, 0) == changes:
                self._reading.pop(site_id, None)
        if self.ttl_s > 0 and self._changes.get(site_id, 0) == changes:
            self._entries[site_id] = (limits, time.monotonic() + self.ttl_s)
        return limits

    def forget(self, site_id: uuid.UUID) -> None:
        self._changes[site_id] = self._changes.get(site_id, 0) + 1
        self._entries.pop(site_id, None)
        self._reading.pop(site_id, None)


def _retrieved(reading: "asyncio.Future[Limits]") -> None:
    # Its waiters may all have given up: an error nobody awaited is not worth a warning.
    if not reading.cancelled():
        reading.exception()


async def _site_limits(
    request: HTTPConnection, site_id: uuid.UUID
) -> Mapping[RateClass, RateLimitItem]:
    async def read() -> Limits:
        async with request.app.state.sessionmaker() as session:
            own = await service.site_limits(session, site_id)
        return service.effective_limits(request.app.state.rate_limits, own)

    cache: SiteLimitsCache = request.app.state.site_rate_limits
    return await cache.get(site_id, read)


async def enforce_rate_limit(request: HTTPConnection) -> None:
    """Also called by routes that authenticate otherwise (a live stream opened with a
    ticket), after setting `request.state.principal`, and for WebSockets."""
    limiter: RateLimiter | None = request.app.state.rate_limiter
    if limiter is None:
        return
    principal = await identify(request)
    if principal is None:
        # The route answers 401 next; the flood of such requests is bounded per address.
        address = request.client.host if request.client else "unknown"
        caller, limits = f"addr:{address}", request.app.state.rate_limits
    else:
        caller, limits = f"key:{principal.key_id}", await _site_limits(request, principal.site_id)
    rule = request_rule(request)
    budget = start_budget(request, limiter, caller, limits)
    await budget.charge(rule.rate_class, refuses=rule.refuses)
