"""deploy/mosquitto's ACL and example passwords, as docker-compose mounts them, against a
real Mosquitto: each device is confined to its own `cmd`, `ack` and `state`; the worker's
`gateway` commands every device and hears every answer; the `simulator` fleet plays every
device; a site's sensor credential publishes readings and commands no pump.

Mosquitto drops an unauthorised publish without telling an MQTT 3.1.1 publisher, so the
tests judge by what a subscriber allowed to see the topic receives. Each ends with a control
message that must arrive: Mosquitto hands a QoS 1 message to its subscribers before it
acknowledges it, and delivers to each subscriber in order, so whatever was published
before the control would have arrived before it. "Received up to the control == [the
control]" cannot pass vacuously."""

import os
import queue
import shutil
import subprocess
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from irrigation.mqtt import topics
from tests.support.mqtt import MOSQUITTO, ROOT, Broker, running_broker

pytestmark = pytest.mark.skipif(
    MOSQUITTO is None or shutil.which("mosquitto_passwd") is None, reason="needs Mosquitto"
)

DEPLOY = ROOT / "deploy" / "mosquitto"
SITE = "6f1c1a52-0d5b-4c38-9a57-5d2f3f9f0a11"  # the site and device of passwd.example
OTHER_SITE = "0b6a8f0e-3c2d-4e5f-8a9b-1c2d3e4f5a6b"
PASSWORD = "change-me"
Message = tuple[str, bytes]


@dataclass(frozen=True)
class Device:
    site: str
    hardware_id: str

    @property
    def user(self) -> str:
        return f"{self.site}/devices/{self.hardware_id}"

    def topic(self, leaf: str) -> str:
        return f"irrigation/{self.site}/devices/{self.hardware_id}/{leaf}"


PUMP = Device(SITE, "pump-1")  # in passwd.example and acl
NEIGHBOUR = Device(SITE, "pump.2_b")  # same site, another hardware id
NAMESAKE = Device(OTHER_SITE, "pump-1")  # another site, the same hardware id
EVERY = {leaf: f"irrigation/+/devices/+/{leaf}" for leaf in ("cmd", "ack", "state")}


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """The project's files, plus the two other devices added as an operator would."""
    passwd, acl = tmp_path / "passwd", tmp_path / "acl"
    shutil.copy(DEPLOY / "passwd.example", passwd)
    shutil.copy(DEPLOY / "acl", acl)
    env = {**os.environ, "MOSQUITTO_PASSWD_FILE": str(passwd), "MOSQUITTO_ACL_FILE": str(acl)}
    for device in (NEIGHBOUR, NAMESAKE):
        subprocess.run(
            [DEPLOY / "add-device", device.site, device.hardware_id, PASSWORD],
            env=env,
            check=True,
            capture_output=True,
        )
    with running_broker(tmp_path / "broker", kind="mosquitto", auth=(passwd, acl)) as running:
        yield running


class Refused(Exception):
    pass


