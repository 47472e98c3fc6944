"""The MQTT driver against the simulated controllers on a real broker (the session's
Mosquitto, and the embedded amqtt broker once), judged from the simulator's truth and
command log: one device per (site, hardware_id), acknowledgements correlated by
`(op, command_id)`, the retained state as the confirmation, the answer faults as a network
plays them, and a broker restart."""

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from irrigation.gateway import AckResult, Command, DeviceAddress, GatewayError
from irrigation.gateway.mqtt import MqttGateway
from irrigation.mqtt.address import BrokerAddress
from irrigation.mqtt.client import BrokerLink, SessionOptions
from irrigation.simulator.app import MqttOptions, create_simulator_app
from tests.support.mqtt import Broker, running_broker
from tests.support.polling import wait_for
from tests.support.servers import serve
from tests.support.simulator import commands, runs, set_fault

SITE_A, SITE_B = str(uuid.uuid4()), str(uuid.uuid4())


@dataclass
class Rig:
    device: httpx.AsyncClient  # the simulator's HTTP side: truth, faults, command log
    gateway: MqttGateway
    root: str
    broker: Broker


@asynccontextmanager
async def rig(broker: Broker, *, timeout_s: float = 0.5, retries: int = 2) -> AsyncIterator[Rig]:
    root = f"test-{uuid.uuid4().hex[:10]}"
    options = MqttOptions(broker.url, root, f"{root}-simulator")
    app = create_simulator_app(options)
    async with serve(app, lifespan="on") as url:
        await asyncio.wait_for(app.state.mqtt.connected.wait(), 10)
        link = BrokerLink(
            BrokerAddress.parse(broker.url), SessionOptions(f"{root}-gateway", persistent=False)
        )
        gateway = MqttGateway(link, root, timeout_s=timeout_s, retries=retries)
        try:
            async with httpx.AsyncClient(base_url=url, timeout=5) as device:
                yield Rig(device, gateway, root, broker)
        finally:
            await gateway.aclose()


@pytest.fixture
async def mq(mqtt_broker: Broker) -> AsyncIterator[Rig]:
    async with rig(mqtt_broker) as found:
        yield found


def start(command_id: str, sequence: int, duration_s: float = 10) -> Command:
    return Command.start(
        command_id, sequence, duration_s, datetime.now(UTC) + timedelta(seconds=duration_s)
    )


async def test_a_start_is_acknowledged_confirmed_by_the_retained_state_and_stopped(
    mq: Rig,
) -> None:
    pump = DeviceAddress(SITE_A, "pump-1")

    ack = await mq.gateway.send(pump, start("c-1", 1))
    assert (ack.command_id, ack.result) == ("c-1", AckResult.ok)
    assert ack.state.is_running("c-1")
    confirmed = await mq.gateway.await_state(pump, lambda s: s.is_running("c-1"), 3)
    assert confirmed is not None
    assert confirmed.sequence == 1

    stop = await mq.gateway.send(pump, Command.stop("c-1", 2))
    assert stop.result == AckResult.ok
    idle = await mq.gateway.await_state(pump, lambda s: not s.running, 3)
    assert idle is not None
    assert idle.command_id == "c-1"
    [run] = await runs(mq.device, "pump-1", site_id=SITE_A)
    assert (run["command_id"], run["stopped_by"]) == ("c-1", "command")


async def test_two_sites_with_one_hardware_id_are_two_devices(mq: Rig) -> None:
    a, b = DeviceAddress(SITE_A, "shared-1"), DeviceAddress(SITE_B, "shared-1")
    await mq.gateway.send(a, start("a-1", 5))

    # B's device has seen nothing: its sequence 1 is fresh, and B's stop touches only B's.
    assert (await mq.gateway.send(b, start("b-1", 1))).result == AckResult.ok
    assert (await mq.gateway.send(b, Command.halt(2))).result == AckResult.ok

    state_a = await mq.gateway.await_state(a, lambda s: s.is_running("a-1"), 3)
    assert state_a is not None
    [run_a] = await runs(mq.device, "shared-1", site_id=SITE_A)
    [run_b] = await runs(mq.device, "shared-1", site_id=SITE_B)
    assert (run_a["stopped_at"], run_b["stopped_by"]) == (None, "halt")
    assert {c["command_id"] for c in await commands(mq.device, "shared-1", SITE_A)} == {"a-1"}


async def test_a_stale_start_is_refused_and_a_stop_of_another_command_is_not_running(
    mq: Rig,
) -> None:
    pump = DeviceAddress(SITE_A, "pump-2")
    await mq.gateway.send(pump, Command.halt(7))

    stale = await mq.gateway.send(pump, start("late", 7))
    assert stale.result == AckResult.stale_sequence
    await mq.gateway.send(pump, start("c-8", 8))
    other = await mq.gateway.send(pump, Command.stop("late", 9))
    assert other.result == AckResult.not_running
    assert await runs(mq.device, "pump-2", site_id=SITE_A) != []
    [run] = await runs(mq.device, "pump-2", site_id=SITE_A)
    assert (run["command_id"], run["stopped_at"]) == ("c-8", None)


