"""Live tickets: a short-lived, single-use credential for the one place a URL may carry one
(`?ticket=` of the live routes). A browser's EventSource and WebSocket cannot set headers,
and an API key in a URL ends up in proxy logs and browser history; a ticket there is spent
by its first use and dies within a minute anyway.

Kept in Redis under the SHA-256 of the ticket (a copy of Redis holds nothing usable), with
the key it was issued to, its site and scopes. Using one is two steps: `read` it, check
its key, then `spend` it (DEL, atomic: of two requests with one ticket exactly one
deletes it). A check that fails for want of a database leaves the ticket unspent, so the
read retry of a GET (common/middleware.py) can still use it."""

import hashlib
import json
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from redis.asyncio import Redis

PREFIX = "lt_"
# What `issue` makes: the prefix and 32 random bytes in URL-safe base64, unpadded.
FORMAT = re.compile(re.escape(PREFIX) + r"[A-Za-z0-9_-]{43}")


@dataclass(frozen=True)
class Claims:
    key_id: uuid.UUID
    site_id: uuid.UUID
    scopes: frozenset[str]


def _key(namespace: str, ticket: str) -> str:
    return f"{namespace}:live:ticket:{hashlib.sha256(ticket.encode()).hexdigest()}"


async def issue(redis: Redis, namespace: str, claims: Claims, ttl_s: float) -> tuple[str, datetime]:
    """A new ticket and when it expires (Redis's clock decides, so this is the real time,
    not the tests' movable clock)."""
    ticket = PREFIX + secrets.token_urlsafe(32)
    body = {
        "key_id": str(claims.key_id),
        "site_id": str(claims.site_id),
        "scopes": sorted(claims.scopes),
    }
    ttl_ms = max(1, round(ttl_s * 1000))
    await redis.set(_key(namespace, ticket), json.dumps(body), px=ttl_ms)
    return ticket, datetime.now(UTC) + timedelta(milliseconds=ttl_ms)


async def read(redis: Redis, namespace: str, ticket: str) -> Claims | None:
    """The ticket's claims, None when it is unknown, used or expired; not spent yet."""
    if not FORMAT.fullmatch(ticket):
        return None  # not one we could have made: no Redis work for it
    raw = await redis.get(_key(namespace, ticket))
    if raw is None:
        return None
    body = json.loads(raw)
    return Claims(
        key_id=uuid.UUID(body["key_id"]),
        site_id=uuid.UUID(body["site_id"]),
        scopes=frozenset(body["scopes"]),
    )


async def spend(redis: Redis, namespace: str, ticket: str) -> bool:
    """True for the one caller that spends it; False when it was spent or expired since."""
    return bool(await redis.delete(_key(namespace, ticket)))
