"""One connection's view of its site's event stream: where it starts (now, or after the
client's last id, with a gap notice when entries after that id were trimmed away), the
filters, and the reader that moves entries from Redis into the connection's bounded
backlog with XREAD. Each connection reads after the last id it read, so a resume loses
nothing and repeats nothing."""

import asyncio
import json
import re
from collections import deque
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import structlog
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ResponseError

from irrigation import feed

log = structlog.get_logger(__name__)

ID_PATTERN = r"^[0-9]{1,20}-[0-9]{1,20}$"
_ID = re.compile(ID_PATTERN)
_MAX_PART = 2**64 - 1
TYPES_PATTERN = (
    rf"^({'|'.join(feed.EventType)})(,({'|'.join(feed.EventType)}))*$"  # e.g. `reading,pump`
)
_TYPES = re.compile(TYPES_PATTERN)
# Entries asked of Redis at once, at most: a connection's backlog never has more room
# than it can take.
READ_BATCH = 100


@dataclass(frozen=True, order=True)
class StreamId:
    """A stream entry id, `<milliseconds>-<sequence>`, compared as Redis compares them."""

    ms: int
    seq: int

    @classmethod
    def parse(cls, text: str) -> "StreamId":
        if not _ID.fullmatch(text):
            raise ValueError("an event id is `<milliseconds>-<sequence>`, e.g. 1765128000000-0")
        ms, seq = (int(part) for part in text.split("-"))
        if ms > _MAX_PART or seq > _MAX_PART:
            raise ValueError("an event id's parts are at most 2^64 - 1")
        return cls(ms, seq)

    def __str__(self) -> str:
        return f"{self.ms}-{self.seq}"


ZERO = StreamId(0, 0)


def parse_types(text: str) -> frozenset[str]:
    if not _TYPES.fullmatch(text):
        known = ", ".join(feed.EventType)
        raise ValueError(f"comma-separated event types, each one of: {known}")
    return frozenset(text.split(","))


@dataclass(frozen=True)
class Filters:
    types: frozenset[str] | None = None
    zone_id: str | None = None

    def admits(self, event: Mapping[str, Any]) -> bool:
        if self.types is not None and event.get("type") not in self.types:
            return False
        if self.zone_id is not None:
            data = event.get("data")
            return isinstance(data, dict) and str(data.get("zone_id")) == self.zone_id
        return True


@dataclass(frozen=True)
class Item:
    """What a connection sends: an event (its id and type) or a notice (no id)."""

    id: str | None
    type: str
    json: str


@dataclass(frozen=True)
class Start:
    after: StreamId
    gap: Item | None = None


def _stream_id(raw: bytes | str) -> StreamId:
    return StreamId.parse(raw.decode() if isinstance(raw, bytes) else raw)


async def start(redis: Redis, key: str, resume: StreamId | None, maxlen: int) -> Start:
    """Where a connection starts reading: after the stream's last id now (nothing
    published from this moment on is missed), or after `resume`. A `resume` beyond the
    stream's end (an id of another stream) starts at its end, since Redis would otherwise
    skip new entries until their ids pass it; one older than the oldest entry kept, in a
    stream that has lost entries to its bound, starts with a gap notice."""
    try:
        info: dict[str, Any] = await redis.xinfo_stream(key)
    except ResponseError:  # no such key: no event yet
        return Start(ZERO)
    last = _stream_id(info["last-generated-id"])
    if resume is None:
        return Start(last)
    first_entry = info.get("first-entry")
    if not first_entry or first_entry[0] is None:
        return Start(min(resume, last))
    first = _stream_id(first_entry[0])
    length = int(info.get("length", 0))
    # Redis 7 counts every entry ever added; older servers do not, and a stream at its
    # bound has then certainly been trimmed.
    added = info.get("entries-added")
    trimmed = int(added) > length if added is not None else length >= maxlen
    gap = None
    if trimmed and resume < first:
        body = {"type": "gap", "last_event_id": str(resume), "first_available_id": str(first)}
        gap = Item(None, "gap", json.dumps(body, separators=(",", ":")))
    return Start(min(resume, last), gap)


class End(StrEnum):
    """Why a connection ended."""

    client_gone = "client_gone"
    slow_consumer = "slow_consumer"
    shutdown = "shutdown"
    revoked = "revoked"
    unavailable = "unavailable"


class Ended(Exception):
    def __init__(self, reason: End) -> None:
        super().__init__(reason.value)
        self.reason = reason


