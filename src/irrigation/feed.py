"""The live feed's events, kept per site in a bounded Redis stream.

An event is `{"id", "type", "site_id", "at", "data"}`; `id` is the stream entry's id, so a
client that comes back with the last id it saw reads on from there and gets what it missed
(within the bound) and nothing twice. The stream is a convenience like the hot cache, never
the record: every write has a short timeout and its failure is logged and swallowed.

Writers do not call Redis in their transaction: `emit(session, ...)` keeps the event on the
session, and the session's commit hands everything its transaction emitted to the
publisher (`install`), so an event is only ever published for something that was
committed: a rollback drops what the transaction emitted, a savepoint's rollback what was
emitted inside the savepoint. Readings are the exception: the hot cache's one Lua call
publishes them (`ingest/cache.py`), at most one per sensor per second."""

import asyncio
import json
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import structlog
from redis.asyncio import Redis
from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction
from sqlalchemy.util import await_only

from irrigation.settings import Settings

log = structlog.get_logger(__name__)

BACKOFF_S = 5.0
_PENDING = "feed.pending"
_PUBLISHER = "feed.publisher"
_MARKS = "feed.savepoints"


class EventType(StrEnum):
    reading = "reading"
    activation = "activation"
    pump = "pump"
    alert = "alert"
    decision = "decision"
    ingest_job = "ingest_job"


@dataclass(frozen=True)
class Event:
    type: EventType
    site_id: uuid.UUID
    data: Mapping[str, Any]
    at: datetime


def stream_key(namespace: str, site_id: uuid.UUID | str) -> str:
    return f"{namespace}:events:{site_id}"


def encode(type_: str, site_id: uuid.UUID | str, at: datetime, data: Mapping[str, Any]) -> str:
    """The stored entry: everything but the id, which Redis assigns."""
    body = {"type": str(type_), "site_id": str(site_id), "at": at.isoformat(), "data": data}
    return json.dumps(body, default=str, separators=(",", ":"))


def decode(entry_id: bytes | str, fields: Mapping[bytes | str, bytes | str]) -> dict[str, Any]:
    raw = fields.get(b"e", fields.get("e"))
    body: dict[str, Any] = json.loads(raw) if raw is not None else {}
    entry = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return {"id": entry, **body}


class Publisher:
    """XADD with an approximate MAXLEN (trimming whole macro-nodes, the cheap way)."""

    def __init__(
        self,
        redis: Redis,
        namespace: str,
        timeout_s: float,
        maxlen: int,
    ) -> None:
        self.redis = redis
        self.namespace = namespace
        self.timeout_s = timeout_s
        self.maxlen = maxlen
        self._skip_until = 0.0

    def key(self, site_id: uuid.UUID | str) -> str:
        return stream_key(self.namespace, site_id)

    async def publish(self, events: Sequence[Event]) -> None:
        if not events or time.monotonic() < self._skip_until:
            return
        pipe = self.redis.pipeline(transaction=False)
        for e in events:
            pipe.xadd(
                self.key(e.site_id),
                {"e": encode(e.type, e.site_id, e.at, e.data)},
                maxlen=self.maxlen,
                approximate=True,
            )
        try:
            await asyncio.wait_for(pipe.execute(), self.timeout_s)
        except Exception as exc:  # the database holds what happened; the feed is a view
            self._skip_until = time.monotonic() + BACKOFF_S
            log.warning("feed_unavailable", error=repr(exc), dropped=len(events))


def create_publisher(settings: Settings, redis: Redis) -> Publisher:
    return Publisher(
        redis, settings.redis_namespace, settings.redis_timeout_s, settings.live_stream_maxlen
    )


def emit(
    session: Any,
    type_: EventType,
    site_id: uuid.UUID,
    data: Mapping[str, Any],
    at: datetime | None = None,
) -> None:
    """Publish `data` once the session's transaction commits (never if it rolls back).
    A session without a publisher (tests, one-off commands) keeps nothing."""
    info: dict[str, Any] = session.info
    if info.get(_PUBLISHER) is None:
        return
    pending: list[Event] = info.setdefault(_PENDING, [])
    pending.append(Event(type_, site_id, data, at or datetime.now(UTC)))


def emit_many(session: Any, events: Iterable[Event]) -> None:
    for e in events:
        emit(session, e.type, e.site_id, e.data, e.at)


def session_info(publisher: Publisher | None) -> dict[str, Any]:
    """What a sessionmaker gives every session so that `emit` reaches `publisher`."""
    return {_PUBLISHER: publisher}


def _after_commit(session: Session) -> None:
    pending: list[Event] | None = session.info.pop(_PENDING, None)
    session.info.pop(_MARKS, None)
    publisher: Publisher | None = session.info.get(_PUBLISHER)
    if pending and publisher is not None:
        # Inside the AsyncSession's greenlet: the commit waits for the XADD (bounded by the
        # publisher's timeout), so an answer sent after it follows its events.
        await_only(publisher.publish(pending))


def _after_transaction_create(session: Session, transaction: SessionTransaction) -> None:
    if transaction.nested:  # a savepoint: what is emitted from here on goes if it rolls back
        marks: dict[SessionTransaction, int] = session.info.setdefault(_MARKS, {})
        marks[transaction] = len(session.info.get(_PENDING, ()))


def _after_rollback(session: Session, previous: SessionTransaction) -> None:
    if previous.parent is None:  # the whole transaction
        session.info.pop(_PENDING, None)
        session.info.pop(_MARKS, None)
    elif previous.nested:
        mark = session.info.get(_MARKS, {}).pop(previous, None)
        if mark is not None:
            del session.info.get(_PENDING, [])[mark:]


def install() -> None:
    """Once per process: every ORM session hands its committed events to its publisher."""
    if not event.contains(Session, "after_commit", _after_commit):
        event.listen(Session, "after_commit", _after_commit)
        event.listen(Session, "after_transaction_create", _after_transaction_create)
        event.listen(Session, "after_soft_rollback", _after_rollback)