class Peer:
    """One MQTT 3.1.1 connection (what devices speak); what it receives, in order."""

    def __init__(self, broker: Broker, username: str, password: str) -> None:
        self.client = paho.Client(
            paho.CallbackAPIVersion.VERSION2,
            client_id=f"acl-test-{uuid.uuid4().hex[:12]}",
            protocol=paho.MQTTv311,
        )
        self.client.username_pw_set(username, password)
        self.inbox: queue.Queue[Message] = queue.Queue()
        self._answered = threading.Event()
        self._subscribed = threading.Event()
        self._refusal: str | None = None
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = lambda _c, _u, message: self.inbox.put(
            (message.topic, bytes(message.payload))
        )
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        if not self._answered.wait(10):
            raise TimeoutError(f"no CONNACK for {username}")
        if self._refusal is not None:
            self.close()
            raise Refused(self._refusal)

    def _on_connect(self, _c: object, _u: object, _f: object, reason: object, _p: object) -> None:
        if getattr(reason, "is_failure", False):
            self._refusal = str(reason)
        self._answered.set()

    def subscribe(self, *filters: str) -> "Peer":
        self._subscribed.clear()
        self.client.subscribe([(f, 1) for f in filters])
        assert self._subscribed.wait(10), f"no SUBACK for {filters}"
        return self

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Returns once the broker acknowledged it (and so has routed it, or dropped it)."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(10)
        assert info.is_published(), f"no PUBACK for {topic}"

    def until(self, topic: str, payload: bytes) -> list[Message]:
        """Everything received up to and including (topic, payload)."""
        got: list[Message] = []
        while True:
            try:
                message = self.inbox.get(timeout=10)
            except queue.Empty:
                raise AssertionError(f"{topic} {payload!r} never came; got {got}") from None
            got.append(message)
            if message == (topic, payload):
                return got

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def publish_refused(
    broker: Broker, username: str, password: str, topic: str, **flags: bool
) -> None:
    """A publish the ACL refuses, on a connection of its own (mosquitto_pub, which returns
    once the broker acknowledged it): Mosquitto 2.0.16 to 2.0.21, and Debian 12's 2.0.11,
    close the connection after refusing a QoS 1 publish when max_queued_messages is 0
    (eclipse/mosquitto#3244, fixed in 2.0.22)."""
    done = subprocess.run(
        [*("mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "-q", "1")]
        + [*("-u", username, "-P", password, "-t", topic, "-m", "forged")]
        + (["-r"] if flags.get("retain") else []),
        capture_output=True,
        timeout=15,
    )
    assert done.returncode == 0, done.stderr


@contextmanager
def connected(broker: Broker, username: str, password: str = PASSWORD) -> Iterator[Peer]:
    peer = Peer(broker, username, password)
    try:
        yield peer
    finally:
        peer.close()


def test_a_device_receives_its_own_commands_and_no_other(broker: Broker) -> None:
    devices = (NEIGHBOUR, NAMESAKE, PUMP)
    with (
        connected(broker, "gateway") as gateway,
        connected(broker, "simulator") as simulator,
        connected(broker, PUMP.user) as pump,
        connected(broker, NEIGHBOUR.user) as neighbour,
        connected(broker, NAMESAKE.user) as namesake,
    ):
        simulator.subscribe(EVERY["cmd"])
        peers = {PUMP: pump, NEIGHBOUR: neighbour, NAMESAKE: namesake}
        for peer in peers.values():
            # Everything it asks for, its neighbours' commands by name included.
            peer.subscribe("irrigation/#", *(other.topic("cmd") for other in devices))
        sent = [(device.topic("cmd"), device.hardware_id.encode()) for device in devices]
        sent += [(device.topic("cmd"), b"control") for device in devices]
        for topic, payload in sent:
            gateway.publish(topic, payload)
        for device, peer in peers.items():
            own = device.topic("cmd")
            assert peer.until(own, b"control") == [m for m in sent if m[0] == own], device
        # The fleet's credential receives every device's commands.
        assert simulator.until(PUMP.topic("cmd"), b"control") == sent


def test_a_device_answers_for_itself_only_and_commands_no_one(broker: Broker) -> None:
    with (
        connected(broker, "gateway") as gateway,
        connected(broker, "simulator") as simulator,
        connected(broker, "bridge") as bridge,
        connected(broker, SITE, "change-me-too") as site,
        connected(broker, PUMP.user) as pump,
    ):
        gateway.subscribe(EVERY["ack"], EVERY["state"])
        simulator.subscribe(EVERY["cmd"])
        bridge.subscribe(*topics.reading_filters("irrigation"))
        reading = topics.sensor_reading("irrigation", SITE, uuid.uuid4())
        refused = [
            other.topic(leaf) for other in (NEIGHBOUR, NAMESAKE) for leaf in ("ack", "state")
        ]
        refused += [device.topic("cmd") for device in (PUMP, NEIGHBOUR, NAMESAKE)]
        refused += [reading, topics.readings("irrigation", SITE)]
        for topic in refused:
            publish_refused(broker, PUMP.user, PASSWORD, topic)

        pump.publish(PUMP.topic("ack"), b"own ack")
        pump.publish(PUMP.topic("state"), b"own state")
        assert gateway.until(PUMP.topic("state"), b"own state") == [
            (PUMP.topic("ack"), b"own ack"),
            (PUMP.topic("state"), b"own state"),
        ]
        gateway.publish(PUMP.topic("cmd"), b"control")
        assert simulator.until(PUMP.topic("cmd"), b"control") == [(PUMP.topic("cmd"), b"control")]
        site.publish(reading, b"control")
        assert bridge.until(reading, b"control") == [(reading, b"control")]


def test_a_sites_credential_publishes_readings_but_commands_no_pump(broker: Broker) -> None:
    with (
        connected(broker, "gateway") as gateway,
        connected(broker, "simulator") as simulator,
        connected(broker, "bridge") as bridge,
        connected(broker, SITE, "change-me-too") as site,
        connected(broker, PUMP.user) as pump,
    ):
        gateway.subscribe(EVERY["ack"], EVERY["state"])
        simulator.subscribe(EVERY["cmd"])
        bridge.subscribe(*topics.reading_filters("irrigation"))
        for device in (PUMP, NEIGHBOUR, NAMESAKE):
            for leaf in ("cmd", "ack", "state"):
                publish_refused(broker, SITE, "change-me-too", device.topic(leaf))
        own = [
            (topics.sensor_reading("irrigation", SITE, uuid.uuid4()), b"one reading"),
            (topics.readings("irrigation", SITE), b"a batch"),
        ]
        for topic, payload in own:
            site.publish(topic, payload)
        assert bridge.until(*own[-1]) == own
        gateway.publish(PUMP.topic("cmd"), b"control")
        assert simulator.until(PUMP.topic("cmd"), b"control") == [(PUMP.topic("cmd"), b"control")]
        pump.publish(PUMP.topic("ack"), b"control")
        assert gateway.until(PUMP.topic("ack"), b"control") == [(PUMP.topic("ack"), b"control")]


def test_the_gateway_finds_each_devices_retained_state_and_no_forgery(broker: Broker) -> None:
    with (
        connected(broker, PUMP.user) as pump,
        connected(broker, NEIGHBOUR.user) as neighbour,
        connected(broker, "simulator") as simulator,
    ):
        pump.publish(PUMP.topic("state"), b"pump-1 running", retain=True)
        neighbour.publish(NEIGHBOUR.topic("state"), b"pump.2_b stopped", retain=True)
        simulator.publish(NAMESAKE.topic("state"), b"namesake stopped", retain=True)
        # Would replace the retained states above, were they allowed.
        for topic in (NEIGHBOUR.topic("state"), NAMESAKE.topic("state")):
            publish_refused(broker, PUMP.user, PASSWORD, topic, retain=True)
        with connected(broker, "gateway") as gateway:
            gateway.subscribe(EVERY["state"])  # retained states come before the SUBACK
            gateway.subscribe(EVERY["ack"])
            pump.publish(PUMP.topic("ack"), b"control")
            received = gateway.until(PUMP.topic("ack"), b"control")
        assert sorted(received[:-1]) == [
            (NAMESAKE.topic("state"), b"namesake stopped"),
            (PUMP.topic("state"), b"pump-1 running"),
            (NEIGHBOUR.topic("state"), b"pump.2_b stopped"),
        ]


def test_a_device_logs_in_with_its_own_password_only(broker: Broker) -> None:
    with connected(broker, NEIGHBOUR.user):
        pass
    for username, password in ((PUMP.user, "wrong"), (NEIGHBOUR.user, "change-me-too")):
        with pytest.raises(Refused):
            Peer(broker, username, password)


def test_add_device_refuses_ids_the_service_would_not_spell_so(tmp_path: Path) -> None:
    passwd, acl = tmp_path / "passwd", tmp_path / "acl"
    shutil.copy(DEPLOY / "passwd.example", passwd)
    acl.write_text("")
    env = {**os.environ, "MOSQUITTO_PASSWD_FILE": str(passwd), "MOSQUITTO_ACL_FILE": str(acl)}
    for site, hardware_id in (
        (SITE.upper(), "pump-1"),
        (SITE, "-pump"),
        (SITE, "a/b"),
        (SITE, "x" * 65),
        (SITE, "pump-1\ntopic readwrite #"),
    ):
        done = subprocess.run(
            [DEPLOY / "add-device", site, hardware_id, PASSWORD], env=env, capture_output=True
        )
        assert done.returncode == 2, (site, hardware_id)
    assert acl.read_text() == ""
    assert passwd.read_text() == (DEPLOY / "passwd.example").read_text()
    # A comment line would make mosquitto_passwd drop the rest of the file (exit 0).
    passwd.write_text("# a comment\n" + passwd.read_text())
    done = subprocess.run(
        [DEPLOY / "add-device", SITE, "pump-9", PASSWORD], env=env, capture_output=True
    )
    assert done.returncode == 1
    assert b"would truncate" in done.stderr