async def test_a_start_and_its_stop_in_flight_at_once_each_get_their_own_answer(
    mq: Rig,
) -> None:
    """One command id, two ops: the acknowledgements are told apart by the op they echo. And
    the start, delayed past its own stop, is refused by the fence the stop raised."""
    pump = DeviceAddress(SITE_A, "pump-3")
    await set_fault(mq.device, site_id=SITE_A, hardware_id="pump-3", latency_ms=300, ops=["start"])
    started, stopped = await asyncio.gather(
        mq.gateway.send(pump, start("c-1", 1)),
        mq.gateway.send(pump, Command.stop("c-1", 1)),
    )
    # The stop overtook the delayed start: it found nothing running, and the start came in
    # at the sequence the stop had already carried.
    assert (started.result, stopped.result) == (AckResult.stale_sequence, AckResult.not_running)
    assert await runs(mq.device, "pump-3", site_id=SITE_A) == []


async def test_a_lost_acknowledgement_is_retried_and_the_device_runs_the_start_once(
    mq: Rig,
) -> None:
    pump = DeviceAddress(SITE_A, "pump-4")
    await set_fault(mq.device, site_id=SITE_A, hardware_id="pump-4", drop_ack=True)

    with pytest.raises(GatewayError, match="no acknowledgement after 3 attempts"):
        await mq.gateway.send(pump, start("c-1", 1))

    # Done once, its state reported; the retries were duplicates.
    assert await mq.gateway.await_state(pump, lambda s: s.is_running("c-1"), 3) is not None
    received = await commands(mq.device, "pump-4", SITE_A)
    assert [c["duplicate"] for c in received] == [False, True, True]
    assert len(await runs(mq.device, "pump-4", site_id=SITE_A)) == 1


async def test_an_offline_device_does_nothing_and_reports_once_it_is_back(mq: Rig) -> None:
    pump = DeviceAddress(SITE_A, "pump-5")
    await mq.gateway.send(pump, start("c-1", 1, duration_s=0.5))
    await set_fault(mq.device, site_id=SITE_A, hardware_id="pump-5", offline=True)

    with pytest.raises(GatewayError):
        await mq.gateway.send(pump, start("c-2", 2))
    assert [c["command_id"] for c in await commands(mq.device, "pump-5", SITE_A)] == ["c-1"]
    await asyncio.sleep(0.7)  # its run ended on its own meanwhile: not reported while offline
    held = await mq.gateway.state(pump)
    assert held.is_running("c-1")

    (await mq.device.delete("/faults")).raise_for_status()
    back = await mq.gateway.await_state(pump, lambda s: not s.running, 3)
    assert back is not None
    assert back.command_id == "c-1"


async def test_a_device_without_a_reported_state_is_unknown_not_idle(mq: Rig) -> None:
    pump = DeviceAddress(SITE_A, "never-seen")
    assert (await mq.gateway.states([pump])) == {pump: None}
    with pytest.raises(GatewayError, match="no state reported"):
        await mq.gateway.state(pump)
    assert await mq.gateway.await_state(pump, lambda s: True, 0.2) is None


async def test_a_reset_simulator_clears_the_retained_states(mq: Rig) -> None:
    pump = DeviceAddress(SITE_A, "pump-6")
    await mq.gateway.send(pump, start("c-1", 1))
    assert await mq.gateway.await_state(pump, lambda s: s.running, 3) is not None

    (await mq.device.delete("/truth")).raise_for_status()

    async def gone() -> bool:
        return (await mq.gateway.states([pump]))[pump] is None

    await wait_for(gone, timeout_s=5)


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[Broker]:
    with running_broker(tmp_path / "broker") as broker:
        yield broker


async def test_the_driver_comes_back_after_a_broker_restart_knowing_only_fresh_states(
    own_broker: Broker,
) -> None:
    async with rig(own_broker, timeout_s=1.0, retries=5) as mq:
        pump = DeviceAddress(SITE_A, "pump-7")
        await mq.gateway.send(pump, start("c-1", 1, duration_s=30))
        assert mq.gateway.connected

        own_broker.restart()

        # Back: the retained state (kept by Mosquitto, sent again by the simulator) returns.
        confirmed = await mq.gateway.await_state(pump, lambda s: s.is_running("c-1"), 15)
        assert confirmed is not None
        stop = await mq.gateway.send(pump, Command.stop("c-1", 2))
        assert stop.result == AckResult.ok
        [run] = await runs(mq.device, "pump-7", site_id=SITE_A)
        assert run["stopped_by"] == "command"


