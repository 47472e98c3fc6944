"""The MQTT readings bridge (`irrigation mqtt`): readings published to the broker go through
the same validation, write path, hot cache and events as `POST /v1/readings`.

Nothing acknowledged is lost. The bridge subscribes at QoS 1 with a persistent session
(the broker keeps its subscription and queues messages while it is away) and acknowledges
each message by hand, only once the batch holding it has committed: a bridge killed
mid-batch leaves those messages unacknowledged, the broker sends them again, and the
readings come back as duplicates. Messages are gathered for up to `mqtt_flush_interval_ms`
or `mqtt_batch_size` readings, then written while the next batch gathers; one write at a
time, so acknowledgements go in the order the messages came (as MQTT asks). While a write
cannot commit (PostgreSQL down or slow) the bridge stops reading once the next batch is
full too; MQTT 5's receive maximum (`mqtt_max_in_flight`) stops the broker from sending
more than that many unacknowledged messages, so it keeps the rest."""

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
import structlog
from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from irrigation.db import create_engine, create_sessionmaker
from irrigation.feed import create_publisher
from irrigation.ingest import service
from irrigation.ingest.cache import HotCache
from irrigation.ingest.models import JobSource, QuarantineReason
from irrigation.ingest.mqtt_messages import Batch, Decoder, SiteItems, message_raw
from irrigation.ingest.mqtt_probe import serve_probe
from irrigation.ingest.validation import Rejected
from irrigation.mqtt import topics
from irrigation.mqtt.address import BrokerAddress
from irrigation.mqtt.client import BrokerLink, SessionOptions, ack, client_id, next_waiting
from irrigation.queue import create_redis
from irrigation.settings import Settings

log = structlog.get_logger(__name__)

