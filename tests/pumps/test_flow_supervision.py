"""Flow supervision judged on readings sent through the API, against a real database, Redis
and device simulator; the worker's jobs called in-process as arq calls them. A run's flow
window is after its settling time, so readings carry times from the run's start on (the API
takes readings up to 5 minutes ahead): no test waits for a window to pass."""

import asyncio
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from irrigation.common import clock
from irrigation.common.worker_context import WorkerContext
from irrigation.pumps import jobs, supervision
from irrigation.settings import Settings
from tests.alerts.helpers import evaluate, open_alerts
from tests.support.api import Headers
from tests.support.factories import activate, make_pump, make_sensor, make_water_source
from tests.support.problems import assert_invalid, assert_problem
from tests.support.simulator import runs

Ctx = dict[str, WorkerContext]
Sessions = async_sessionmaker[AsyncSession]
FLOW = {"kind": "flow", "unit": "L/min", "name": "meter"}


async def metered_pump(
    client: httpx.AsyncClient, headers: Headers, hardware_id: str, **fields: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A pump (nominal 20 L/min, judged from its start over 2 s windows) and its meter."""
    body = {"nominal_flow_lpm": 20, "flow_settle_s": 0, "flow_check_s": 2, "cooldown_s": 1}
    pump = await make_pump(client, headers, hardware_id, **{**body, **fields})
    meter = await make_sensor(client, headers, pump["zone_id"], pump_id=pump["id"], **FLOW)
    return pump, meter


async def running(
    client: httpx.AsyncClient, headers: Headers, job_ctx: Ctx, pump: dict[str, Any]
) -> dict[str, Any]:
    """A run of `pump`, started on its device; the activation as the API shows it."""
    run = (await activate(client, headers, pump["id"], 20)).json()
    assert await jobs.start_activation(job_ctx, run["id"]) == "running"
    found: dict[str, Any] = (
        await client.get(f"/v1/activations/{run['id']}", headers=headers)
    ).json()
    return found


async def send_flow(
    client: httpx.AsyncClient,
    headers: Headers,
    meter: dict[str, Any],
    since: datetime | str,
    *values: float,
    every_s: float = 1.0,
) -> None:
    """Readings `every_s` apart, the first `every_s` after `since`."""
    start = datetime.fromisoformat(since) if isinstance(since, str) else since
    readings = [
        {
            "sensor_id": meter["id"],
            "ts": (start + timedelta(seconds=every_s * (i + 1))).isoformat(),
            "value": value,
        }
        for i, value in enumerate(values)
    ]
    sent = await client.post("/v1/readings", json={"readings": readings}, headers=headers)
    assert sent.status_code == 200, sent.text
    assert sent.json()["inserted"] == len(values), sent.text


async def activation(client: httpx.AsyncClient, headers: Headers, run: dict[str, Any]) -> Any:
    return (await client.get(f"/v1/activations/{run['id']}", headers=headers)).json()


async def pump_of(client: httpx.AsyncClient, headers: Headers, pump: dict[str, Any]) -> Any:
    return (await client.get(f"/v1/pumps/{pump['id']}", headers=headers)).json()


async def incidents(sessions: Sessions, pump_id: str) -> list[tuple[str, dict[str, Any]]]:
    async with sessions() as session:
        rows = await session.execute(
            text("SELECT kind, detail FROM device_incidents WHERE pump_id = :p ORDER BY at"),
            {"p": pump_id},
        )
        return [(kind, detail) for kind, detail in rows.all()]


# Configuration -------------------------------------------------------------------------


async def test_pumps_and_sources_carry_their_supervision_settings_with_defaults_and_bounds(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    pump = await make_pump(client, admin, "cfg-1")
    assert (pump["flow_settle_s"], pump["flow_check_s"]) == (10, 10)
    assert (pump["low_flow_pct"], pump["high_flow_pct"]) == (50, 150)
    assert pump["learned_flow_lpm"] is None
    changed = await client.patch(
        f"/v1/pumps/{pump['id']}",
        json={"version": 1, "flow_settle_s": 30, "low_flow_pct": 70, "high_flow_pct": 120},
        headers=admin,
    )
    assert changed.status_code == 200, changed.text
    assert (changed.json()["flow_settle_s"], changed.json()["high_flow_pct"]) == (30, 120)
    for field, value in (
        ("flow_settle_s", -1),
        ("flow_check_s", 0),
        ("low_flow_pct", 100),
        ("high_flow_pct", 100),
        ("learned_flow_lpm", 3),
    ):
        refused = await client.patch(
            f"/v1/pumps/{pump['id']}", json={"version": 2, field: value}, headers=admin
        )
        assert_invalid(refused, f"body.{field}")

    source = await make_water_source(client, admin)
    assert (source["leak_threshold_lpm"], source["leak_after_s"]) == (None, 60)
    assert (source["halt_on_leak"], source["leak_detected_at"], source["halted_at"]) == (
        False,
        None,
        None,
    )
    for field, value in (("leak_threshold_lpm", 0), ("leak_after_s", 0), ("halted_at", None)):
        refused = await client.patch(
            f"/v1/water-sources/{source['id']}", json={"version": 1, field: value}, headers=admin
        )
        assert_invalid(refused, f"body.{field}")


# The trigger -------------------------------------------------------------------------


async def test_readings_of_an_attached_meter_queue_the_sites_flow_check_and_others_do_not(
    client: httpx.AsyncClient, admin: Headers, redis: aioredis.Redis
) -> None:
    pump, meter = await metered_pump(client, admin, "trigger-1")
    loose = await make_sensor(client, admin, pump["zone_id"], **FLOW)
    job = f"arq:job:flow:{pump['site_id']}"

    await send_flow(client, admin, loose, clock.utcnow() - timedelta(seconds=5), 3.0)
    assert not await redis.exists(job)
    await send_flow(client, admin, meter, clock.utcnow() - timedelta(seconds=5), 3.0)
    assert await redis.exists(job)


# Runs ----------------------------------------------------------------------------------


async def test_no_flow_stops_the_run_latches_the_fault_and_raises_its_alerts(
    client: httpx.AsyncClient,
    admin: Headers,
    job_ctx: Ctx,
    device: httpx.AsyncClient,
    sessions: Sessions,
    settings: Settings,
) -> None:
    pump, meter = await metered_pump(client, admin, "dry-1")
    run = await running(client, admin, job_ctx, pump)
    await send_flow(client, admin, meter, run["started_at"], 0.2, 0.0, 0.1, 0.0)

    assert await supervision.supervise_flow(job_ctx, pump["site_id"]) == (
        "1 run(s) stopped, 0 leak(s)"
    )

    marked = await activation(client, admin, run)
    assert marked["stop_requested_at"] is not None
    faulted = await pump_of(client, admin, pump)
    assert faulted["status"] == "fault"
    # The window: the reading at its start (2 s in) and the two after it.
    assert faulted["fault"].startswith("no_flow: mean 0.0333 L/min over 2 s (3 readings)")
    [(kind, detail)] = await incidents(sessions, pump["id"])
    assert kind == "no_flow"
    assert detail["expected_from"] == "nominal"
    assert (detail["expected_flow_lpm"], detail["readings"]) == (20, 3)
    # The stop goes the way every stop goes: the job tells the device and confirms it.
    assert await jobs.stop_activation(job_ctx, run["id"], "no_flow") == "aborted"
    ended = await activation(client, admin, run)
    assert (ended["status"], ended["stop_cause"]) == ("aborted", "no_flow")
    [on] = await runs(device, "dry-1", site_id=pump["site_id"])
    assert on["stopped_by"] == "command"
    events = (await client.get(f"/v1/activations/{run['id']}/events", headers=admin)).json()
    stop = next(e for e in events["items"] if e["cause"] == "stop_requested")
    assert stop["detail"]["by"] == "no_flow"
    assert stop["detail"]["flow_pct"] == pytest.approx(0.2)

    await evaluate(sessions, settings)
    [alert] = await open_alerts(client, admin, "no_flow")
    assert (alert["subject_id"], alert["severity"]) == (pump["id"], "warning")
    assert "no flow" in alert["message"]
    assert await open_alerts(client, admin, "pump_fault")
    # A latched pump starts nothing until an operator resets it; the reset clears the alerts.
    assert_problem(await activate(client, admin, pump["id"], 5), 409, "fault")
    assert (await client.post(f"/v1/pumps/{pump['id']}/reset", headers=admin)).status_code == 200
    await evaluate(sessions, settings)
    assert await open_alerts(client, admin, "no_flow") == []


async def test_low_flow_stops_the_run_without_latching_and_raises_low_flow(
    client: httpx.AsyncClient,
    admin: Headers,
    job_ctx: Ctx,
    sessions: Sessions,
    settings: Settings,
) -> None:
    pump, meter = await metered_pump(client, admin, "weak-1")
    run = await running(client, admin, job_ctx, pump)
    await send_flow(client, admin, meter, run["started_at"], 8, 7, 8, 9)  # ~40 % of 20

    await supervision.supervise_flow(job_ctx, pump["site_id"])

    assert (await activation(client, admin, run))["stop_requested_at"] is not None
    assert (await pump_of(client, admin, pump))["fault"] is None
    assert await jobs.stop_activation(job_ctx, run["id"], "low_flow") == "aborted"
    assert (await activation(client, admin, run))["stop_cause"] == "low_flow"
    await evaluate(sessions, settings)
    [alert] = await open_alerts(client, admin, "low_flow")
    assert alert["subject_id"] == pump["id"]
    assert "low flow once" in alert["message"]
    assert await open_alerts(client, admin, "pump_fault") == []


async def test_a_burst_stops_the_run_as_high_flow_and_latches_the_fault(
    client: httpx.AsyncClient,
    admin: Headers,
    job_ctx: Ctx,
    sessions: Sessions,
    settings: Settings,
) -> None:
    pump, meter = await metered_pump(client, admin, "burst-1")
    run = await running(client, admin, job_ctx, pump)
    await send_flow(client, admin, meter, run["started_at"], 20, 45, 60, 62)

    await supervision.supervise_flow(job_ctx, pump["site_id"])

    assert (await pump_of(client, admin, pump))["fault"].startswith("high_flow: ")
    assert await jobs.stop_activation(job_ctx, run["id"], "high_flow") == "aborted"
    assert (await activation(client, admin, run))["stop_cause"] == "high_flow"
    await evaluate(sessions, settings)
    [alert] = await open_alerts(client, admin, "high_flow")
    assert "burst" in alert["message"]


async def test_flow_within_the_band_leaves_the_run_alone(
    client: httpx.AsyncClient, admin: Headers, job_ctx: Ctx, sessions: Sessions
) -> None:
    pump, meter = await metered_pump(client, admin, "fine-1")
    run = await running(client, admin, job_ctx, pump)
    # 11 and 29 are inside 50 % - 150 % of 20; the window's mean is what is judged.
    await send_flow(client, admin, meter, run["started_at"], 19, 11, 29, 21)

    assert await supervision.supervise_flow(job_ctx, pump["site_id"]) == (
        "0 run(s) stopped, 0 leak(s)"
    )
    assert (await activation(client, admin, run))["stop_requested_at"] is None
    assert await incidents(sessions, pump["id"]) == []


async def test_nothing_is_judged_before_the_window_lies_wholly_after_the_settling_time(
    client: httpx.AsyncClient, admin: Headers, job_ctx: Ctx
) -> None:
    pump, meter = await metered_pump(client, admin, "settle-1", flow_settle_s=5)
    run = await running(client, admin, job_ctx, pump)
    # A line still filling: no water for its first 5 s is no finding.
    await send_flow(client, admin, meter, run["started_at"], 0, 0, 0, 0, 0, 0)
    await supervision.supervise_flow(job_ctx, pump["site_id"])
    assert (await activation(client, admin, run))["stop_requested_at"] is None

    # Two more seconds of no water: the window (6 s to 8 s) is judged.
    later = datetime.fromisoformat(run["started_at"]) + timedelta(seconds=6)
    await send_flow(client, admin, meter, later, 0, 0)
    await supervision.supervise_flow(job_ctx, pump["site_id"])
    assert (await activation(client, admin, run))["stop_requested_at"] is not None


async def test_a_pump_with_neither_a_nominal_nor_a_learned_flow_is_not_supervised(
    client: httpx.AsyncClient, admin: Headers, job_ctx: Ctx
) -> None:
    pump, meter = await metered_pump(client, admin, "unknown-1", nominal_flow_lpm=None)
    run = await running(client, admin, job_ctx, pump)
    await send_flow(client, admin, meter, run["started_at"], 0, 0, 0, 0)
    await supervision.supervise_flow(job_ctx, pump["site_id"])
    assert (await activation(client, admin, run))["stop_requested_at"] is None


async def test_another_sites_check_never_touches_this_sites_runs(
    client: httpx.AsyncClient, admin: Headers, other_admin: Headers, job_ctx: Ctx
) -> None:
    pump, meter = await metered_pump(client, admin, "mine-1")
    theirs = await make_pump(client, other_admin, "mine-1")
    run = await running(client, admin, job_ctx, pump)
    await send_flow(client, admin, meter, run["started_at"], 0, 0, 0, 0)
    await supervision.supervise_flow(job_ctx, theirs["site_id"])
    assert (await activation(client, admin, run))["stop_requested_at"] is None


async def test_the_expected_flow_is_learned_from_the_pumps_measured_runs(
    client: httpx.AsyncClient, admin: Headers, job_ctx: Ctx
) -> None:
    pump, meter = await metered_pump(client, admin, "learn-1")
    learned = []
    for flow in (10, 12, 30):
        run = await running(client, admin, job_ctx, pump)
        # Within the run (its stop comes later): a millisecond apart from its start.
        await send_flow(client, admin, meter, run["started_at"], flow, flow, every_s=0.001)
        stopped = await client.post(f"/v1/pumps/{pump['id']}/stop", headers=admin)
        assert stopped.status_code == 200, stopped.text
        assert await jobs.stop_activation(job_ctx, run["id"], "operator") == "aborted"
        assert (await activation(client, admin, run))["mean_flow_lpm"] == flow
        learned.append((await pump_of(client, admin, pump))["learned_flow_lpm"])
        # Past the cooldown, in real time: the device's clock (its stop time) is the truth's.
        await asyncio.sleep(1.05)
    # Nothing until three runs were measured, then their median.
    assert learned == [None, None, 12]

    # 9 L/min is 45 % of the nominal 20 but 75 % of the learned 12: within the band.
    run = await running(client, admin, job_ctx, pump)
    await send_flow(client, admin, meter, run["started_at"], 9, 9, 9, 9)
    await supervision.supervise_flow(job_ctx, pump["site_id"])
    assert (await activation(client, admin, run))["stop_requested_at"] is None


async def test_a_run_stopped_for_its_flow_teaches_nothing(
    client: httpx.AsyncClient, admin: Headers, job_ctx: Ctx, sessions: Sessions
) -> None:
    pump, meter = await metered_pump(client, admin, "unlearnt-1")
    run = await running(client, admin, job_ctx, pump)
    await send_flow(client, admin, meter, run["started_at"], 8, 8, 8, 8)
    await supervision.supervise_flow(job_ctx, pump["site_id"])
    assert await jobs.stop_activation(job_ctx, run["id"], "low_flow") == "aborted"
    async with sessions() as session:
        measured = await session.execute(
            text("SELECT mean_flow_lpm FROM pump_activations WHERE id = :id"), {"id": run["id"]}
        )
        assert measured.scalar_one() is None


# Leaks ---------------------------------------------------------------------------------


async def leaky_source(
    client: httpx.AsyncClient, headers: Headers, **fields: Any
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """A source detecting leaks above 2 L/min for 3 s, one pump on it, and its meter."""
    body = {"leak_threshold_lpm": 2, "leak_after_s": 3, **fields}
    source = await make_water_source(client, headers, **body)
    pump = await make_pump(
        client, headers, water_source_id=source["id"], nominal_flow_lpm=20, cooldown_s=1
    )
    meter = await make_sensor(
        client, headers, pump["zone_id"], water_source_id=source["id"], **FLOW
    )
    return source, pump, meter


async def test_flow_on_an_idle_source_raises_leak_and_halts_it_until_reset(
    client: httpx.AsyncClient,
    admin: Headers,
    job_ctx: Ctx,
    sessions: Sessions,
    settings: Settings,
) -> None:
    source, pump, meter = await leaky_source(client, admin, halt_on_leak=True)
    await send_flow(client, admin, meter, clock.utcnow() - timedelta(seconds=5), 4, 5, 4, 6, 5)

    assert await supervision.supervise_flow(job_ctx, source["site_id"]) == (
        "0 run(s) stopped, 1 leak(s)"
    )

    found = (await client.get(f"/v1/water-sources/{source['id']}", headers=admin)).json()
    assert found["leak_detected_at"] is not None
    assert found["halted_at"] == found["leak_detected_at"]
    assert found["leak_flow_lpm"] == 4
    refused = assert_problem(await activate(client, admin, pump["id"], 5), 409, "source_halted")
    assert refused["water_source_id"] == source["id"]
    # A queued run waits for the reset instead.
    queued = await activate(client, admin, pump["id"], 5, queue="append")
    assert queued.status_code == 202, queued.text
    waiting = (await client.get(queued.headers["Location"], headers=admin)).json()
    assert (waiting["status"], waiting["last_reason"]) == ("waiting", "source_halted")
    cancelled = await client.delete(queued.headers["Location"], headers=admin)
    assert cancelled.status_code in (200, 204), cancelled.text
    await evaluate(sessions, settings)
    [alert] = await open_alerts(client, admin, "leak")
    assert (alert["subject_type"], alert["subject_id"]) == ("water_source", source["id"])
    assert alert["severity"] == "critical"
    assert "halted" in alert["message"]

    reset = await client.post(f"/v1/water-sources/{source['id']}/reset", headers=admin)
    assert reset.status_code == 200, reset.text
    assert (reset.json()["leak_detected_at"], reset.json()["halted_at"]) == (None, None)
    assert (await activate(client, admin, pump["id"], 5)).status_code == 202
    await evaluate(sessions, settings)
    assert await open_alerts(client, admin, "leak") == []


async def test_a_leak_without_halt_on_leak_raises_the_alert_and_refuses_nothing(
    client: httpx.AsyncClient,
    admin: Headers,
    job_ctx: Ctx,
    sessions: Sessions,
    settings: Settings,
) -> None:
    source, pump, meter = await leaky_source(client, admin)
    await send_flow(client, admin, meter, clock.utcnow() - timedelta(seconds=5), 4, 5, 4, 6, 5)
    await supervision.supervise_flow(job_ctx, source["site_id"])

    found = (await client.get(f"/v1/water-sources/{source['id']}", headers=admin)).json()
    assert found["leak_detected_at"] is not None
    assert found["halted_at"] is None
    assert (await activate(client, admin, pump["id"], 5)).status_code == 202
    await evaluate(sessions, settings)
    assert len(await open_alerts(client, admin, "leak")) == 1


async def test_flow_shorter_than_leak_after_s_or_not_above_the_threshold_is_no_leak(
    client: httpx.AsyncClient, admin: Headers, job_ctx: Ctx
) -> None:
    short, _, meter = await leaky_source(client, admin, name="short")
    # Flowing for 2 s only (before that, the meter read 0).
    await send_flow(client, admin, meter, clock.utcnow() - timedelta(seconds=6), 0, 0, 0, 5, 5)
    drip, _, drip_meter = await leaky_source(client, admin, name="drip")
    # A drip that touches the threshold once, for long enough.
    await send_flow(client, admin, drip_meter, clock.utcnow() - timedelta(seconds=6), 3, 3, 2, 3)

    assert await supervision.supervise_flow(job_ctx, short["site_id"]) == (
        "0 run(s) stopped, 0 leak(s)"
    )
    for source in (short, drip):
        found = (await client.get(f"/v1/water-sources/{source['id']}", headers=admin)).json()
        assert found["leak_detected_at"] is None


async def test_flow_while_a_pump_of_the_source_runs_or_just_ran_is_no_leak(
    client: httpx.AsyncClient, admin: Headers, job_ctx: Ctx
) -> None:
    source, pump, meter = await leaky_source(client, admin)
    run = await running(client, admin, job_ctx, pump)
    await send_flow(client, admin, meter, clock.utcnow() - timedelta(seconds=5), 20, 20, 20, 20)
    await supervision.supervise_flow(job_ctx, source["site_id"])
    assert (await client.post(f"/v1/pumps/{pump['id']}/stop", headers=admin)).status_code == 200
    assert await jobs.stop_activation(job_ctx, run["id"], "operator") == "aborted"
    # The line drains for the pump's settling time (10 s) after its stop.
    await send_flow(client, admin, meter, clock.utcnow() - timedelta(seconds=1), 5, 5, 5, 5)
    await supervision.supervise_flow(job_ctx, source["site_id"])

    found = (await client.get(f"/v1/water-sources/{source['id']}", headers=admin)).json()
    assert found["leak_detected_at"] is None
