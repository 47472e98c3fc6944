"""The dependency every API route runs first: count the request against its caller's limit
for the route's class (429 when over), per API key, or per client address when the request
has no valid key."""

import time
import uuid
from collections.abc import Mapping

from fastapi import Request
from limits import RateLimitItem

from irrigation.auth.deps import identify
from irrigation.common.limiter import RateClass, RateLimiter, request_rule, start_budget
from irrigation.ratelimits import service


class SiteLimitsCache:
    """Each site's effective limits for a short TTL: without it, every request would read
    the site's own limits from the database. A change through this process takes effect
    at once; through another, within `ttl_s`."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._entries: dict[uuid.UUID, tuple[dict[RateClass, RateLimitItem], float]] = {}

    def get(self, site_id: uuid.UUID) -> dict[RateClass, RateLimitItem] | None:
        entry = self._entries.get(site_id)
        if entry is None or entry[1] < time.monotonic():
            return None
        return entry[0]

    def put(self, site_id: uuid.UUID, limits: dict[RateClass, RateLimitItem]) -> None:
        if self.ttl_s > 0:
            self._entries[site_id] = (limits, time.monotonic() + self.ttl_s)

    def forget(self, site_id: uuid.UUID) -> None:
        self._entries.pop(site_id, None)


async def _site_limits(request: Request, site_id: uuid.UUID) -> Mapping[RateClass, RateLimitItem]:
    cache: SiteLimitsCache = request.app.state.site_rate_limits
    limits = cache.get(site_id)
    if limits is None:
        async with request.app.state.sessionmaker() as session:
            own = await service.site_limits(session, site_id)
        limits = service.effective_limits(request.app.state.rate_limits, own)
        cache.put(site_id, limits)
    return limits


async def enforce_rate_limit(request: Request) -> None:
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
