"""Idempotency keys (IETF draft): scoped to (site, method, route, key). Every idempotent
route opens its transaction with `begin`: a stored answer is replayed; the same key with
another body is 422 `idempotency_key_reused`; the same key while the first request is
still in flight is 409 `idempotency_in_flight`, with `Retry-After`."""

import hashlib
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import Header
from fastapi.responses import JSONResponse
from sqlalchemy import ForeignKey, Integer, String, delete, func, literal, select
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from irrigation.common.clock import utcnow
from irrigation.common.errors import PROBLEM_JSON, DomainError, Invalid
from irrigation.common.orm import Base

# Seconds a client waits before asking again while the first request is in flight.
IN_FLIGHT_RETRY_AFTER_S = 1


class IdempotencyRecord(Base):
    """The first answer to a request sent with an `Idempotency-Key`."""

    __tablename__ = "idempotency_keys"

    site_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("sites.id", ondelete="CASCADE"), primary_key=True
    )
    method: Mapped[str] = mapped_column(String(8), primary_key=True)
    route: Mapped[str] = mapped_column(String(200), primary_key=True)
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int] = mapped_column(Integer)
    body: Mapped[dict[str, Any]] = mapped_column(JSONB)
    headers: Mapped[dict[str, str]] = mapped_column(JSONB, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=200,
        description="Retry safely: the same key returns the first answer. A key belongs to "
        "one request body: the same key with another body is 422 `idempotency_key_reused` "
        "(for `IRRIGATION_IDEMPOTENCY_TTL_S`, a day unless configured).",
    ),
]


@dataclass(frozen=True)
class IdempotentRequest:
    site_id: uuid.UUID
    method: str
    route: str
    key: str
    request_hash: str


@dataclass(frozen=True)
class StoredAnswer:
    status_code: int
    body: dict[str, Any]
    headers: dict[str, str]


class InFlight(DomainError):
    status, code, title = 409, "idempotency_in_flight", "Request in flight"

    def __init__(self) -> None:
        super().__init__(
            "a request with this Idempotency-Key is still in flight; retry to get its answer",
            headers={"Retry-After": str(IN_FLIGHT_RETRY_AFTER_S)},
        )


def respond(answer: StoredAnswer) -> JSONResponse:
    """The response of an answer, first given or replayed alike."""
    media = PROBLEM_JSON if answer.status_code >= 400 else "application/json"
    return JSONResponse(
        answer.body, status_code=answer.status_code, headers=answer.headers, media_type=media
    )


def request_hash(*parts: str | bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part if isinstance(part, bytes) else part.encode())
        digest.update(b"\0")
    return digest.hexdigest()


def post_request(
    key: str | None, site_id: uuid.UUID, route: str, *parts: str | bytes
) -> IdempotentRequest | None:
    """A POST's identity for replays, its body given as `parts`; None without a key."""
    if key is None:
        return None
    return IdempotentRequest(site_id, "POST", route, key, request_hash(*parts))


@dataclass
class Claim:
    """What `begin` found for the request: `replay` is the stored answer to send again, or
    None, and then the route computes its answer and `store`s it in the transaction."""

    session: AsyncSession
    req: IdempotentRequest | None
    ttl_s: int
    replay: StoredAnswer | None = None
    stored: bool = field(default=False, init=False)

    async def store(self, answer: StoredAnswer) -> None:
        """Keep the answer for replays, in the request's own transaction (a no-op without a
        key): it commits with what the request did, or not at all."""
        if self.req is None:
            return
        if not await _store(self.session, self.req, answer, self.ttl_s):
            # A live answer that `begin` did not find: only a writer without the key's lock
            # could have put it there. Roll back rather than commit work nobody can replay.
            raise InFlight
        self.stored = True


@asynccontextmanager
async def begin(
    session: AsyncSession, req: IdempotentRequest | None, ttl_s: int
) -> AsyncIterator[Claim]:
    """`session.begin()` for a request that may carry an Idempotency-Key.

    With a key, the transaction first takes a lock on the key (a transaction-level advisory
    lock on its hash), without waiting: held by another transaction, the first request with
    this key is still in flight, and this one is answered 409 `idempotency_in_flight`.
    Granted, the stored answer, if any, is read after it (a statement of its own, so it sees
    what the lock's last holder committed) and replayed. The lock is held to the commit, so
    two requests with one key never both do the work."""
    async with session.begin():
        claim = Claim(session, req, ttl_s)
        if req is not None:
            await _hold_key(session, req)
            claim.replay = await _find(session, req, ttl_s)
        yield claim
        if req is not None and claim.replay is None and not claim.stored:
            raise RuntimeError("an idempotent request must store its answer before it commits")


async def _hold_key(session: AsyncSession, req: IdempotentRequest) -> None:
    # A 64-bit hash of the whole scope: two keys sharing one is a spurious 409 at worst.
    scope = f"{req.site_id} {req.method} {req.route} {req.key}"
    lock = func.pg_try_advisory_xact_lock(func.hashtextextended(literal(scope), 0))
    if not (await session.execute(select(lock))).scalar_one():
        raise InFlight


async def _find(session: AsyncSession, req: IdempotentRequest, ttl_s: int) -> StoredAnswer | None:
    """The stored answer for this key, or None. Same key, other body: 422."""
    record = await session.get(
        IdempotencyRecord, (req.site_id, req.method, req.route, req.key), populate_existing=True
    )
    if record is None or record.created_at < utcnow() - timedelta(seconds=ttl_s):
        return None
    if record.request_hash != req.request_hash:
        raise Invalid(
            "this Idempotency-Key was used with another request body",
            field="header.idempotency-key",
            code="idempotency_key_reused",
        )
    return StoredAnswer(record.status_code, record.body, record.headers)


async def _store(
    session: AsyncSession, req: IdempotentRequest, answer: StoredAnswer, ttl_s: int
) -> bool:
    """Insert the answer, or overwrite an expired one; False if a live one is there."""
    values = {
        "site_id": req.site_id,
        "method": req.method,
        "route": req.route,
        "key": req.key,
        "request_hash": req.request_hash,
        "status_code": answer.status_code,
        "body": answer.body,
        "headers": answer.headers,
        "created_at": utcnow(),
    }
    insert_stmt = insert(IdempotencyRecord).values(**values)
    # An expired record is overwritten: the key is free again after the TTL.
    stmt = insert_stmt.on_conflict_do_update(
        index_elements=["site_id", "method", "route", "key"],
        set_={
            k: insert_stmt.excluded[k]
            for k in values
            if k not in ("site_id", "method", "route", "key")
        },
        where=IdempotencyRecord.created_at < utcnow() - timedelta(seconds=ttl_s),
    ).returning(IdempotencyRecord.key)
    return (await session.execute(stmt)).scalar_one_or_none() is not None


async def purge_expired(session: AsyncSession, ttl_s: int) -> int:
    stmt = delete(IdempotencyRecord).where(
        IdempotencyRecord.created_at < utcnow() - timedelta(seconds=ttl_s)
    )
    result: Any = await session.execute(stmt)
    return int(result.rowcount or 0)
