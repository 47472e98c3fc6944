"""Rate limits in Redis (`limits`' sliding window counter, charged in one round trip): the
class a route is counted in, the charge of a request, the IETF `RateLimit` headers, and
failing open when Redis is away.

Which key or address a request is counted for, and a site's own limits, are the
`ratelimits` domain's business; this module only counts."""

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final, TypeVar

import structlog
from fastapi import Request
from limits import RateLimitItem
from prometheus_client import Counter
from redis.asyncio import ConnectionPool, Redis
from starlette.requests import HTTPConnection

from irrigation.common.errors import RateLimited
from irrigation.common.middleware import LATE_HEADERS
from irrigation.settings import Settings, parse_rate_limit

log = structlog.get_logger(__name__)

UNCHECKED = Counter(
    "irrigation_rate_limit_unchecked_total",
    "Rate-limit checks skipped because Redis was unavailable (the request was let through)",
)
REFUSED = Counter("irrigation_rate_limited_total", "Requests refused with 429", ["rate_class"])

# After Redis fails, requests pass unchecked this long before it is tried again: a Redis
# that hangs must not add its timeout to every request.
RETRY_AFTER_FAILURE_S: Final = 1.0
# "Redis unavailable" is logged at most this often, however many requests pass unchecked.
WARN_EVERY_S: Final = 60.0


class RateClass(StrEnum):
    read = "read"
    write = "write"
    ingest = "ingest"
    control = "control"
    expensive = "expensive"


def deployment_limits(settings: Settings) -> dict[RateClass, RateLimitItem]:
    return {c: parse_rate_limit(getattr(settings, f"rate_limit_{c.value}")) for c in RateClass}


def default_limit_texts() -> dict[RateClass, str]:
    """The documented defaults (not this deployment's): for the OpenAPI description."""
    return {c: str(Settings.model_fields[f"rate_limit_{c.value}"].default) for c in RateClass}


@dataclass(frozen=True)
class RateRule:
    """How a route is counted: in `rate_class` on arrival; `also` names a class it may
    charge as well for some requests (documentation); `refuses` False: counted, but never
    answered 429 (stopping a pump must always be possible)."""

    rate_class: RateClass
    also: RateClass | None = None
    refuses: bool = True


F = TypeVar("F", bound=Callable[..., Any])
_RULE_ATTR = "__rate_rule__"


def limited_as(
    rate_class: RateClass, *, also: RateClass | None = None, refuses: bool = True
) -> Callable[[F], F]:
    """Counts a route in `rate_class` instead of its method's (GET: read, else write)."""

    def mark(endpoint: F) -> F:
        setattr(endpoint, _RULE_ATTR, RateRule(rate_class, also, refuses))
        return endpoint

    return mark


def rule_of(endpoint: Callable[..., Any] | None, method: str) -> RateRule:
    declared: RateRule | None = getattr(endpoint, _RULE_ATTR, None)
    if declared is not None:
        return declared
    return RateRule(RateClass.read if method in ("GET", "HEAD") else RateClass.write)


def request_rule(request: HTTPConnection) -> RateRule:
    # A WebSocket has no method; it opens with a GET.
    method = str(request.scope.get("method", "GET"))
    return rule_of(getattr(request.scope.get("route"), "endpoint", None), method)


@dataclass(frozen=True)
class Quota:
    """Where one class's limit stands for one caller, after a charge."""

    rate_class: RateClass
    limit: RateLimitItem
    remaining: int
    reset_s: int

    def policy(self) -> str:
        # draft-ietf-httpapi-ratelimit-headers-09: a quoted policy name, quota and window.
        return f'"{self.rate_class}";q={self.limit.amount};w={self.limit.get_expiry()}'

    def state(self) -> str:
        return f'"{self.rate_class}";r={self.remaining};t={self.reset_s}'


