"""Clients of the broker: a persistent session per stable client id, MQTT 5 where the broker
speaks it (else 3.1.1), and manual acknowledgement for consumers that must acknowledge a
message only once they have made it durable.

aiomqtt (on paho-mqtt) is the client. It has no public manual acknowledgement: paho's own
(`manual_ack_set`, `ack`) is reached through the client's paho instance, here only; and no
way to take an already received message without a task per message (`next_waiting`)."""

import asyncio
import logging
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

import aiomqtt
import paho.mqtt.client as paho
import structlog
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from irrigation.mqtt.address import BrokerAddress

log = structlog.get_logger(__name__)

# paho logs every packet at DEBUG through this logger; the service's level decides.
PAHO_LOGGER = logging.getLogger("irrigation.mqtt.paho")
NEGOTIATION_TIMEOUT_S = 3.0
"""How long an MQTT 5 CONNECT may go unanswered before 3.1.1 is tried: amqtt answers a
version-5 CONNECT with a 3.1.1 refusal that paho cannot read, so it is never answered."""


class Protocol(StrEnum):
    v5 = "5"
    v311 = "3.1.1"


ProtocolChoice = Literal["auto", "5", "3.1.1"]


def client_id(prefix: str, role: str, instance: str = "") -> str:
    """`{prefix}-{role}-{instance}`: stable across restarts (the broker keeps the session of
    a persistent client by its id), distinct per process of a role (the host name unless
    named). MQTT 3.1.1 brokers must accept 23 characters; Mosquitto and amqtt take more."""
    return f"{prefix}-{role}-{instance or socket.gethostname()}"


@dataclass(frozen=True)
class SessionOptions:
    client_id: str
    persistent: bool = True
    """The broker keeps subscriptions and queued QoS 1 messages while the client is away
    (3.1.1: clean session off; 5: clean start off and a session expiry)."""
    session_expiry_s: int = 0
    """MQTT 5: how long the broker keeps the session after a disconnection."""
    receive_maximum: int | None = None
    """MQTT 5: QoS 1 messages the broker may have unacknowledged at this client at once."""
    manual_ack: bool = False
    """Acknowledge each QoS 1 message with `ack()`, not on receipt."""
    keepalive_s: int = 30
    will: aiomqtt.Will | None = None
    timeout_s: float = 10.0


def make_client(
    address: BrokerAddress, protocol: Protocol, options: SessionOptions, timeout_s: float
) -> aiomqtt.Client:
    """One connection's client (aiomqtt's queue of received messages belongs to it, so a
    reconnection starts with none of the last connection's unacknowledged messages)."""
    properties: Properties | None = None
    if protocol is Protocol.v5:
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        if options.persistent and options.session_expiry_s:
            properties.SessionExpiryInterval = options.session_expiry_s
        if options.receive_maximum:
            properties.ReceiveMaximum = options.receive_maximum
    client = aiomqtt.Client(
        address.host,
        address.port,
        username=address.username,
        password=address.password,
        identifier=options.client_id,
        logger=PAHO_LOGGER,
        protocol=(
            aiomqtt.ProtocolVersion.V5 if protocol is Protocol.v5 else aiomqtt.ProtocolVersion.V311
        ),
        # 3.1.1's flag; paho refuses it for 5, which has clean start (never set here for a
        # persistent session: aiomqtt's default sets it on the first connection, which
        # would drop what the broker kept for this id while the process was down).
        clean_session=None if protocol is Protocol.v5 else not options.persistent,
        clean_start=(
            not options.persistent if protocol is Protocol.v5 else paho.MQTT_CLEAN_START_FIRST_ONLY
        ),
        properties=properties,
        keepalive=options.keepalive_s,
        will=options.will,
        timeout=timeout_s,
        tls_context=ssl.create_default_context() if address.tls else None,
    )
    if options.manual_ack:
        _paho(client).manual_ack_set(True)
    return client


def ack(client: aiomqtt.Client, message: aiomqtt.Message) -> None:
    """Acknowledge a QoS 1 message received with `manual_ack`. Only on the connection it
    came on: a packet id means another message on the next one."""
    if message.qos > 0:
        _paho(client).ack(message.mid, message.qos)


def next_waiting(client: aiomqtt.Client) -> aiomqtt.Message | None:
    """A message already received and waiting in aiomqtt's queue, without waiting for one:
    aiomqtt's iterator makes a task and an `asyncio.wait` per message, which cost a
    consumer of single-reading messages about a fifth of its time."""
    queue: asyncio.Queue[aiomqtt.Message] = client._queue
    try:
        return queue.get_nowait()
    except asyncio.QueueEmpty:
        return None


def _refuses_version(error: MqttConnectError) -> bool:
    """The broker answered the MQTT 5 CONNECT with "unsupported protocol version" (132 in
    MQTT 5's reason codes, 1 in 3.1.1's): amqtt does, some of the time."""
    rc = error.rc
    value = rc.value if isinstance(rc, ReasonCode) else rc
    return value in (1, 132)


def _paho(client: aiomqtt.Client) -> paho.Client:
    return client._client


class BrokerLink:
    """One client id's way to the broker: `async with link.connect() as client`, once per
    connection. With `protocol="auto"` the first connection tries MQTT 5 and falls back to
    3.1.1; the version found is kept for every later connection."""

    def __init__(
        self, address: BrokerAddress, options: SessionOptions, protocol: ProtocolChoice = "auto"
    ) -> None:
        self.address = address
        self.options = options
        self.protocol: Protocol | None = None if protocol == "auto" else Protocol(protocol)

    @property
    def has_shared_subscriptions(self) -> bool:
        return self.protocol is Protocol.v5

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[aiomqtt.Client]:
        client = await self._connected()
        try:
            yield client
        finally:
            # A broken connection cannot say goodbye; the session is kept either way.
            try:
                await client.__aexit__(None, None, None)
            except (aiomqtt.MqttError, OSError, asyncio.CancelledError) as exc:
                log.debug("mqtt_disconnect_failed", error=repr(exc))

    async def _connected(self) -> aiomqtt.Client:
        if self.protocol is not None:
            return await self._enter(self.protocol, self.options.timeout_s)
        try:
            client = await self._enter(Protocol.v5, NEGOTIATION_TIMEOUT_S)
        except MqttConnectError as refused:
            if not _refuses_version(refused):
                raise  # understood and refused (credentials, client id): not a version matter
            v5_error: aiomqtt.MqttError = refused
            client = await self._enter(Protocol.v311, self.options.timeout_s)
            self._fell_back(v5_error)
            return client
        except aiomqtt.MqttError as v5_error:
            client = await self._enter(Protocol.v311, self.options.timeout_s)
            self._fell_back(v5_error)
            return client
        self.protocol = Protocol.v5
        return client

    def _fell_back(self, v5_error: aiomqtt.MqttError) -> None:
        log.warning(
            "mqtt_protocol_fallback",
            broker=self.address.url(),
            protocol=Protocol.v311.value,
            detail=f"MQTT 5 refused or unanswered ({v5_error}): no shared subscriptions, no "
            "session expiry, no receive maximum",
        )
        self.protocol = Protocol.v311

    async def _enter(self, protocol: Protocol, timeout_s: float) -> aiomqtt.Client:
        client = make_client(self.address, protocol, self.options, timeout_s)
        try:
            entered = await client.__aenter__()
        except aiomqtt.MqttError:
            # aiomqtt leaves the socket of an unanswered CONNECT open; paho's own close also
            # takes it off the event loop.
            _paho(client)._sock_close()
            raise
        entered.timeout = self.options.timeout_s
        return entered
