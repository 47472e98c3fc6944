"""Threshold rules: trigger, hysteresis on a noisy signal, gates, and the ingestion hook."""

import asyncio
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx

from irrigation import queue
from irrigation.automation import jobs as automation_jobs
from irrigation.common import clock
from irrigation.settings import Settings
from irrigation.stack import plain_url
from tests.automation.conftest import Engine, decisions, post_moisture, run_requests
from tests.support.factories import make_pump


async def zone_with_pump_and_sensor(
    client: httpx.AsyncClient, admin: dict[str, str], tz: str = "UTC"
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    zone = (
        await client.post("/v1/zones", json={"name": "North", "timezone": tz}, headers=admin)
    ).json()
    pump = await make_pump(client, admin, "hw-north", zone_id=zone["id"])
    sensor = await client.post(
        "/v1/sensors",
        json={"zone_id": zone["id"], "name": "m1", "kind": "soil_moisture", "unit": "%"},
        headers=admin,
    )
    assert sensor.status_code == 201, sensor.text
    return zone, pump, sensor.json()


async def make_rule(
    client: httpx.AsyncClient, admin: dict[str, str], zone_id: str, **extra: Any
) -> dict[str, Any]:
    body = {
        "zone_id": zone_id,
        "start_below": 30,
        "stop_above": 45,
        "window_s": 60,
        "duration_s": 5,
        **extra,
    }
    response = await client.post("/v1/threshold-rules", json=body, headers=admin)
    assert response.status_code == 201, response.text
    rule: dict[str, Any] = response.json()
    return rule


def now() -> datetime:
    return clock.utcnow()


async def step(
    client: httpx.AsyncClient, admin: dict[str, str], engine: Engine, sensor_id: str, value: float
) -> None:
    """Ten seconds pass, one reading arrives, the rules are evaluated."""
    clock.move(timedelta(seconds=10))
    await post_moisture(client, admin, sensor_id, [value], end=now())
    await engine.evaluate()


async def test_noisy_signal_around_the_threshold_asks_for_one_run_until_it_rose_above_stop(
    client: httpx.AsyncClient, admin: dict[str, str], engine: Engine
) -> None:
    zone, pump, sensor = await zone_with_pump_and_sensor(client, admin)
    rule = await make_rule(client, admin, zone["id"])
    for _ in range(6):
        await step(client, admin, engine, sensor["id"], 40)
    assert await run_requests(client, admin) == []

    noise = random.Random(7)
    below = 0
    for _ in range(40):
        await step(client, admin, engine, sensor["id"], 30 + noise.uniform(-4, 4))
        shown = (await client.get(f"/v1/threshold-rules/{rule['id']}", headers=admin)).json()
        below += shown["last_value"] < 30
    assert below >= 5, "the noise must cross the threshold many times for this test to mean much"
    asked = await run_requests(client, admin)
    assert len(asked) == 1
    assert asked[0]["priority"] == "threshold"
    assert asked[0]["rule_id"] == rule["id"]
    assert asked[0]["status"] == "started"
    shown = (await client.get(f"/v1/threshold-rules/{rule['id']}", headers=admin)).json()
    assert shown["armed"] is False

    started = await decisions(client, admin, zone["id"], outcome="started")
    assert len(started) == 1
    assert started[0]["activation_id"] is not None
    assert started[0]["rule_id"] == rule["id"]
    assert "threshold rule" in started[0]["message"]

    for _ in range(7):  # rises above stop_above: the rule re-arms
        await step(client, admin, engine, sensor["id"], 55)
    shown = (await client.get(f"/v1/threshold-rules/{rule['id']}", headers=admin)).json()
    assert shown["armed"] is True
    for _ in range(7):
        await step(client, admin, engine, sensor["id"], 20)
    asked = await run_requests(client, admin)
    assert len(asked) == 2
    # The first run's activation still holds the pump (no worker here): the second waits.
    second = next(r for r in asked if r["id"] != started[0]["run_request_id"])
    assert second["status"] == "waiting"
    assert second["last_reason"] == "pump_busy"
    deferred = await decisions(client, admin, zone["id"], outcome="deferred")
    assert [d["reason"] for d in deferred] == ["pump_busy"]
    assert pump["id"] == second["pump_id"]


async def test_rain_delay_and_pause_hold_a_triggered_rule_with_one_decision_each(
    client: httpx.AsyncClient, admin: dict[str, str], engine: Engine
) -> None:
    zone, _, sensor = await zone_with_pump_and_sensor(client, admin, tz="Europe/Berlin")
    rule = await make_rule(client, admin, zone["id"])
    # A winter morning within the year a rain delay may reach.
    until = datetime(datetime.now(UTC).year + 1, 1, 1, 5, tzinfo=UTC)
    response = await client.post(
        f"/v1/zones/{zone['id']}/rain-delay", json={"until": until.isoformat()}, headers=admin
    )
    assert response.status_code == 200, response.text
    for _ in range(5):
        await step(client, admin, engine, sensor["id"], 10)
    skipped = await decisions(client, admin, zone["id"], outcome="skipped")
    assert [d["reason"] for d in skipped] == ["rain_delay"]
    assert skipped[0]["message"].startswith(
        f"skipped: rain delay until {until.year}-01-01 06:00 Europe/Berlin"
    )
    assert skipped[0]["rule_id"] == rule["id"]
    assert await run_requests(client, admin) == []

    await client.delete(f"/v1/zones/{zone['id']}/rain-delay", headers=admin)
    paused = await client.post(
        "/v1/sites/current/pause", json={"until": until.isoformat()}, headers=admin
    )
    assert paused.status_code == 200, paused.text
    for _ in range(3):
        await step(client, admin, engine, sensor["id"], 10)
    reasons = [d["reason"] for d in await decisions(client, admin, zone["id"], outcome="skipped")]
    assert sorted(reasons) == ["paused", "rain_delay"]
    assert await run_requests(client, admin) == []

    await client.delete("/v1/sites/current/pause", headers=admin)
    await step(client, admin, engine, sensor["id"], 10)
    asked = await run_requests(client, admin)
    assert [r["status"] for r in asked] == ["started"]


async def test_a_batch_of_readings_asks_for_one_deferred_evaluation_of_its_zone(
    client: httpx.AsyncClient, admin: dict[str, str], engine: Engine
) -> None:
    zone, _, sensor = await zone_with_pump_and_sensor(client, admin)
    await make_rule(client, admin, zone["id"])
    await post_moisture(client, admin, sensor["id"], [12, 11, 10])
    await post_moisture(client, admin, sensor["id"], [9], end=now() + timedelta(seconds=1))
    members = await engine.redis.smembers(queue.dirty_zones_key(engine.redis))
    assert {m.decode() for m in members} == {zone["id"]}
    automation = queue.queue_key(engine.settings.queue_name, queue.AUTOMATION)
    queued = await engine.redis.zrange(automation, 0, -1)
    assert queued == [f"{engine.settings.queue_name}:evaluate-zones".encode()]  # one job

    ctx = engine.job_ctx()
    assert await automation_jobs.evaluate_zones(ctx) == 1
    assert await engine.redis.scard(queue.dirty_zones_key(engine.redis)) == 0
    assert [r["status"] for r in await run_requests(client, admin)] == ["started"]


async def test_automation_never_stops_a_run_a_person_started(
    client: httpx.AsyncClient, admin: dict[str, str], engine: Engine
) -> None:
    zone, pump, sensor = await zone_with_pump_and_sensor(client, admin)
    person = await client.post(
        f"/v1/pumps/{pump['id']}/activations",
        json={"duration_s": 5, "priority": "emergency"},
        headers=admin,
    )
    assert person.status_code == 202
    await make_rule(client, admin, zone["id"])
    for _ in range(3):
        await step(client, admin, engine, sensor["id"], 5)
        await engine.dispatch()
    still = (await client.get(f"/v1/activations/{person.json()['id']}", headers=admin)).json()
    assert still["status"] == "queued"
    assert still["stop_requested_at"] is None
    asked = await run_requests(client, admin)
    assert [(r["priority"], r["status"], r["last_reason"]) for r in asked] == [
        ("threshold", "waiting", "pump_busy")
    ]


async def test_evaluators_running_at_once_trigger_a_rule_once(
    client: httpx.AsyncClient, admin: dict[str, str], engine: Engine
) -> None:
    zone, _, sensor = await zone_with_pump_and_sensor(client, admin)
    await make_rule(client, admin, zone["id"])
    await post_moisture(client, admin, sensor["id"], [10, 10, 10], end=now())
    triggered = await asyncio.gather(*(engine.evaluate() for _ in range(6)))
    assert sum(triggered) == 1
    assert len(await run_requests(client, admin)) == 1


# Fails any UPDATE that re-arms a rule: a crash between the skip and the re-arm.
_FAIL_REARM = """
CREATE FUNCTION fail_rearm() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'injected: re-arming failed'; END $$;
CREATE TRIGGER fail_rearm BEFORE UPDATE ON threshold_rules
FOR EACH ROW WHEN (NEW.armed AND NOT OLD.armed) EXECUTE FUNCTION fail_rearm();
"""


async def test_a_threshold_run_skipped_at_its_deadline_re_arms_its_rule_in_the_same_transaction(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    engine: Engine,
    settings: Settings,
    database_url: str,
) -> None:
    zone, pump, sensor = await zone_with_pump_and_sensor(client, admin)
    person = await client.post(
        f"/v1/pumps/{pump['id']}/activations", json={"duration_s": 5}, headers=admin
    )
    assert person.status_code == 202  # no worker: it stays queued and holds the pump
    rule = await make_rule(client, admin, zone["id"])
    await step(client, admin, engine, sensor["id"], 10)
    (waiting,) = await run_requests(client, admin)
    assert (waiting["status"], waiting["rule_id"]) == ("waiting", rule["id"])

    async def armed() -> bool:
        shown = (await client.get(f"/v1/threshold-rules/{rule['id']}", headers=admin)).json()
        return bool(shown["armed"])

    assert not await armed()
    clock.move(timedelta(seconds=settings.threshold_run_deadline_s + 60))
    conn = await asyncpg.connect(plain_url(database_url))
    try:
        await conn.execute(_FAIL_REARM)
        # The failure is the request's alone: logged and backed off, the dispatch goes on.
        assert await engine.dispatch() == 0
        # Neither the skip nor its decision committed without the re-arm.
        shown = await run_requests(client, admin)
        assert [(r["status"], r["last_reason"]) for r in shown] == [("waiting", "row_failed")]
        assert await decisions(client, admin, zone["id"], outcome="skipped") == []
        assert not await armed()
        await conn.execute("DROP TRIGGER fail_rearm ON threshold_rules")
    finally:
        await conn.close()

    clock.move(timedelta(seconds=settings.automation_retry_base_s + 1))  # its back-off
    assert await engine.dispatch() == 0
    assert [r["status"] for r in await run_requests(client, admin)] == ["skipped"]
    skipped = await decisions(client, admin, zone["id"], outcome="skipped")
    assert [d["reason"] for d in skipped] == ["deadline_passed"]
    assert await armed()