async def test_the_embedded_broker_carries_the_device_protocol(tmp_path: Path) -> None:
    with running_broker(tmp_path / "amqtt", kind="amqtt") as broker:
        async with rig(broker) as mq:
            pump = DeviceAddress(SITE_A, "pump-8")
            ack = await mq.gateway.send(pump, start("c-1", 1, duration_s=0.5))
            assert ack.result == AckResult.ok
            done = await mq.gateway.await_state(pump, lambda s: not s.running, 5)
            assert done is not None
            assert done.command_id == "c-1"
            [run] = await runs(mq.device, "pump-8", site_id=SITE_A)
            assert run["stopped_by"] == "auto_off"


# The wire, as an outside client sees it (mosquitto_pub / mosquitto_sub) --------------------


async def _run(*command: str, timeout_s: float = 10) -> str:
    proc = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    assert proc.returncode == 0, err.decode()
    return out.decode()


def _host_port(broker: Broker) -> list[str]:
    return ["-h", "127.0.0.1", "-p", str(broker.port)]


@pytest.mark.skipif(
    not Path("/usr/bin/mosquitto_pub").exists(), reason="mosquitto-clients not installed"
)
async def test_an_outside_client_commands_a_simulated_device_on_the_documented_topics(
    mq: Rig,
) -> None:
    base = f"{mq.root}/{SITE_A}/devices/outside-1"
    ack_reader = asyncio.create_task(
        _run("mosquitto_sub", *_host_port(mq.broker), "-q", "1", "-t", f"{base}/ack", "-C", "1")
    )
    await asyncio.sleep(0.5)  # subscribed before the command goes
    command = {"op": "start", "command_id": "ext-1", "sequence": 1, "duration_s": 20}
    await _run(
        "mosquitto_pub", *_host_port(mq.broker), "-q", "1", "-t", f"{base}/cmd",
        "-m", json.dumps(command),
    )  # fmt: skip
    ack = json.loads(await ack_reader)
    assert {k: ack[k] for k in ("op", "command_id", "result")} == {
        "op": "start",
        "command_id": "ext-1",
        "result": "ok",
    }
    assert ack["state"]["running"] is True
    # The retained state, read by a client that subscribes afterwards.
    state = json.loads(
        await _run("mosquitto_sub", *_host_port(mq.broker), "-t", f"{base}/state", "-C", "1")
    )
    assert set(state) == {"running", "command_id", "sequence", "since", "auto_off_at"}
    assert (state["running"], state["command_id"], state["sequence"]) == (True, "ext-1", 1)
    [run] = await runs(mq.device, "outside-1", site_id=SITE_A)
    assert run["command_id"] == "ext-1"


@pytest.mark.skipif(
    not Path("/usr/bin/mosquitto_pub").exists(), reason="mosquitto-clients not installed"
)
async def test_the_driver_talks_to_firmware_played_by_an_outside_client(
    mqtt_broker: Broker,
) -> None:
    """No simulator: mosquitto_sub reads the driver's command, mosquitto_pub answers it as
    firmware would (an ack, then the retained state), and the driver takes both."""
    root = f"test-{uuid.uuid4().hex[:10]}"
    link = BrokerLink(
        BrokerAddress.parse(mqtt_broker.url), SessionOptions(f"{root}-gw", persistent=False)
    )
    gateway = MqttGateway(link, root, timeout_s=5, retries=0)
    base = f"{root}/{SITE_B}/devices/fw-1"
    try:
        sub = ["mosquitto_sub", *_host_port(mqtt_broker), "-q", "1", "-t", f"{base}/cmd"]
        reader = asyncio.create_task(_run(*sub, "-C", "1"))
        await asyncio.sleep(0.5)
        sending = asyncio.create_task(
            gateway.send(DeviceAddress(SITE_B, "fw-1"), start("fw-c1", 3, duration_s=10))
        )
        command = json.loads(await reader)
        assert (command["op"], command["command_id"], command["sequence"]) == ("start", "fw-c1", 3)
        assert command["duration_s"] == 10
        datetime.fromisoformat(command["auto_off_at"])
        state = {
            "running": True,
            "command_id": "fw-c1",
            "sequence": 3,
            "since": datetime.now(UTC).isoformat(),
            "auto_off_at": command["auto_off_at"],
        }
        await _run(
            "mosquitto_pub", *_host_port(mqtt_broker), "-q", "1", "-r", "-t", f"{base}/state",
            "-m", json.dumps(state),
        )  # fmt: skip
        ack = {"command_id": "fw-c1", "result": "ok", "state": state}  # no op echoed: allowed
        await _run(
            "mosquitto_pub", *_host_port(mqtt_broker), "-q", "1", "-t", f"{base}/ack",
            "-m", json.dumps(ack),
        )  # fmt: skip
        answered = await asyncio.wait_for(sending, 5)
        assert (answered.result, answered.state.sequence) == (AckResult.ok, 3)
        confirmed = await gateway.await_state(
            DeviceAddress(SITE_B, "fw-1"), lambda s: s.is_running("fw-c1"), 3
        )
        assert confirmed is not None
    finally:
        await gateway.aclose()
        # Leave no retained state on the session's broker.
        await _run("mosquitto_pub", *_host_port(mqtt_broker), "-r", "-n", "-t", f"{base}/state")
