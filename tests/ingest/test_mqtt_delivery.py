"""Nothing acknowledged is lost, nothing counted twice: a bridge killed mid-stream, a broker
restart, a database outage with the broker holding the messages, several bridges sharing
the load, and the embedded broker of `irrigation up`."""

import asyncio
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest
from typer.testing import CliRunner

from irrigation.cli import app as cli
from irrigation.ingest.mqtt_bridge import run_bridge
from irrigation.settings import Settings
from irrigation.stack import plain_url
from tests.ingest.mqtt_helpers import (
    batch_topic,
    dumps,
    moisture_sensor,
    mqtt_env,
    mqtt_jobs,
    reading,
    rolled_up,
    running_bridge,
    single_topic,
    site_id,
    stored_readings,
    stream,
)
from tests.support.api import Headers
from tests.support.mqtt import Broker, publish_many, running_broker
from tests.support.polling import wait_for
from tests.support.processes import StartProcess

runner = CliRunner()


async def _site_with_sensors(
    client: httpx.AsyncClient, admin: Headers, count: int
) -> tuple[str, list[str]]:
    return await site_id(client, admin), [
        await moisture_sensor(client, admin) for _ in range(count)
    ]


async def _publish(url: str, messages: list[tuple[str, bytes]]) -> None:
    await asyncio.to_thread(publish_many, url, messages)


async def _metric(probe: str, name: str) -> float:
    """A sample of the bridge's /metrics, by its name and labels as printed."""
    async with httpx.AsyncClient(timeout=2) as http:
        metrics = (await http.get(f"{probe}/metrics")).text
    (value,) = [x.rsplit(" ", 1)[1] for x in metrics.splitlines() if x.startswith(name + " ")]
    return float(value)


def _stored(settings: Settings, at_least: int) -> Any:
    async def check() -> Any:
        count = await stored_readings(settings.effective_database_url)
        return count >= at_least and count

    return check


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_a_bridge_killed_mid_stream_loses_nothing_and_doubles_nothing(
    client: httpx.AsyncClient,
    admin: Headers,
    mqtt_settings: Settings,
    mqtt_broker: Broker,
    spawn: StartProcess,
) -> None:
    if mqtt_broker.kind != "mosquitto":
        pytest.skip("amqtt drops what a lost connection left unacknowledged (mqtt/broker.py)")
    total = 100_000
    site, sensors = await _site_with_sensors(client, admin, 10)
    env = mqtt_env(mqtt_settings)
    bridge = spawn("mqtt", **env)
    probe = f"http://127.0.0.1:{mqtt_settings.mqtt_bridge_port}"

    async def ready() -> bool:
        if bridge.proc.poll() is not None:
            raise AssertionError(f"the bridge exited: {bridge.output()[-3000:]}")
        try:
            async with httpx.AsyncClient(timeout=1) as http:
                return (await http.get(f"{probe}/readyz")).status_code == 200
        except httpx.HTTPError:
            return False

    await wait_for(ready, timeout_s=30)
    publishing = asyncio.create_task(
        _publish(mqtt_settings.mqtt_url, stream(mqtt_settings, site, sensors, total))
    )
    await wait_for(_stored(mqtt_settings, 20_000), timeout_s=300, interval_s=0.05)
    received_before = await _metric(probe, 'irrigation_mqtt_messages_total{topic="reading"}')
    bridge.kill()  # SIGKILL with a batch (or two) received and not acknowledged
    killed_at = await stored_readings(mqtt_settings.effective_database_url)
    assert killed_at < total, "the stream was over before the kill: no test"
    bridge = spawn("mqtt", **env)
    await publishing
    await wait_for(_stored(mqtt_settings, total), timeout_s=600, interval_s=0.5)

    async def settled() -> bool:
        return await _metric(probe, "irrigation_mqtt_in_flight_messages") == 0

    await wait_for(settled, timeout_s=60)
    received_after = await _metric(probe, 'irrigation_mqtt_messages_total{topic="reading"}')
    # Messages the killed bridge had received and not acknowledged came again. (At least:
    # what it received between the metric's reading and the kill is not counted.)
    assert received_before + received_after >= total
    db = mqtt_settings.effective_database_url
    assert await stored_readings(db) == total
    assert await rolled_up(db) == total
    jobs = (await mqtt_jobs(db))[site]
    assert jobs["inserted"] == total
    assert jobs["quarantined"] == 0
    # Whatever the killed bridge had written but not acknowledged came again: duplicates.
    assert jobs["total"] == total + jobs["duplicates"]
    print(
        f"killed at {killed_at} stored, {received_before:.0f} received; "
        f"{received_after:.0f} received after the restart, {jobs['duplicates']} duplicates"
    )