# `limits`' sliding window counter (its acquire_sliding_window.lua, 5.x: the same keys,
# window shift and weighted count), which also returns the window as the charge left it:
# the charge and its `RateLimit` headers' figures in one round trip, where
# `SlidingWindowCounterRateLimiter.hit` then `get_window_stats` took two (and a charge by
# another process could fall between them). KEYS: previous, current window; ARGV: limit,
# expiry (s), cost. Returns {allowed, previous count, its TTL (ms), current count, its TTL}.
_CHARGE = """
local limit = tonumber(ARGV[1])
local expiry = tonumber(ARGV[2]) * 1000
local amount = tonumber(ARGV[3])

local current_ttl = tonumber(redis.call('pttl', KEYS[2]))
if current_ttl > 0 and current_ttl < expiry then
    -- the current window has ended: it becomes the previous one
    redis.call('rename', KEYS[2], KEYS[1])
    redis.call('set', KEYS[2], 0, 'PX', current_ttl + expiry)
end

local previous_count = tonumber(redis.call('get', KEYS[1])) or 0
local previous_ttl = tonumber(redis.call('pttl', KEYS[1])) or 0
local current_count = tonumber(redis.call('get', KEYS[2])) or 0
current_ttl = tonumber(redis.call('pttl', KEYS[2])) or 0
if previous_ttl <= 0 then
    previous_ttl = 0
end
if current_ttl <= 0 then
    current_ttl = 0
end
local weighted_count = math.floor(previous_count * previous_ttl / expiry) + current_count

if amount > limit or (weighted_count + amount) > limit then
    return {0, previous_count, previous_ttl, current_count, current_ttl}
end
if redis.call('exists', KEYS[2]) == 1 then
    redis.call('incrby', KEYS[2], amount)
else
    redis.call('set', KEYS[2], amount, 'PX', expiry * 2)
end
return {1, previous_count, previous_ttl, current_count + amount, redis.call('pttl', KEYS[2])}
"""


def _window_stats(
    limit: RateLimitItem,
    previous: int,
    previous_expires_in: float,
    current: int,
    current_expires_in: float,
) -> tuple[int, int]:
    """What is left of the limit, and in how many seconds more is: `limits`'
    `SlidingWindowCounterRateLimiter.get_window_stats`, from a window already read."""
    expiry = limit.get_expiry()
    weighted = previous * previous_expires_in / expiry + current
    remaining = max(0, limit.amount - math.floor(weighted))
    if not (previous or current):
        return remaining, 0
    # A TTL read in the charge's own script can be a whole multiple (a window just begun:
    # twice the expiry): a full period, not 0, as read a moment later by a second call.
    step = expiry / previous if previous else math.inf
    previous_reset = (previous_expires_in % step or step) if previous else math.inf
    current_reset = (current_expires_in % expiry or expiry) if current else math.inf
    return remaining, max(0, math.ceil(min(previous_reset, current_reset)))