MESSAGES = Counter(
    "irrigation_mqtt_messages_total", "Messages the readings bridge received", ["topic"]
)
READINGS = Counter(
    "irrigation_mqtt_readings_total",
    "Items of committed batches by outcome (inserted, duplicate, quarantined)",
    ["outcome"],
)
QUARANTINED = Counter(
    "irrigation_mqtt_quarantined_total", "Items the bridge quarantined, by reason", ["reason"]
)
BATCHES = Counter("irrigation_mqtt_batches_total", "Batches committed and acknowledged")
FLUSH_SECONDS = Histogram(
    "irrigation_mqtt_flush_seconds",
    "From a batch's flush to its acknowledgement, every attempt included",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
IN_FLIGHT = Gauge(
    "irrigation_mqtt_in_flight_messages", "Messages received and not yet acknowledged"
)
CONNECTED = Gauge("irrigation_mqtt_connected", "1 while the bridge is connected to the broker")
WRITE_FAILURES = Counter(
    "irrigation_mqtt_write_failures_total", "Batch writes that failed (tried again)"
)

BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 10.0
REFUSALS_BEFORE_QUARANTINE = 3
"""A batch the database keeps refusing while it answers (not an outage) is quarantined
message by message after this many tries, so that one bad batch cannot stall the bridge."""
SUBSCRIBE_WITHIN_S = 120.0
"""Generous: behind a resumed session's backlog, the SUBACK can take a while."""
STOP_WITHIN_S = 10.0
"""On SIGTERM, how long the last batches may take to commit; after that their messages stay
unacknowledged and come again on the next start."""


@dataclass
class Held:
    """A batch and the messages it was gathered from, acknowledged once it has committed."""

    batch: Batch = field(default_factory=Batch)
    messages: list[aiomqtt.Message] = field(default_factory=list)
    first_at: float = 0.0


def bridge_link(settings: Settings) -> BrokerLink:
    """The bridge's client: a persistent session under a stable id, acknowledging by hand."""
    return BrokerLink(
        BrokerAddress.parse(settings.mqtt_url),
        SessionOptions(
            client_id=client_id(settings.mqtt_client_id_prefix, "bridge", settings.mqtt_instance),
            session_expiry_s=settings.mqtt_session_expiry_s,
            receive_maximum=settings.mqtt_max_in_flight,
            manual_ack=True,
        ),
        settings.mqtt_protocol,
    )


class Bridge:
    def __init__(
        self,
        settings: Settings,
        sessions: async_sessionmaker[AsyncSession],
        cache: HotCache,
        link: BrokerLink | None = None,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.cache = cache
        self.link = link or bridge_link(settings)
        self.decoder = Decoder(settings.mqtt_topic_root, settings.mqtt_max_payload_bytes)
        self.connected = False
        self._in_flight = 0
        self._client: aiomqtt.Client | None = None
        self.received = 0
        """Messages received since start (redeliveries included)."""
        self._flush_s = settings.mqtt_flush_interval_ms / 1000
        IN_FLIGHT.set_function(lambda: self.in_flight)

    @property
    def in_flight(self) -> int:
        """Messages received and not yet acknowledged: in batches, and still in aiomqtt's
        queue (while the bridge reads no more, the broker's sending fills it up to the
        receive maximum)."""
        queued = len(self._client.messages) if self._client is not None else 0
        return self._in_flight + queued

    # The connection ----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, consume, reconnect with back-off, until `stop` is set."""
        delay = BACKOFF_MIN_S
        while not stop.is_set():
            try:
                async with self.link.connect() as client:
                    self._client = client
                    delay = BACKOFF_MIN_S
                    await self._serve(client, stop)
            except aiomqtt.MqttError as exc:
                log.warning(
                    "mqtt_bridge_disconnected",
                    broker=self.link.address.url(),
                    error=str(exc),
                    retry_in_s=delay,
                )
            finally:
                self._client = None
                self._set_connected(False)
            if stop.is_set():
                break
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(BACKOFF_MAX_S, delay * 2)

    def _set_connected(self, connected: bool) -> None:
        if connected and not self.connected:
            log.info(
                "mqtt_bridge_connected",
                broker=self.link.address.url(),
                client_id=self.link.options.client_id,
                protocol=self.link.protocol,
            )
        self.connected = connected
        CONNECTED.set(1 if connected else 0)

    async def _subscribe(self, client: aiomqtt.Client) -> None:
        """Subscribed on every connection (a broker that lost the session lost them too;
        Mosquitto 2.0 restores no shared subscription after a restart). Shared (MQTT 5 and a
        group set) or plain; the other kind is dropped, so that a changed setting does not
        leave both delivering to this session. Runs beside the reading: a resumed session's
        backlog (up to the receive maximum) arrives before the SUBACK."""
        plain = topics.reading_filters(self.settings.mqtt_topic_root)
        group = self.settings.mqtt_shared_group if self.link.has_shared_subscriptions else ""
        wanted = [topics.shared(f, group) for f in plain]
        await client.subscribe([(f, 1) for f in wanted], timeout=SUBSCRIBE_WITHIN_S)
        if self.link.has_shared_subscriptions:
            other = plain if group else [topics.shared(f, "irrigation") for f in plain]
            with suppress(aiomqtt.MqttError):
                await client.unsubscribe(other, timeout=SUBSCRIBE_WITHIN_S)

    # Gathering ---------------------------------------------------------------------------

    async def _serve(self, client: aiomqtt.Client, stop: asyncio.Event) -> None:
        messages: AsyncIterator[aiomqtt.Message] = aiter(client.messages)
        held = Held()
        writer: asyncio.Task[None] | None = None
        # Never cancelled mid-wait (asyncio.wait keeps it): a cancelled read can drop a
        # message that was already taken off aiomqtt's queue.
        incoming: asyncio.Future[aiomqtt.Message] | None = None
        stopping = asyncio.ensure_future(stop.wait())
        subscribing: asyncio.Task[None] | None = asyncio.create_task(self._subscribe(client))
        try:
            while not stopping.done():
                if writer is not None and writer.done():
                    writer.result()  # a bug in the write path: reconnect, nothing acknowledged
                if held.messages and self._is_due(held):
                    if writer is None or writer.done():
                        writer = asyncio.create_task(self._commit_and_ack(client, held))
                        held = Held()
                        continue
                    # The next batch is due too: read no more until the write is done (the
                    # broker keeps the rest, beyond the receive maximum).
                    waits: set[asyncio.Future[Any]] = {stopping, writer}
                    timeout = None
                else:
                    if incoming is None:
                        incoming = asyncio.ensure_future(anext(messages))
                    waits = {stopping, incoming}
                    timeout = (
                        max(0.0, held.first_at + self._flush_s - time.monotonic())
                        if held.messages
                        else None
                    )
                if subscribing is not None:
                    waits.add(subscribing)
                await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                if subscribing is not None and subscribing.done():
                    subscribing.result()  # not subscribed: reconnect and try again
                    subscribing = None
                    self._set_connected(True)
                if incoming is not None and incoming.done():
                    message = incoming.result()  # MqttError once the connection is lost
                    incoming = None
                    self._take(held, message)
                    # And whatever else has arrived, up to a full batch, without waiting.
                    while held.batch.items < self.settings.mqtt_batch_size and (
                        waiting := next_waiting(client)
                    ):
                        self._take(held, waiting)
            await self._finish(client, held, writer)
        finally:
            for task in (incoming, stopping, writer, subscribing):
                if task is not None and not task.done():
                    task.cancel()
                    with suppress(asyncio.CancelledError, aiomqtt.MqttError):
                        await task
            # Whatever was not acknowledged comes again on the next connection.
            self._in_flight = 0

    def _is_due(self, held: Held) -> bool:
        return (
            held.batch.items >= self.settings.mqtt_batch_size
            or time.monotonic() >= held.first_at + self._flush_s
        )

    def _take(self, held: Held, message: aiomqtt.Message) -> None:
        if not held.messages:
            held.first_at = time.monotonic()
        held.messages.append(message)
        self.received += 1
        self._in_flight += 1
        topic = message.topic.value
        payload = message.payload
        if not isinstance(payload, bytes):  # aiomqtt's type allows others; paho gives bytes
            payload = str(payload).encode()
        parts = topics.parse_reading_topic(self.settings.mqtt_topic_root, topic)
        kind = "other" if parts is None else ("readings" if parts.sensor is None else "reading")
        MESSAGES.labels(kind).inc()
        self.decoder.add(held.batch, topic, payload)

    async def _finish(
        self, client: aiomqtt.Client, held: Held, writer: asyncio.Task[None] | None
    ) -> None:
        """On stop: commit and acknowledge what is held, for a bounded time."""
        deadline = time.monotonic() + STOP_WITHIN_S
        if writer is not None:
            await asyncio.wait({writer}, timeout=deadline - time.monotonic())
            if not writer.done():
                return
        if held.messages:
            last = asyncio.create_task(self._commit_and_ack(client, held))
            await asyncio.wait({last}, timeout=max(0.0, deadline - time.monotonic()))
            if not last.done():
                last.cancel()
                with suppress(asyncio.CancelledError):
                    await last

    # Writing -----------------------------------------------------------------------------

    async def _commit_and_ack(self, client: aiomqtt.Client, held: Held) -> None:
        started = time.monotonic()
        await self.write(held.batch)
        for message in held.messages:
            ack(client, message)
        self._in_flight -= len(held.messages)
        BATCHES.inc()
        FLUSH_SECONDS.observe(time.monotonic() - started)

    async def write(self, batch: Batch) -> None:
        """Commit the batch, site by site, trying again with back-off until it is in (or,
        refused by a database that answers, quarantined message by message)."""
        pending = dict(batch.sites)
        delay = BACKOFF_MIN_S
        refusals = 0
        last_error: Exception | None = None
        while pending:
            try:
                if refusals >= REFUSALS_BEFORE_QUARANTINE and last_error is not None:
                    await self._quarantine_refused(pending, last_error)
                else:
                    await self._write_sites(pending)
            except Exception as exc:  # the database's trouble must never end the bridge
                last_error = exc
                WRITE_FAILURES.inc()
                if await self._database_answers():
                    refusals += 1
                log.warning(
                    "mqtt_bridge_write_failed",
                    error=f"{type(exc).__name__}: {exc}"[:300],
                    sites=len(pending),
                    retry_in_s=delay,
                )
                await asyncio.sleep(delay)
                delay = min(BACKOFF_MAX_S, delay * 2)

    async def _write_sites(self, pending: dict[uuid.UUID | None, SiteItems]) -> None:
        """Each known site's items through the ingest path, in a transaction each (removed
        from `pending` once committed); then the messages of no known site, whole."""
        async with self.sessions() as session:
            async with session.begin():
                known = await service.existing_sites(session, {s for s in pending if s})
            for site_id in [s for s in pending if s is not None and s in known]:
                answer = await service.ingest_batch(
                    session,
                    self.settings,
                    self.cache,
                    site_id,
                    pending[site_id].gathered(),
                    None,
                    JobSource.mqtt,
                )
                del pending[site_id]
                _count(answer.body)
            if pending:
                rejected = _of_no_site(pending)
                await service.quarantine_all(session, None, rejected, JobSource.mqtt)
                pending.clear()
                _count({"inserted": 0, "duplicates": 0, "quarantine": rejected})

    async def _quarantine_refused(
        self, pending: dict[uuid.UUID | None, SiteItems], error: Exception
    ) -> None:
        detail = f"the database refused the batch: {type(error).__name__}: {error}"[:500]
        async with self.sessions() as session:
            async with session.begin():
                known = await service.existing_sites(session, {s for s in pending if s})
            for site_id in list(pending):
                rejected = _whole(pending[site_id], detail)
                owner = site_id if site_id in known else None
                await service.quarantine_all(session, owner, rejected, JobSource.mqtt)
                del pending[site_id]
                _count({"inserted": 0, "duplicates": 0, "quarantine": rejected})
        log.error("mqtt_bridge_batch_quarantined", error=detail)

    async def _database_answers(self) -> bool:
        try:
            async with self.sessions() as session:
                await asyncio.wait_for(session.execute(text("SELECT 1")), 2.0)
        except Exception:
            return False
        return True

    async def database_ready(self) -> str:
        """ "ok", or why not (the readiness probe)."""
        return "ok" if await self._database_answers() else "unavailable"


def _whole(items: SiteItems, detail: str) -> list[Rejected]:
    return [
        Rejected(index, message_raw(topic, payload), QuarantineReason.parse_error, detail)
        for index, (topic, payload) in enumerate(items.messages)
    ]


def _of_no_site(pending: dict[uuid.UUID | None, SiteItems]) -> list[Rejected]:
    """The messages whose topic names no site (already rejected whole) and those of sites
    that do not exist, numbered in one sequence."""
    rejected = list(pending[None].rejected) if None in pending else []
    for site_id, items in pending.items():
        if site_id is None:
            continue
        for topic, payload in items.messages:
            detail = f"the topic's site {site_id} is not known"
            rejected.append(
                Rejected(
                    len(rejected), message_raw(topic, payload), QuarantineReason.parse_error, detail
                )
            )
    return rejected


def _count(body: dict[str, Any]) -> None:
    READINGS.labels("inserted").inc(body["inserted"])
    READINGS.labels("duplicate").inc(body["duplicates"])
    quarantine = body["quarantine"]
    READINGS.labels("quarantined").inc(len(quarantine))
    for item in quarantine:
        reason = item.reason if isinstance(item, Rejected) else item["reason"]
        QUARANTINED.labels(str(reason)).inc()


async def run_bridge(settings: Settings, stop: asyncio.Event) -> None:
    """The bridge process: database, Redis (hot cache and events), the probe server on
    `mqtt_bridge_port`, and the bridge itself, until `stop` is set."""
    engine = create_engine(settings)
    redis = create_redis(
        settings.effective_redis_url, settings.redis_timeout_s, settings.queue_name
    )
    cache = HotCache.of(settings, redis)
    bridge = Bridge(settings, create_sessionmaker(engine, create_publisher(settings, redis)), cache)

    async def checks() -> dict[str, str]:
        broker = "ok" if bridge.connected else "disconnected"
        return {"broker": broker, "database": await bridge.database_ready()}

    probe = await serve_probe(
        settings.host,
        settings.mqtt_bridge_port,
        checks,
        settings.metrics_token.get_secret_value(),
    )
    try:
        await bridge.run(stop)
    finally:
        probe.close()
        await redis.aclose()
        await engine.dispose()