async def test_a_broker_restart_loses_neither_queued_nor_new_messages(
    client: httpx.AsyncClient, admin: Headers, mqtt_settings: Settings, tmp_path: Path
) -> None:
    site, sensors = await _site_with_sensors(client, admin, 2)
    messages = stream(mqtt_settings, site, sensors, 1500)
    with running_broker(tmp_path / "broker") as broker:
        if not broker.keeps_sessions_across_restarts:
            pytest.skip("the embedded broker keeps no session across a restart")
        settings = mqtt_settings.model_copy(update={"mqtt_url": broker.url})
        async with running_bridge(settings) as bridge:
            await _publish(broker.url, messages[:500])
            await wait_for(_stored(settings, 500))
        # Queued for the bridge's session while it is away, then the broker restarts.
        await _publish(broker.url, messages[500:1000])
        broker.restart()
        async with running_bridge(settings) as bridge:
            await wait_for(_stored(settings, 1000))
            # A restart under a connected bridge: published before it is back.
            broker.restart()
            await _publish(broker.url, messages[1000:])
            await wait_for(_stored(settings, 1500), timeout_s=30)
            assert bridge.connected
    db = settings.effective_database_url
    assert await stored_readings(db) == 1500
    assert await rolled_up(db) == 1500


async def test_a_database_outage_holds_a_bounded_number_then_catches_up(
    client: httpx.AsyncClient,
    admin: Headers,
    mqtt_settings: Settings,
    mqtt_broker: Broker,
    stack_postgres_url: str,
) -> None:
    site, sensors = await _site_with_sensors(client, admin, 4)
    bound = 300
    settings = mqtt_settings.model_copy(
        update={"mqtt_max_in_flight": bound, "mqtt_batch_size": 100}
    )
    messages = stream(settings, site, sensors, 2200)
    name = urlsplit(plain_url(settings.effective_database_url)).path.lstrip("/")
    admin_db = await asyncpg.connect(plain_url(stack_postgres_url))
    try:
        async with running_bridge(settings) as bridge:
            await _publish(settings.mqtt_url, messages[:200])
            await wait_for(_stored(settings, 200))
            await admin_db.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            await admin_db.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
            )
            await _publish(settings.mqtt_url, messages[200:])  # the broker takes them all

            async def holding() -> Any:
                return bridge.in_flight >= bound and bridge.in_flight

            # The bridge holds as many as it may, and no more: the broker keeps the rest.
            await wait_for(holding, timeout_s=20)
            seen = []
            for _ in range(20):
                seen.append(bridge.in_flight)
                await asyncio.sleep(0.1)
            assert set(seen) == {bound}, seen
            assert await bridge.database_ready() != "ok"
            assert bridge.connected
            await admin_db.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            await wait_for(_stored(settings, 2200), timeout_s=60)
            assert await bridge.database_ready() == "ok"
    finally:
        await admin_db.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin_db.close()
    db = settings.effective_database_url
    assert await stored_readings(db) == 2200
    assert await rolled_up(db) == 2200


