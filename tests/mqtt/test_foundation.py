"""The MQTT foundation: broker addresses, the topic scheme, clients that negotiate the
protocol and keep a persistent session, the embedded broker as `up` starts it, and the
project's Mosquitto ACL confining each site's credential to its own topics."""

import asyncio
import shutil
import uuid
from pathlib import Path

import aiomqtt
import pytest

from irrigation.mqtt import topics
from irrigation.mqtt.address import BrokerAddress
from irrigation.mqtt.client import BrokerLink, Protocol, SessionOptions, ack, client_id
from irrigation.stack import port_answers, resolve_stack
from tests.support.mqtt import MOSQUITTO, ROOT, Broker, publish_many, running_broker

EXAMPLE_SITE = "6f1c1a52-0d5b-4c38-9a57-5d2f3f9f0a11"  # deploy/mosquitto/passwd.example


def test_a_broker_url_gives_host_port_and_credentials() -> None:
    assert BrokerAddress.parse("mqtt://127.0.0.1") == BrokerAddress("127.0.0.1", 1883)
    address = BrokerAddress.parse("mqtt://site%2F1:p%40ss@broker.example:2883")
    assert (address.host, address.port) == ("broker.example", 2883)
    assert (address.username, address.password) == ("site/1", "p@ss")
    assert address.url() == "mqtt://site/1@broker.example:2883"  # no password in logs
    assert BrokerAddress.parse("mqtts://b").tls
    assert BrokerAddress.parse("mqtts://b").port == 8883
    with pytest.raises(ValueError, match="not an MQTT URL"):
        BrokerAddress.parse("http://b")


def test_the_topic_scheme_starts_with_the_site() -> None:
    site, sensor = uuid.uuid4(), uuid.uuid4()
    assert topics.sensor_reading("irrigation", site, sensor) == (
        f"irrigation/{site}/sensors/{sensor}/reading"
    )
    assert topics.readings("irrigation", site) == f"irrigation/{site}/readings"
    assert topics.shared("irrigation/+/readings", "g") == "$share/g/irrigation/+/readings"
    assert topics.shared("irrigation/+/readings", "") == "irrigation/+/readings"
    parsed = topics.parse_reading_topic("irrigation", f"irrigation/{site}/sensors/{sensor}/reading")
    assert parsed == topics.ReadingTopic(str(site), str(sensor))
    assert topics.parse_reading_topic("irrigation", "irrigation/x/readings") == (
        topics.ReadingTopic("x", None)
    )
    for other in ("other/x/readings", "irrigation/x/readings/more", "irrigation/x/sensors/y"):
        assert topics.parse_reading_topic("irrigation", other) is None


def test_client_ids_are_stable_per_role_and_instance() -> None:
    assert client_id("irrigation", "bridge", "a") == "irrigation-bridge-a"
    assert client_id("irrigation", "bridge") == client_id("irrigation", "bridge")


async def _session_keeps_messages(broker: Broker, expected: Protocol) -> None:
    """Subscribe, go away, let messages arrive, come back: they are delivered; one left
    unacknowledged by hand comes again on the next connection."""
    link = BrokerLink(
        BrokerAddress.parse(broker.url),
        SessionOptions(f"test-{uuid.uuid4().hex[:8]}", session_expiry_s=300, manual_ack=True),
    )
    async with link.connect() as client:
        await client.subscribe("t/#", qos=1)
    assert link.protocol is expected
    await asyncio.to_thread(publish_many, broker.url, [("t/1", b"one"), ("t/2", b"two")])
    async with link.connect() as client:
        first = await asyncio.wait_for(anext(aiter(client.messages)), 10)
        second = await asyncio.wait_for(anext(aiter(client.messages)), 10)
        assert {first.payload, second.payload} == {b"one", b"two"}
        ack(client, first)
        await asyncio.sleep(0.2)  # the PUBACK on its way before the goodbye
    if broker.kind == "amqtt":
        return  # amqtt forgets what a closed connection left unacknowledged (mqtt/broker.py)
    async with link.connect() as client:
        again = await asyncio.wait_for(anext(aiter(client.messages)), 10)
        assert again.payload == second.payload
        ack(client, again)


