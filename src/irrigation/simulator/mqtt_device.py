"""The simulated pump controllers over MQTT: the same `DeviceFleet` as the HTTP routes (one
truth, one set of faults), on the topics of docs/device-protocol.md. Commands come on
`{root}/{site}/devices/{hw}/cmd`; the acknowledgement goes to `.../ack` and every change of
a device's state to its retained `.../state`.

The faults about answers play as a network and a firmware would: `offline` and `hang` lose
the command (nothing done, no answer) and an offline device reports no state until it is
back; a failure drawn by `error_rate` loses the command too; `drop_ack` does the command and
loses its answer; `latency_ms` delays both."""

import asyncio
import json
from contextlib import suppress
from typing import Any

import aiomqtt
import structlog

from irrigation.gateway import DeviceAddress, InvalidAddress
from irrigation.mqtt import topics
from irrigation.mqtt.client import BrokerLink
from irrigation.simulator.core import DeviceFleet, DeviceKey
from irrigation.simulator.faults import RequestKind

log = structlog.get_logger(__name__)

BACKOFF_MIN_S = 0.2
BACKOFF_MAX_S = 5.0
# How often a device whose `offline` fault was lifted is looked at, to report its state.
BACK_ONLINE_EVERY_S = 0.25
OPS: tuple[RequestKind, ...] = ("start", "stop", "halt")

Outgoing = tuple[str, bytes, bool]  # topic, payload, retained


class MqttDevices:
    """Serves `fleet` on the broker `link` reaches, under `root`, until cancelled."""

    def __init__(self, fleet: DeviceFleet, link: BrokerLink, root: str) -> None:
        self.fleet = fleet
        self.link = link
        self.root = root
        self._outbox: asyncio.Queue[Outgoing] = asyncio.Queue()
        self._held: set[DeviceKey] = set()  # changed while offline, not reported yet
        self.connected = asyncio.Event()

    async def serve(self) -> None:
        unsubscribe = self.fleet.subscribe(self._state_changed)
        watcher = asyncio.create_task(self._report_returning_devices())
        pause = BACKOFF_MIN_S
        try:
            while True:
                try:
                    async with self.link.connect() as client:
                        await self._serve_connection(client)
                except aiomqtt.MqttError as exc:
                    log.warning("simulator_mqtt_disconnected", error=str(exc))
                finally:
                    self.connected.clear()
                await asyncio.sleep(pause)
                pause = min(pause * 2, BACKOFF_MAX_S)
        finally:
            unsubscribe()
            watcher.cancel()
            with suppress(asyncio.CancelledError):
                await watcher

    async def _serve_connection(self, client: aiomqtt.Client) -> None:
        await client.subscribe(topics.device_topic(self.root, "+", "+", topics.CMD), qos=1)
        # What was queued for the last connection is told again, whole, as the states now.
        while not self._outbox.empty():
            self._outbox.get_nowait()
        for site_id, hardware_id in list(self.fleet.devices):
            if not self._is_offline(site_id, hardware_id):
                self._report(site_id, hardware_id, self.fleet.state(site_id, hardware_id))
        writer = asyncio.create_task(self._write(client))
        self.connected.set()
        log.info("simulator_mqtt_connected", broker=self.link.address.url(), root=self.root)
        try:
            async for message in client.messages:
                self._command(message)
                if writer.done():
                    writer.result()  # its error ends this connection
        finally:
            writer.cancel()
            with suppress(asyncio.CancelledError):
                await writer

    async def _write(self, client: aiomqtt.Client) -> None:
        while True:
            topic, payload, retain = await self._outbox.get()
            await client.publish(topic, payload, qos=1, retain=retain)

    # Commands ----------------------------------------------------------------------------

    def _command(self, message: aiomqtt.Message) -> None:
        found = topics.parse_device_topic(self.root, message.topic.value)
        if found is None or found[2] != topics.CMD:
            return
        site_id, hardware_id, _ = found
        try:
            DeviceAddress(site_id, hardware_id)
        except InvalidAddress:
            return
        body = _json_object(message.payload)
        op = body.get("op")
        fault = self.fleet.faults.for_device(site_id, hardware_id)
        if fault is not None and not fault.answers(op if op in OPS else "start"):
            fault = None
        if fault is not None:
            if fault.offline or fault.hang or self.fleet.faults.fails(fault):
                return  # lost on the way: nothing done, nothing answered
            if fault.latency_ms:
                delay = fault.latency_ms / 1000
                asyncio.get_running_loop().call_later(
                    delay, self._apply, site_id, hardware_id, body, fault.drop_ack
                )
                return
        self._apply(site_id, hardware_id, body, fault is not None and fault.drop_ack)

    def _apply(self, site_id: str, hardware_id: str, body: dict[str, Any], drop: bool) -> None:
        answer = self.fleet.handle(site_id, hardware_id, body)
        if drop:
            return
        if isinstance(body.get("op"), str):
            answer = {"op": body["op"], **answer}
        topic = topics.device_topic(self.root, site_id, hardware_id, topics.ACK)
        self._outbox.put_nowait((topic, json.dumps(answer).encode(), False))

    # States ------------------------------------------------------------------------------

    def _state_changed(self, site_id: str, hardware_id: str, state: dict[str, Any] | None) -> None:
        if state is not None and self._is_offline(site_id, hardware_id):
            self._held.add((site_id, hardware_id))
            return
        self._held.discard((site_id, hardware_id))
        self._report(site_id, hardware_id, state)

    def _report(self, site_id: str, hardware_id: str, state: dict[str, Any] | None) -> None:
        topic = topics.device_topic(self.root, site_id, hardware_id, topics.STATE)
        # An empty retained message clears the device's state on the broker (it is gone).
        payload = json.dumps(state).encode() if state is not None else b""
        self._outbox.put_nowait((topic, payload, True))

    def _is_offline(self, site_id: str, hardware_id: str) -> bool:
        fault = self.fleet.faults.for_device(site_id, hardware_id)
        return fault is not None and fault.offline

    async def _report_returning_devices(self) -> None:
        while True:
            await asyncio.sleep(BACK_ONLINE_EVERY_S)
            for key in list(self._held):
                if not self._is_offline(*key):
                    self._held.discard(key)
                    self._report(*key, self.fleet.state(*key))


def _json_object(payload: Any) -> dict[str, Any]:
    """The command as the core reads it; anything unreadable becomes a command the core
    answers with `error` (an empty object has no op)."""
    try:
        data = json.loads(payload) if isinstance(payload, bytes | bytearray | str) else None
    except ValueError:
        data = None
    return data if isinstance(data, dict) else {}