class Backlog:
    """What was read for one connection and not yet sent: at most `limit` items. An item
    that does not fit ends the connection (`slow_consumer`): memory stays bounded whatever
    the client does, and the client resumes from its last id."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._items: deque[Item] = deque()
        self._changed = asyncio.Event()
        self._ended = asyncio.Event()
        self.ended: End | None = None

    def room(self) -> int:
        return self.limit - len(self._items)

    def offer(self, item: Item) -> bool:
        if len(self._items) >= self.limit:
            return False
        self._items.append(item)
        self._changed.set()
        return True

    def end(self, reason: End) -> None:
        """The first reason given is kept: it is what happened first."""
        if self.ended is None:
            self.ended = reason
            self._items.clear()
            self._changed.set()
            self._ended.set()

    async def wait_ended(self) -> None:
        await self._ended.wait()

    async def take(self, timeout_s: float | None, most: int) -> list[Item]:
        """Up to `most` items, oldest first; [] when none came within `timeout_s` (None:
        no limit).
        Raises `Ended` once the connection has ended, whatever is left."""
        try:
            async with asyncio.timeout(timeout_s):
                while not self._items and self.ended is None:
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            return []
        if self.ended is not None:
            raise Ended(self.ended)
        return [self._items.popleft() for _ in range(min(most, len(self._items)))]


class Tail:
    """One connection's own Redis connection for its XREAD, which blocks for seconds (the
    shared pool's short timeout would cut it): a bare connection, without the client's
    pool checks and retries. Once closed it never connects again, and closing it fails a
    read in progress: a reader that lost its cancellation (seen while redis-py was still
    setting the connection up) ends anyway."""

    def __init__(self, url: str, socket_timeout_s: float, connect_timeout_s: float) -> None:
        pool = ConnectionPool.from_url(
            url, socket_timeout=socket_timeout_s, socket_connect_timeout=connect_timeout_s
        )
        self._connection: AbstractConnection = pool.make_connection()  # type: ignore[no-untyped-call]
        self._closed = False

    async def xread(self, key: str, after: str, count: int, block_ms: int) -> list[Any]:
        """The entries after `after`, waiting up to `block_ms` for one: `[(id, {field:
        value})]`, oldest first."""
        if not self._closed:
            await self._connection.connect()  # type: ignore[no-untyped-call]
        if self._closed:
            raise ConnectionError("the stream's connection is closed")
        await self._connection.send_command(
            "XREAD", "COUNT", count, "BLOCK", block_ms, "STREAMS", key, after
        )
        reply = await self._connection.read_response()
        entries = []
        for _key, found in reply or ():
            for entry_id, flat in found:
                entries.append((entry_id, dict(zip(flat[::2], flat[1::2], strict=True))))
        return entries

    async def aclose(self) -> None:
        self._closed = True
        await self._connection.disconnect(nowait=True)


async def read(
    tail: Tail,
    key: str,
    after: StreamId,
    filters: Filters,
    backlog: Backlog,
    block_ms: int,
) -> None:
    """XREAD from `after` into `backlog` until the connection ends (cancel it), or ends
    it: `slow_consumer` when an admitted event does not fit, `unavailable` when Redis
    fails. It asks for no more entries than the backlog has room for (at least one: an
    entry that arrives while the backlog is full is what cuts a slow client off)."""
    cursor = str(after)
    try:
        while backlog.ended is None:
            count = max(1, min(READ_BATCH, backlog.room()))
            for entry_id, fields in await tail.xread(key, cursor, count, block_ms):
                cursor = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                item = _item(cursor, fields, filters)
                if item is not None and not backlog.offer(item):
                    backlog.end(End.slow_consumer)
                    return
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # Redis went away: the client resumes elsewhere or later
        if backlog.ended is None:
            log.warning("live_read_failed", error=repr(exc))
            backlog.end(End.unavailable)


def _item(
    entry_id: str, fields: Mapping[bytes | str, bytes | str], filters: Filters
) -> Item | None:
    try:
        event = feed.decode(entry_id, fields)
    except ValueError:  # not written by the feed's publisher: nothing a client could use
        log.warning("live_entry_unreadable", entry_id=entry_id)
        return None
    if not filters.admits(event):
        return None
    return Item(entry_id, str(event.get("type")), json.dumps(event, separators=(",", ":")))


async def deliver(
    backlog: Backlog, write: Coroutine[Any, Any, None], listen: Coroutine[Any, Any, None]
) -> None:
    """Send what `backlog` holds (`write`) while watching the client (`listen`), until the
    writer stops or the backlog ends; both transports end a connection alike."""
    writer = asyncio.create_task(write)
    listener = asyncio.create_task(listen)
    ended = asyncio.create_task(backlog.wait_ended())
    await asyncio.wait({writer, ended}, return_when=asyncio.FIRST_COMPLETED)
    for task in (writer, listener, ended):
        task.cancel()
    await asyncio.gather(writer, listener, ended, return_exceptions=True)