async def test_mosquitto_speaks_mqtt_5_and_keeps_a_persistent_session(
    mqtt_broker: Broker,
) -> None:
    if mqtt_broker.kind != "mosquitto":
        pytest.skip("no Mosquitto here")
    await _session_keeps_messages(mqtt_broker, Protocol.v5)


async def test_against_the_embedded_broker_the_client_falls_back_to_3_1_1(tmp_path: Path) -> None:
    with running_broker(tmp_path, kind="amqtt") as broker:
        await _session_keeps_messages(broker, Protocol.v311)


def test_up_starts_the_embedded_broker_only_when_none_answers(tmp_path: Path) -> None:
    with running_broker(tmp_path / "mosquitto") as broker:
        stack = resolve_stack(None, None, tmp_path, "postgres", mqtt_url=broker.url)
        try:
            assert (stack.mqtt_url, stack.embedded) == (broker.url, [])
        finally:
            stack.stop()
        down = f"mqtt://127.0.0.1:{broker.port}"
    stack = resolve_stack(None, None, tmp_path, "postgres", mqtt_url=down)
    try:
        assert stack.embedded == ["mqtt"]
        assert stack.mqtt_url == down  # on the URL's own port
        assert port_answers("127.0.0.1", broker.port)
    finally:
        stack.stop()
    assert not port_answers("127.0.0.1", broker.port)
    # A remote broker that does not answer is not replaced by a local one.
    remote = resolve_stack(None, None, tmp_path, "postgres", mqtt_url="mqtt://192.0.2.1:1883")
    assert (remote.mqtt_url, remote.embedded) == ("mqtt://192.0.2.1:1883", [])


@pytest.mark.skipif(
    MOSQUITTO is None or shutil.which("mosquitto_sub") is None, reason="needs Mosquitto"
)
async def test_the_projects_acl_confines_each_site_to_its_own_topics(tmp_path: Path) -> None:
    """deploy/mosquitto's ACL and example password file, as docker-compose mounts them."""
    auth = (ROOT / "deploy/mosquitto/passwd.example", ROOT / "deploy/mosquitto/acl")
    with running_broker(tmp_path, kind="mosquitto", auth=auth) as broker:
        bridge = BrokerLink(
            BrokerAddress.parse(f"mqtt://bridge:change-me@127.0.0.1:{broker.port}"),
            SessionOptions("acl-bridge", persistent=False),
        )
        other_site = str(uuid.uuid4())
        async with bridge.connect() as client:
            await client.subscribe([(f, 1) for f in topics.reading_filters("irrigation")])
            device = {"username": EXAMPLE_SITE, "password": "change-me-too"}
            own = topics.sensor_reading("irrigation", EXAMPLE_SITE, uuid.uuid4())
            foreign = topics.sensor_reading("irrigation", other_site, uuid.uuid4())
            # Mosquitto 2.0 closes the connection of a client that publishes where the ACL
            # forbids: the foreign message goes at QoS 0 (nothing to acknowledge) on a
            # connection of its own, and the site's own on the next one.
            await asyncio.to_thread(
                publish_many, broker.url, [(foreign, b"not mine")], qos=0, **device
            )
            await asyncio.to_thread(publish_many, broker.url, [(own, b"mine")], **device)
            received = await asyncio.wait_for(anext(aiter(client.messages)), 10)
            assert (received.topic.value, received.payload) == (own, b"mine")
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(anext(aiter(client.messages)), 1)
        wrong = BrokerAddress.parse(f"mqtt://bridge:wrong@127.0.0.1:{broker.port}")
        refused = BrokerLink(wrong, SessionOptions("acl-x", persistent=False))
        with pytest.raises(aiomqtt.MqttError):
            await refused.connect().__aenter__()
        # docker-compose's healthcheck of the broker, as the bridge.
        health = await asyncio.create_subprocess_exec(
            *["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port), "-u", "bridge"],
            *["-P", "change-me", "-t", "$SYS/broker/uptime", "-C", "1", "-W", "5"],
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await health.communicate()
        assert health.returncode == 0, err