async def test_two_bridges_share_the_load_through_a_shared_subscription(
    client: httpx.AsyncClient, admin: Headers, mqtt_settings: Settings, mqtt_broker: Broker
) -> None:
    if mqtt_broker.kind != "mosquitto":
        pytest.skip("shared subscriptions are MQTT 5; the embedded broker speaks 3.1.1")
    site, sensors = await _site_with_sensors(client, admin, 4)
    shared = mqtt_settings.model_copy(update={"mqtt_shared_group": "irrigation"})
    second = shared.model_copy(update={"mqtt_instance": "2"})
    async with running_bridge(shared) as one, running_bridge(second) as two:
        assert one.link.has_shared_subscriptions
        await _publish(shared.mqtt_url, stream(shared, site, sensors, 2000))
        await wait_for(_stored(shared, 2000))
        assert one.received > 0
        assert two.received > 0
        assert one.received + two.received == 2000
    jobs = (await mqtt_jobs(shared.effective_database_url))[site]
    assert (jobs["inserted"], jobs["duplicates"]) == (2000, 0)


async def test_the_embedded_broker_carries_readings_with_exact_counts(
    client: httpx.AsyncClient, admin: Headers, mqtt_settings: Settings, tmp_path: Path
) -> None:
    """amqtt, as `irrigation up` starts it: MQTT 3.1.1 only, so the bridge falls back."""
    site, (sensor,) = await _site_with_sensors(client, admin, 1)
    with running_broker(tmp_path / "amqtt", kind="amqtt") as broker:
        settings = mqtt_settings.model_copy(update={"mqtt_url": broker.url})
        async with running_bridge(settings) as bridge:
            assert bridge.link.protocol == "3.1.1"
            messages = stream(settings, site, [sensor], 300)
            messages += [
                (single_topic(settings, site, sensor), b"not json"),
                (single_topic(settings, site, sensor), dumps(reading(500))),
                (batch_topic(settings, site), dumps({"readings": [{"sensor_id": sensor}]})),
            ]
            await _publish(broker.url, messages)

            async def counted() -> Any:
                jobs = await mqtt_jobs(settings.effective_database_url)
                return site in jobs and jobs[site]["total"] >= 303 and jobs[site]

            jobs = await wait_for(counted, timeout_s=30)
    assert (jobs["total"], jobs["inserted"], jobs["quarantined"]) == (303, 300, 3)
    assert await stored_readings(settings.effective_database_url) == 300


async def test_readyz_metrics_and_check_say_whether_the_bridge_is_connected(
    mqtt_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with running_broker(tmp_path / "broker") as broker:
        settings = mqtt_settings.model_copy(update={"mqtt_url": broker.url})
        monkeypatch.setenv("IRRIGATION_MQTT_BRIDGE_PORT", str(settings.mqtt_bridge_port))
        probe = f"http://127.0.0.1:{settings.mqtt_bridge_port}"
        stop = asyncio.Event()
        task = asyncio.create_task(run_bridge(settings, stop))

        def readyz(status: int) -> Any:
            async def check() -> Any:
                try:
                    async with httpx.AsyncClient(timeout=2) as http:
                        response = await http.get(f"{probe}/readyz")
                except httpx.HTTPError:
                    return False
                return response.status_code == status and response.json()

            return check

        def check_exits() -> int:
            return runner.invoke(cli, ["mqtt", "--check"]).exit_code

        try:
            body = await wait_for(readyz(200), timeout_s=20)
            assert body["checks"] == {"broker": "ok", "database": "ok"}
            assert await asyncio.to_thread(check_exits) == 0
            async with httpx.AsyncClient(timeout=2) as http:
                metrics = (await http.get(f"{probe}/metrics")).text
                assert (await http.get(f"{probe}/healthz")).status_code == 200
            for name in (
                "irrigation_mqtt_messages_total",
                "irrigation_mqtt_readings_total",
                "irrigation_mqtt_quarantined_total",
                "irrigation_mqtt_batches_total",
                "irrigation_mqtt_flush_seconds",
                "irrigation_mqtt_in_flight_messages",
                "irrigation_mqtt_connected 1.0",
            ):
                assert name in metrics, name
            broker.stop()
            body = await wait_for(readyz(503), timeout_s=20)
            assert body["checks"]["broker"] == "disconnected"
            assert await asyncio.to_thread(check_exits) == 1
            broker.start()
            await wait_for(readyz(200), timeout_s=30)
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)
