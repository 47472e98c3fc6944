"""The MQTT driver (aiomqtt): commands published to `{root}/{site}/devices/{hw}/cmd` at QoS 1,
acknowledgements read from `.../ack` and correlated by `(op, command_id)`, and the devices'
retained `.../state` kept as they report it.

One connection per process, opened on first use and opened again after any loss. The
session is not persistent: an acknowledgement that arrives while the driver is away is
lost, and the bounded retries (the device de-duplicates every command) or the state
confirmation cover it. The state the driver holds is only what the devices said since
this connection began (the broker hands over each device's retained state on
subscription): after a disconnection it knows nothing, rather than something stale."""

import asyncio
import json
import os
import uuid
from collections.abc import Sequence
from contextlib import suppress
from typing import Any

import aiomqtt
import structlog

from irrigation.gateway.wire import (
    Ack,
    Command,
    DeviceAddress,
    DeviceState,
    GatewayError,
    GatewayFailure,
    InvalidAddress,
    StatePredicate,
    max_call_s,
)
from irrigation.mqtt import topics
from irrigation.mqtt.client import BrokerLink

log = structlog.get_logger(__name__)

BACKOFF_MIN_S = 0.2
BACKOFF_MAX_S = 5.0
SUBSCRIBE_WITHIN_S = 10.0

AckKey = tuple[DeviceAddress, str, str]  # device, op, command_id


class MqttGateway:
    """The `Gateway` over a broker; see the module's docstring."""

    def __init__(
        self,
        link: BrokerLink,
        root: str,
        *,
        timeout_s: float = 2.0,
        retries: int = 2,
        backoff_s: float = 0.1,
    ) -> None:
        self.link = link
        self.root = root
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self._states: dict[DeviceAddress, DeviceState] = {}
        self._acks: dict[AckKey, list[asyncio.Future[Ack]]] = {}
        self._watchers: dict[DeviceAddress, set[asyncio.Future[None]]] = {}
        self._client: aiomqtt.Client | None = None
        self._ready: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def call_budget_s(self) -> float:
        return max_call_s(self.timeout_s, self.retries, self.backoff_s)

    @property
    def connected(self) -> bool:
        return self._client is not None

    async def send(self, device: DeviceAddress, command: Command) -> Ack:
        payload = json.dumps(command.to_json())
        topic = topics.device_topic(self.root, device.site_id, device.hardware_id, topics.CMD)
        key: AckKey = (device, command.op.value, command.command_id)
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))
            waiter: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
            self._acks.setdefault(key, []).append(waiter)
            try:
                async with asyncio.timeout(self.timeout_s):
                    client = await self._connected_client()
                    await client.publish(topic, payload, qos=1)
                    return await waiter
            except (TimeoutError, aiomqtt.MqttError) as exc:
                last = f"{type(exc).__name__}: {exc}"[:300] if str(exc) else type(exc).__name__
            finally:
                self._drop_waiter(key, waiter)
        raise GatewayError(f"{topic}: no acknowledgement after {self.retries + 1} attempts: {last}")

    async def state(self, device: DeviceAddress) -> DeviceState:
        with suppress(TimeoutError):
            async with asyncio.timeout(self.timeout_s):
                await self._connected_client()
        found = self._states.get(device)
        if found is None:
            raise GatewayError(
                f"{device}: no state reported on this connection", GatewayFailure.no_state
            )
        return found

    async def await_state(
        self, device: DeviceAddress, until: StatePredicate, timeout_s: float
    ) -> DeviceState | None:
        self._start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            found = self._states.get(device)
            if found is not None and until(found):
                return found
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            changed: asyncio.Future[None] = loop.create_future()
            watchers = self._watchers.setdefault(device, set())
            watchers.add(changed)
            try:
                await asyncio.wait({changed}, timeout=remaining)
            finally:
                watchers.discard(changed)
                if not watchers:
                    self._watchers.pop(device, None)

    async def states(
        self, devices: Sequence[DeviceAddress]
    ) -> dict[DeviceAddress, DeviceState | None]:
        with suppress(TimeoutError):
            async with asyncio.timeout(self.timeout_s):
                await self._connected_client()
        return {device: self._states.get(device) for device in devices}

    async def aclose(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
        for waiters in self._acks.values():
            for waiter in waiters:
                waiter.cancel()

    # The connection ----------------------------------------------------------------------

    def _start(self) -> None:
        if self._task is None and not self._closed:
            self._ready = asyncio.Event()
            self._task = asyncio.create_task(self._run(), name="mqtt-gateway")

    async def _connected_client(self) -> aiomqtt.Client:
        self._start()
        assert self._ready is not None
        while self._client is None:
            if self._closed:
                raise GatewayError("the gateway is closed", GatewayFailure.closed)
            await self._ready.wait()
        return self._client

    async def _run(self) -> None:
        assert self._ready is not None
        pause = BACKOFF_MIN_S
        filters = [
            (topics.device_topic(self.root, "+", "+", level), 1)
            for level in (topics.ACK, topics.STATE)
        ]
        while not self._closed:
            try:
                async with self.link.connect() as client:
                    await client.subscribe(filters, timeout=SUBSCRIBE_WITHIN_S)
                    self._client = client
                    self._ready.set()
                    pause = BACKOFF_MIN_S
                    log.info("gateway_connected", broker=self.link.address.url())
                    async for message in client.messages:
                        self._receive(message)
            except aiomqtt.MqttError as exc:
                log.warning("gateway_disconnected", broker=self.link.address.url(), error=str(exc))
            finally:
                self._client = None
                self._ready.clear()
                # Nothing heard while away: what the devices said before is not their state.
                self._states.clear()
            await asyncio.sleep(pause)
            pause = min(pause * 2, BACKOFF_MAX_S)

    def _receive(self, message: aiomqtt.Message) -> None:
        found = topics.parse_device_topic(self.root, message.topic.value)
        if found is None:
            return
        site_id, hardware_id, level = found
        try:
            device = DeviceAddress(site_id, hardware_id)
        except InvalidAddress:
            return
        payload = message.payload
        if level == topics.STATE and not payload:
            # A retained state cleared: the device is gone.
            self._states.pop(device, None)
            return
        try:
            if not isinstance(payload, bytes | bytearray | str):
                raise TypeError(f"payload of type {type(payload).__name__}")
            data: Any = json.loads(payload)
            if level == topics.STATE:
                self._states[device] = DeviceState.from_json(data)
                self._wake(device)
            else:
                self._acknowledged(device, data)
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("device_message_unreadable", topic=message.topic.value, error=str(exc))

    def _acknowledged(self, device: DeviceAddress, data: dict[str, Any]) -> None:
        ack = Ack.from_json(data)
        op = data.get("op")
        # A device that does not echo the op is matched on its command id alone.
        ops = [op] if isinstance(op, str) else ["start", "stop", "halt"]
        for candidate in ops:
            waiters = self._acks.get((device, candidate, ack.command_id))
            if waiters:
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(ack)
                return

    def _wake(self, device: DeviceAddress) -> None:
        for changed in self._watchers.get(device, ()):
            if not changed.done():
                changed.set_result(None)

    def _drop_waiter(self, key: AckKey, waiter: asyncio.Future[Ack]) -> None:
        waiters = self._acks.get(key)
        if waiters is None:
            return
        with suppress(ValueError):
            waiters.remove(waiter)
        if not waiters:
            del self._acks[key]


def gateway_client_suffix() -> str:
    """Each process its own client id (two processes with one id would throw each other off
    the broker): the process id and a random tail."""
    return f"{os.getpid()}-{uuid.uuid4().hex[:6]}"
