"""The live feed's state in one API process (`app.state.live`): settings, the shared Redis
client for tickets, leases and positions, the open streams, and their server side
(`Connection`)."""

import asyncio
import signal
import uuid
from types import FrameType, TracebackType
from typing import Self

import structlog
from prometheus_client import Counter
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from irrigation import feed
from irrigation.auth import service as auth_service
from irrigation.auth.deps import Principal
from irrigation.live import stream
from irrigation.live.errors import TooManyStreams, feed_unavailable
from irrigation.live.leases import Leases
from irrigation.live.stream import Backlog, End, Filters, Start, StreamId, Tail
from irrigation.settings import Settings

log = structlog.get_logger(__name__)

OPENED = Counter("irrigation_live_streams_opened_total", "Live streams opened", ["transport"])
ENDED = Counter(
    "irrigation_live_streams_ended_total",
    "Live streams ended, by why (client_gone, slow_consumer, shutdown, revoked, unavailable)",
    ["transport", "reason"],
)

# XREAD waits this long for an entry before asking again.
BLOCK_MS = 5000
# A stream renews its lease this often at most (and at least every heartbeat); a lease
# lives LEASE_TTL_RENEWALS renewals, so one late renewal does not lose it.
MAX_RENEW_EVERY_S = 10.0
LEASE_TTL_RENEWALS = 3


class LiveHub:
    def __init__(
        self, settings: Settings, redis: Redis, sessions: async_sessionmaker[AsyncSession]
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.sessions = sessions
        self.namespace = settings.redis_namespace
        self.renew_every_s = min(settings.live_heartbeat_s, MAX_RENEW_EVERY_S)
        self.leases = Leases(
            redis,
            settings.redis_namespace,
            settings.live_max_streams_per_key,
            LEASE_TTL_RENEWALS * self.renew_every_s,
        )
        self.stopping = False
        self.open: set[Backlog] = set()

    def stream_key(self, site_id: uuid.UUID) -> str:
        return feed.stream_key(self.namespace, site_id)

    async def start(self, site_id: uuid.UUID, resume: StreamId | None) -> Start:
        with feed_unavailable():
            return await stream.start(
                self.redis, self.stream_key(site_id), resume, self.settings.live_stream_maxlen
            )

    async def take_lease(self, key_id: uuid.UUID) -> str:
        """A lease on one of the key's streams; 429 `too_many_streams` when it holds them all."""
        with feed_unavailable():
            lease = await self.leases.acquire(key_id)
        if lease is None:
            limit = self.settings.live_max_streams_per_key
            raise TooManyStreams(
                f"this key already has {limit} live streams open; close one first", limit=limit
            )
        return lease

    def tail(self) -> Tail:
        return Tail(
            self.settings.effective_redis_url,
            socket_timeout_s=BLOCK_MS / 1000 + 5,
            connect_timeout_s=self.settings.redis_timeout_s,
        )

    async def key_is_active(self, key_id: uuid.UUID) -> bool:
        try:
            async with self.sessions() as session:
                return await auth_service.active_key(session, key_id) is not None
        except Exception as exc:  # the stream needs only Redis: a database outage ends none
            log.warning("live_key_check_failed", error=type(exc).__name__)
            return True

    def stop(self) -> None:
        """Ends every open stream (`shutdown`), and any opened from now on."""
        self.stopping = True
        for backlog in list(self.open):
            backlog.end(End.shutdown)

    def watch_signals(self) -> None:
        """Ends every open stream as soon as the process is asked to stop.

        uvicorn, told to stop, waits for every response in progress to finish before it
        runs the lifespan's shutdown, and an event stream never finishes by itself: `up`
        would wait for it and then kill the API. uvicorn's own SIGINT/SIGTERM handler is
        wrapped (installed by then, in the main thread) so that it also calls `stop`."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous = signal.getsignal(signum)
            if not callable(previous):
                continue  # nobody handles it here: the default (terminate) stays

            def on_signal(
                number: int, frame: FrameType | None, previous: object = previous
            ) -> None:
                loop.call_soon_threadsafe(self.stop)
                if callable(previous):
                    previous(number, frame)

            try:
                signal.signal(signum, on_signal)
            except ValueError:  # not the main thread (an embedded server): nothing to wrap
                return


class Connection:
    """One open stream's work beside its writer: the reader that fills its backlog, and
    the keeper that renews its lease and checks its key again (a revoked key's stream
    ends within a renewal). Owns the lease from the moment it is made: releases it on
    exit, whatever ended the stream.

    Its tasks stop when the backlog ends, not only when cancelled: a task cancelled while
    redis-py was connecting was seen to lose the cancellation and go on (the reader then
    blocked in XREAD after its client had gone, holding the server's shutdown)."""

    def __init__(
        self,
        hub: LiveHub,
        principal: Principal,
        filters: Filters,
        lease: str,
        transport: str,
    ) -> None:
        self.hub = hub
        self.principal = principal
        self.filters = filters
        self.lease = lease
        self.transport = transport
        self.backlog = Backlog(hub.settings.live_max_backlog)
        self._tasks: list[asyncio.Task[None]] = []
        self._tail: Tail | None = None

    async def __aenter__(self) -> Self:
        OPENED.labels(self.transport).inc()
        self.hub.open.add(self.backlog)
        if self.hub.stopping:
            self.backlog.end(End.shutdown)
        return self

    def open(self, begin: Start) -> None:
        """Starts reading after `begin.after` (its gap notice first)."""
        if begin.gap is not None:
            self.backlog.offer(begin.gap)
        self._tail = self.hub.tail()
        key = self.hub.stream_key(self.principal.site_id)
        self._tasks = [
            asyncio.create_task(
                stream.read(self._tail, key, begin.after, self.filters, self.backlog, BLOCK_MS)
            ),
            asyncio.create_task(self._keep()),
        ]

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.backlog.end(End.client_gone)  # kept only if nothing else ended it first
        self.hub.open.discard(self.backlog)
        for task in self._tasks:
            task.cancel()
        try:
            if self._tail is not None:
                await self._tail.aclose()  # and a read in progress fails at once
            await self.hub.leases.release(self.principal.key_id, self.lease)
        except Exception as exc:  # the lease expires by itself
            log.warning("live_lease_release_failed", error=repr(exc))
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=BLOCK_MS / 1000 + 1)
            if pending:
                log.error("live_tasks_stuck", tasks=len(pending))
        ENDED.labels(self.transport, (self.backlog.ended or End.client_gone).value).inc()

    async def _keep(self) -> None:
        hub, backlog = self.hub, self.backlog
        while backlog.ended is None:
            try:
                async with asyncio.timeout(hub.renew_every_s):
                    await backlog.wait_ended()
                return
            except TimeoutError:
                pass
            try:
                await hub.leases.renew(self.principal.key_id, self.lease)
            except Exception as exc:  # the reader meets the same Redis and ends the stream
                log.warning("live_lease_renew_failed", error=repr(exc))
            if not await hub.key_is_active(self.principal.key_id):
                backlog.end(End.revoked)
