"""The device boundary end to end, judged from the simulator's truth and command log: one
device per (site, hardware_id), fenced commands, starts and stops confirmed by the
device's state, and the reconciliation of devices with the database. A real uvicorn API
and real arq workers (separate processes), real PostgreSQL, Redis and simulator; each case
over both drivers (HTTP, and MQTT through a real broker)."""

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.pumps.test_activation_e2e import RUN_TOLERANCE_S, terminal
from tests.support.factories import activate, make_pump
from tests.support.polling import wait_for
from tests.support.processes import StartProcess
from tests.support.simulator import (
    commands,
    runs,
    seconds_on,
    send,
    set_fault,
    start_run,
    state,
)

pytestmark = pytest.mark.slow


@pytest.fixture(params=["http", "mqtt"])
def driver(request: pytest.FixtureRequest) -> str:
    """Every case on both drivers: the worker reaches the same simulated devices over the
    simulator's HTTP or over the session's broker."""
    found: str = request.param
    return found


@pytest.fixture
async def api_b(api_url: str, other_admin: dict[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    """The same API as site B's admin."""
    async with httpx.AsyncClient(base_url=api_url, headers=other_admin, timeout=30) as client:
        yield client


async def status_of(api: httpx.AsyncClient, activation_id: str) -> str:
    found: str = (await api.get(f"/v1/activations/{activation_id}")).json()["status"]
    return found


async def reaches(api: httpx.AsyncClient, activation_id: str, status: str) -> None:
    async def there() -> bool:
        return await status_of(api, activation_id) == status

    await wait_for(there, interval_s=0.02)


def moment(value: str) -> datetime:
    return datetime.fromisoformat(value)


async def open_alerts(api: httpx.AsyncClient, kind: str) -> list[dict[str, Any]]:
    response = await api.get("/v1/alerts", params={"kind": kind, "status": "raised"})
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["items"]
    return found


# One device address --------------------------------------------------------------------


async def test_two_sites_run_one_hardware_id_side_by_side_each_on_its_own_device(
    api: httpx.AsyncClient, api_b: httpx.AsyncClient, device: httpx.AsyncClient, spawn: StartProcess
) -> None:
    spawn("worker")
    a = await make_pump(api, {}, "shared-1", cooldown_s=1)
    b = await make_pump(api_b, {}, "shared-1", cooldown_s=1)
    run_a = (await activate(api, {}, a["id"], 3)).json()
    run_b = (await activate(api_b, {}, b["id"], 3)).json()

    done_a = await wait_for(lambda: terminal(api, run_a["id"]))
    done_b = await wait_for(lambda: terminal(api_b, run_b["id"]))

    assert (done_a["status"], done_b["status"]) == ("completed", "completed")
    [on_a] = await runs(device, "shared-1", site_id=a["site_id"])
    [on_b] = await runs(device, "shared-1", site_id=b["site_id"])
    assert (on_a["command_id"], on_b["command_id"]) == (run_a["command_id"], run_b["command_id"])
    # Side by side: the two runs overlapped in time, each ran its full course.
    assert on_a["started_at"] < on_b["stopped_at"]
    assert on_b["started_at"] < on_a["stopped_at"]
    for run in (on_a, on_b):
        assert run["stopped_by"] == "auto_off"
        assert 2 <= seconds_on(run) <= 3 + RUN_TOLERANCE_S


async def test_a_second_site_reusing_a_hardware_id_never_touches_the_first_sites_run(
    api: httpx.AsyncClient, api_b: httpx.AsyncClient, device: httpx.AsyncClient, spawn: StartProcess
) -> None:
    """The defect this boundary was built for: site A runs `shared-1`; site B creates its
    own pump `shared-1` and asks for a run. A's run went on stopping after 2 s while A's
    API said `running`."""
    spawn("worker")
    a = await make_pump(api, {}, "shared-1", cooldown_s=1)
    run_a = (await activate(api, {}, a["id"], 20)).json()
    await wait_for(lambda: runs(device, "shared-1", site_id=a["site_id"]))

    b = await make_pump(api_b, {}, "shared-1", cooldown_s=1)
    run_b = (await activate(api_b, {}, b["id"], 2)).json()
    done_b = await wait_for(lambda: terminal(api_b, run_b["id"]))

    assert done_b["status"] == "completed"
    [on_b] = await runs(device, "shared-1", site_id=b["site_id"])
    assert on_b["command_id"] == run_b["command_id"]
    [on_a] = await runs(device, "shared-1", site_id=a["site_id"])
    assert on_a["command_id"] == run_a["command_id"]
    assert on_a["stopped_at"] is None  # untouched, still running
    assert (await state(device, a["site_id"], "shared-1"))["running"] is True
    assert await status_of(api, run_a["id"]) == "running"
    # Nothing of B's ever reached A's device.
    assert {c["command_id"] for c in await commands(device, "shared-1", a["site_id"])} == {
        run_a["command_id"]
    }
    # And while A runs, its pump keeps its device.
    moved = await api.patch(f"/v1/pumps/{a['id']}", json={"version": 1, "hardware_id": "x-1"})
    assert (moved.status_code, moved.json()["code"]) == (409, "pump_running")

    assert (await api.post(f"/v1/pumps/{a['id']}/stop")).status_code == 200
    done_a = await wait_for(lambda: terminal(api, run_a["id"]))
    assert (done_a["status"], done_a["stop_cause"]) == ("aborted", "operator")


# Fenced commands -------------------------------------------------------------------------


async def test_a_start_delayed_past_its_own_abort_is_refused_by_the_device_and_never_runs(
    api: httpx.AsyncClient, device: httpx.AsyncClient, spawn: StartProcess
) -> None:
    # A patient gateway: the start waits out the device's latency instead of retrying.
    spawn("worker", IRRIGATION_GATEWAY_TIMEOUT_S="6")
    pump = await make_pump(api, {}, "late-1", cooldown_s=1)
    site = pump["site_id"]
    # Starts are slowed down on the wire; nothing else is.
    await set_fault(device, site_id=site, hardware_id="late-1", latency_ms=2500, ops=["start"])
    run = (await activate(api, {}, pump["id"], 5)).json()

    await reaches(api, run["id"], "starting")
    assert (await api.post(f"/v1/pumps/{pump['id']}/stop")).status_code == 200
    done = await wait_for(lambda: terminal(api, run["id"]))
    assert (done["status"], done["stop_cause"]) == ("aborted", "operator")

    async def start_arrived() -> list[dict[str, Any]]:
        log = await commands(device, "late-1", site)
        return log if any(c["op"] == "start" for c in log) else []

    log = await wait_for(start_arrived)
    assert [(c["op"], c["result"]) for c in log] == [
        ("stop", "not_running"),
        ("start", "stale_sequence"),
    ]
    stop_seq, start_seq = log[0]["sequence"], log[1]["sequence"]
    assert start_seq == run["sequence"] < stop_seq
    assert await runs(device, "late-1") == []
    # The rest counts from the latest moment the device could have stopped: its auto-off.
    shown = (await api.get(f"/v1/pumps/{pump['id']}")).json()
    assert moment(done["auto_off_at"]) > moment(done["stopped_at"])
    assert moment(shown["cooldown_until"]) == moment(done["auto_off_at"]) + timedelta(seconds=1)


# Verified actuation ----------------------------------------------------------------------


async def test_a_relay_stuck_off_is_not_confirmed_halted_latched_and_alerted(
    api: httpx.AsyncClient, device: httpx.AsyncClient, spawn: StartProcess
) -> None:
    spawn("worker", IRRIGATION_CONFIRM_TIMEOUT_S="1")
    pump = await make_pump(api, {}, "off-1", cooldown_s=1)
    await set_fault(device, hardware_id="off-1", stuck_off=True)
    run = (await activate(api, {}, pump["id"], 5)).json()

    done = await wait_for(lambda: terminal(api, run["id"]))

    assert (done["status"], done["error"]) == ("failed", "not_confirmed")
    shown = (await api.get(f"/v1/pumps/{pump['id']}")).json()
    assert shown["status"] == "fault"
    assert shown["fault"].startswith("not_confirmed: the device did not report running start")
    log = await commands(device, "off-1")
    assert [(c["op"], c["result"]) for c in log] == [("start", "ok"), ("halt", "ok")]
    assert await runs(device, "off-1") == []
    [alert] = await wait_for(lambda: open_alerts(api, "actuation_unconfirmed"), timeout_s=20)
    assert (alert["subject_id"], alert["severity"]) == (pump["id"], "warning")
    assert await open_alerts(api, "pump_fault")


async def test_a_relay_stuck_on_is_retried_then_latched_with_a_critical_alert(
    api: httpx.AsyncClient, device: httpx.AsyncClient, spawn: StartProcess
) -> None:
    spawn("worker", IRRIGATION_CONFIRM_TIMEOUT_S="1", IRRIGATION_STOP_RETRIES="1")
    pump = await make_pump(api, {}, "on-1", max_runtime_s=8, cooldown_s=1)
    run = (await activate(api, {}, pump["id"], 8)).json()
    await reaches(api, run["id"], "running")
    await set_fault(device, hardware_id="on-1", stuck_on=True)

    assert (await api.post(f"/v1/pumps/{pump['id']}/stop")).status_code == 200
    done = await wait_for(lambda: terminal(api, run["id"]))

    assert (done["status"], done["error"]) == ("aborted", "stop_unconfirmed")
    # The device's own auto-off still ends the run: counted from then.
    assert moment(done["stopped_at"]) == moment(done["run_deadline"])
    shown = (await api.get(f"/v1/pumps/{pump['id']}")).json()
    assert shown["fault"].startswith("stop_unconfirmed: the device still reported start")
    log = await commands(device, "on-1")
    assert [(c["op"], c["result"]) for c in log][:3] == [
        ("start", "ok"),
        ("stop", "ok"),
        ("halt", "ok"),
    ]
    [alert] = await wait_for(lambda: open_alerts(api, "stop_unconfirmed"), timeout_s=20)
    assert (alert["subject_id"], alert["severity"]) == (pump["id"], "critical")
    # Judged from the truth: the relay stayed on until the device's own auto-off (the
    # reconciliation's halts of this run nobody owns any more cannot move it either).

    async def ended() -> list[dict[str, Any]]:
        found = await runs(device, "on-1")
        return found if found and found[0]["stopped_at"] else []

    [physical] = await wait_for(ended, timeout_s=15)
    assert physical["stopped_by"] == "auto_off"
    assert seconds_on(physical) <= 8 + RUN_TOLERANCE_S


# Reconciliation -----------------------------------------------------------------------


async def test_a_device_running_with_no_run_of_ours_is_halted_and_alerted(
    api: httpx.AsyncClient, device: httpx.AsyncClient, spawn: StartProcess
) -> None:
    spawn("worker")
    pump = await make_pump(api, {}, "rogue-1")
    # Someone started the device by other means, with a sequence the pump never sent.
    await start_run(device, pump["site_id"], "rogue-1", "manual-at-the-box", 30, sequence=40)

    async def halted() -> list[dict[str, Any]]:
        found = await runs(device, "rogue-1")
        return found if found[0]["stopped_at"] else []

    [physical] = await wait_for(halted, timeout_s=20)
    assert physical["stopped_by"] == "halt"
    assert seconds_on(physical) < 15
    [alert] = await wait_for(lambda: open_alerts(api, "unexpected_run"), timeout_s=20)
    assert (alert["subject_id"], alert["severity"]) == (pump["id"], "critical")
    assert "manual-at-the-box" in alert["message"]
    # The pump's counter went above the device's: the next run is not refused as stale.
    run = (await activate(api, {}, pump["id"], 1)).json()
    done = await wait_for(lambda: terminal(api, run["id"]))
    assert done["status"] == "completed"
    assert done["sequence"] > 40


async def test_a_run_the_device_ended_by_itself_is_closed_with_the_devices_stop_time(
    api: httpx.AsyncClient, device: httpx.AsyncClient, spawn: StartProcess
) -> None:
    spawn("worker")
    pump = await make_pump(api, {}, "early-1", cooldown_s=1)
    site = pump["site_id"]
    run = (await activate(api, {}, pump["id"], 25)).json()
    await reaches(api, run["id"], "running")
    # Stopped at the box (a local halt at the device's own fence, so no new number).
    fence = (await state(device, site, "early-1"))["sequence"]
    halted = await send(
        device, site, "early-1", "halt", {"command_id": "at-the-box", "sequence": fence}
    )
    assert halted.json()["result"] == "ok"
    [physical] = await runs(device, "early-1")

    done = await wait_for(lambda: terminal(api, run["id"]), timeout_s=15)

    assert (done["status"], done["stop_cause"]) == ("aborted", "device")
    assert moment(done["stopped_at"]) == moment(physical["stopped_at"])
    shown = (await api.get(f"/v1/pumps/{pump['id']}")).json()
    assert shown["active_activation_id"] is None
    assert moment(shown["cooldown_until"]) == moment(physical["stopped_at"]) + timedelta(seconds=1)
