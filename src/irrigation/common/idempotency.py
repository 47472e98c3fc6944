"""Idempotency keys (IETF draft): scoped to (site, method, route, key); a replay returns
the stored answer; the same key with another body is 422."""

import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import Header
from sqlalchemy import ForeignKey, Integer, String, delete
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from irrigation.common.clock import utcnow
from irrigation.common.errors import Invalid
from irrigation.db import Base


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


async def find(session: AsyncSession, req: IdempotentRequest, ttl_s: int) -> StoredAnswer | None:
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


async def store(
    session: AsyncSession, req: IdempotentRequest, answer: StoredAnswer, ttl_s: int
) -> StoredAnswer | None:
    """Store within the caller's transaction. If a concurrent request with the same key won,
    this waits for it to commit and returns None: the caller rolls back and replays."""
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
    won = (await session.execute(stmt)).scalar_one_or_none()
    return answer if won is not None else None


async def purge_expired(session: AsyncSession, ttl_s: int) -> int:
    stmt = delete(IdempotencyRecord).where(
        IdempotencyRecord.created_at < utcnow() - timedelta(seconds=ttl_s)
    )
    result: Any = await session.execute(stmt)
    return int(result.rowcount or 0)