class RateLimiter:
    """Counts charges per (class, caller) in Redis, under the stack's namespace. When Redis
    cannot answer it lets requests through (fails open): the limits protect the service,
    and refusing every request would be the outage they are meant to prevent."""

    def __init__(self, pool: ConnectionPool, namespace: str) -> None:
        self._prefix = f"{namespace}:ratelimit"
        self._charge = Redis(connection_pool=pool).register_script(_CHARGE)
        self._skip_until = 0.0
        self._is_failing = False
        self._warned_at = -math.inf
        self._unchecked_since_warning = 0

    async def hit(
        self, rate_class: RateClass, limit: RateLimitItem, caller: str, cost: int = 1
    ) -> tuple[bool, Quota] | None:
        """(allowed, where the limit stands), or None when Redis is unavailable."""
        if time.monotonic() < self._skip_until:
            self._unchecked(None)
            return None
        # `limits`' own key names: its sliding window, as `SlidingWindowCounterRateLimiter`
        # on a `RedisStorage` with this prefix keeps it.
        current = f"{self._prefix}:{{{limit.key_for(rate_class, caller)}}}"
        expiry = limit.get_expiry()
        try:
            window = await self._charge(
                keys=[f"{current}/-1", current], args=[limit.amount, expiry, cost]
            )
        except Exception as exc:  # any Redis failure: fail open, never fail the request
            self._is_failing = True
            self._skip_until = time.monotonic() + RETRY_AFTER_FAILURE_S
            self._unchecked(exc)
            return None
        if self._is_failing:
            self._is_failing = False
            log.info("rate_limiter_available", unchecked=self._unchecked_since_warning)
            self._warned_at = -math.inf  # the next outage is reported at once
            self._unchecked_since_warning = 0
        allowed, previous, previous_ttl_ms, current_count, current_ttl_ms = (
            int(v or 0) for v in window
        )
        remaining, reset_s = _window_stats(
            limit,
            previous,
            max(0, previous_ttl_ms) / 1000,
            current_count,
            max(0, current_ttl_ms) / 1000,
        )
        return bool(allowed), Quota(rate_class, limit, remaining, reset_s)

    def _unchecked(self, error: Exception | None) -> None:
        UNCHECKED.inc()
        self._unchecked_since_warning += 1
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY_S:
            log.warning(
                "rate_limiter_unavailable",
                error=repr(error) if error else "still failing",
                unchecked=self._unchecked_since_warning,
                note="requests pass without rate limits until Redis answers",
            )
            self._warned_at = now
            self._unchecked_since_warning = 0


@dataclass
class Budget:
    """One request's rate limits: who it is counted for, each class's limit for them, and
    the classes charged so far (their headers go on whatever response the request gets)."""

    limiter: RateLimiter
    caller: str
    limits: Mapping[RateClass, RateLimitItem]
    headers: dict[str, str]
    charged: dict[RateClass, Quota] = field(default_factory=dict)

    async def charge(self, rate_class: RateClass, cost: int = 1, *, refuses: bool = True) -> None:
        limit = self.limits[rate_class]
        result = await self.limiter.hit(rate_class, limit, self.caller, cost)
        if result is None:
            return
        allowed, quota = result
        self.charged[rate_class] = quota
        self.headers["RateLimit-Policy"] = ", ".join(q.policy() for q in self.charged.values())
        self.headers["RateLimit"] = ", ".join(q.state() for q in self.charged.values())
        if not allowed and refuses:
            REFUSED.labels(rate_class.value).inc()
            retry_after = max(1, quota.reset_s)
            if cost > limit.amount:
                detail = (
                    f"this request costs {cost}, more than the whole `{rate_class}` limit "
                    f"({limit}); send less at a time"
                )
                retry_after = limit.get_expiry()
            else:
                detail = f"over the `{rate_class}` limit ({limit}); retry in {retry_after} s"
            raise RateLimited(
                detail, headers={"Retry-After": str(retry_after)}, policy=rate_class.value
            )


def start_budget(
    request: HTTPConnection,
    limiter: RateLimiter,
    caller: str,
    limits: Mapping[RateClass, RateLimitItem],
) -> Budget:
    """The request's budget, its headers kept where `LateHeadersMiddleware` adds them."""
    late = request.scope.get(LATE_HEADERS)
    budget = Budget(limiter, caller, limits, late if isinstance(late, dict) else {})
    request.state.rate_budget = budget
    return budget


async def charge(request: Request, rate_class: RateClass | None = None, cost: int = 1) -> None:
    """Charges the request's caller `cost` more in `rate_class` (default: the route's own),
    after the one the route's class took on arrival: readings in a batch, or a request
    that turned out expensive. 429 (`RateLimited`) when over the limit."""
    budget: Budget | None = getattr(request.state, "rate_budget", None)
    if budget is not None:
        rule = request_rule(request)
        await budget.charge(rate_class or rule.rate_class, cost, refuses=rule.refuses)
