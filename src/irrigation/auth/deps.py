"""The `Principal` dependency: who is calling, for which site, with which scopes."""

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, cast

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer, SecurityScopes
from starlette.requests import HTTPConnection

from irrigation.auth import service
from irrigation.auth.schemas import Scope
from irrigation.common.errors import Forbidden, Unauthorized

bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer irr_...`")


@dataclass(frozen=True)
class Principal:
    key_id: uuid.UUID
    site_id: uuid.UUID
    scopes: frozenset[str]

    def has(self, scope: str) -> bool:
        # admin is the site owner: it may do everything the other scopes allow.
        return scope in self.scopes or Scope.admin.value in self.scopes


Lookup = Callable[[], Awaitable[Principal | None]]


class PrincipalCache:
    """Authenticated keys for a short TTL, so a burst of requests does not look the same key
    up once each. A revocation through this process takes effect at once; through another
    process (CLI, another replica) within `ttl_s`. Keys that were not found are remembered
    too, for `unknown_ttl_s`: a flood of one junk token costs one lookup. Concurrent misses
    of one key share one lookup: a herd of 1,000 requests at a cold cache is one query, not
    one each (measured: a tenth of the API's CPU in a herd, docs/benchmarks.md)."""

    MAX_ENTRIES = 10_000

    def __init__(self, ttl_s: float, unknown_ttl_s: float = 0.0) -> None:
        self.ttl_s = ttl_s
        self.unknown_ttl_s = unknown_ttl_s
        self._entries: dict[str, tuple[Principal, float]] = {}
        self._unknown: dict[str, float] = {}
        self._looking: dict[str, asyncio.Future[Principal | None]] = {}
        # Bumped by `forget`: a lookup that began before a revocation does not keep (nor
        # share with later requests) what it read.
        self._revocations = 0

    async def look_up(self, key_hash: str, look_up: Lookup) -> Principal | None:
        """The key's principal: from the cache, else from the lookup in flight for the
        same key, else from a new one (`look_up`), remembered for the TTL."""
        principal = self.get(key_hash)
        if principal is not None:
            return principal
        if self.is_unknown(key_hash):
            return None
        looking = self._looking.get(key_hash)
        if looking is None:
            # A task of its own: a request that gives up does not cancel the others' lookup.
            looking = asyncio.ensure_future(self._look_up(key_hash, look_up))
            looking.add_done_callback(_retrieved)
            self._looking[key_hash] = looking
        return await asyncio.shield(looking)

    async def _look_up(self, key_hash: str, look_up: Lookup) -> Principal | None:
        revocations = self._revocations
        try:
            principal = await look_up()
        finally:
            if self._revocations == revocations:
                self._looking.pop(key_hash, None)
        if self._revocations == revocations:
            if principal is None:
                self.put_unknown(key_hash)
            else:
                self.put(key_hash, principal)
        return principal

    def get(self, key_hash: str) -> Principal | None:
        entry = self._entries.get(key_hash)
        if entry is None or entry[1] < time.monotonic():
            return None
        return entry[0]

    def put(self, key_hash: str, principal: Principal) -> None:
        if self.ttl_s <= 0:
            return
        if len(self._entries) >= self.MAX_ENTRIES:
            self._entries.clear()
        self._entries[key_hash] = (principal, time.monotonic() + self.ttl_s)

    def is_unknown(self, key_hash: str) -> bool:
        until = self._unknown.get(key_hash)
        return until is not None and until >= time.monotonic()

    def put_unknown(self, key_hash: str) -> None:
        if self.unknown_ttl_s <= 0:
            return
        if len(self._unknown) >= self.MAX_ENTRIES:
            self._unknown.clear()
        self._unknown[key_hash] = time.monotonic() + self.unknown_ttl_s

    def forget(self, key_id: uuid.UUID) -> None:
        self._revocations += 1
        self._looking.clear()
        for key_hash, (principal, _) in list(self._entries.items()):
            if principal.key_id == key_id:
                del self._entries[key_hash]


def _retrieved(looking: "asyncio.Future[Principal | None]") -> None:
    # Its waiters may all have given up: an error nobody awaited is not worth a warning.
    if not looking.cancelled():
        looking.exception()


_UNSET = object()


async def _look_up(request: HTTPConnection, secret: str) -> Principal | None:
    if not service.KEY_FORMAT.fullmatch(secret):
        return None  # not a key we could have made: no database work for it
    cache: PrincipalCache = request.app.state.principals
    key_hash = service.hash_key(secret)

    async def read() -> Principal | None:
        # A connection of its own, no ORM session: the request's session stays untouched
        # (the service opens the request's one transaction itself with `session.begin()`),
        # and a Core row costs a fraction of a mapped object.
        async with request.app.state.engine.connect() as conn:
            row = await service.find_key(conn, key_hash)
        if row is None:
            return None
        return Principal(key_id=row.id, site_id=row.site_id, scopes=frozenset(row.scopes))

    return await cache.look_up(key_hash, read)


async def identify(request: HTTPConnection) -> Principal | None:
    """The key the request carries, or None when it has none that is valid; looked up once
    per request, however many dependencies ask (the rate limiter, then the route's scope).
    A WebSocket too; a route that authenticates otherwise (a live ticket) sets
    `request.state.principal` first."""
    known = getattr(request.state, "principal", _UNSET)
    if known is not _UNSET:
        return cast(Principal | None, known)
    credentials = await bearer(request)
    principal = await _look_up(request, credentials.credentials) if credentials else None
    request.state.principal = principal
    return principal


async def current_principal(
    security_scopes: SecurityScopes,
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    challenge = {"WWW-Authenticate": "Bearer"}
    if credentials is None or not credentials.credentials:
        raise Unauthorized("missing bearer API key", headers=challenge)
    principal = await identify(request)
    if principal is None:
        raise Unauthorized("invalid or revoked API key", headers=challenge)
    missing = [s for s in security_scopes.scopes if not principal.has(s)]
    if missing:
        raise Forbidden(f"this key lacks the scope(s): {', '.join(missing)}", required=missing)
    return principal


ReadPrincipal = Annotated[Principal, Security(current_principal, scopes=["read"])]
IngestPrincipal = Annotated[Principal, Security(current_principal, scopes=["ingest"])]
ControlPrincipal = Annotated[Principal, Security(current_principal, scopes=["control"])]
AdminPrincipal = Annotated[Principal, Security(current_principal, scopes=["admin"])]


async def _read_or_ingest(
    principal: Annotated[Principal, Security(current_principal, scopes=[])],
) -> Principal:
    if not (principal.has(Scope.read) or principal.has(Scope.ingest)):
        raise Forbidden("this key needs the read or the ingest scope", required=["read|ingest"])
    return principal


# A device that sends data (ingest) may follow its own ingestion jobs without `read`.
ReadOrIngestPrincipal = Annotated[Principal, Depends(_read_or_ingest)]
