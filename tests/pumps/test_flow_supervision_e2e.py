"""Flow supervision end to end: a real API and worker, and the simulator's flow meters
feeding the site's flow sensors through the ingest API as a field meter would, with a
fault per device (`flow_lpm` while it runs, `leak_lpm` while it does not). Judged from the
simulator's truth: how long the device really ran, and that an idle source's device never
ran while its water flowed."""

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.pumps.test_activation_e2e import terminal
from tests.support.factories import activate, make_pump, make_sensor, make_water_source
from tests.support.polling import wait_for
from tests.support.problems import assert_problem
from tests.support.processes import StartProcess
from tests.support.simulator import runs, seconds_on, set_fault

# Real API and worker processes: left out of `make test-quick`.
pytestmark = pytest.mark.slow

FLOW = {"kind": "flow", "unit": "L/min", "name": "meter"}
SETTLE_S, CHECK_S = 2, 2
# A verdict needs the first reading after the window (the meter reads every 0.5 s), the
# site's check job (arq polls every 0.5 s), then the stop job and the device's confirmation.
STOP_WITHIN_S = SETTLE_S + CHECK_S + 5
RUN_S = 30


async def feed_meters(
    device: httpx.AsyncClient,
    api_url: str,
    admin: dict[str, str],
    *meters: dict[str, Any],
    key_file: Path | None = None,
) -> None:
    """The simulator's meters for the key's site (the key given, or in `key_file` as `up`
    gives it), once they know `meters`."""
    body: dict[str, Any] = {"api_url": api_url, "interval_s": 0.5, "refresh_s": 1}
    if key_file is None:
        body["api_key"] = admin["Authorization"].removeprefix("Bearer ")
    else:
        body["api_key_file"] = str(key_file)
    response = await device.post("/flow/feeds", json=body)
    assert response.status_code == 201, response.text
    wanted = {m["id"] for m in meters}

    async def known() -> bool:
        [feed] = (await device.get("/flow/feeds")).json()["feeds"]
        return wanted <= {m["sensor_id"] for m in feed["meters"]}

    await wait_for(known)


@pytest.fixture
def key_file(tmp_path: Path, admin: dict[str, str]) -> Path:
    """The admin key in a file, as `up` hands the simulator the demo key."""
    path = tmp_path / "key"
    path.write_text(admin["Authorization"].removeprefix("Bearer ") + "\n")
    return path


async def metered_pump(api: httpx.AsyncClient, hardware_id: str) -> dict[str, Any]:
    pump = await make_pump(
        api,
        {},
        hardware_id,
        nominal_flow_lpm=20,
        flow_settle_s=SETTLE_S,
        flow_check_s=CHECK_S,
        cooldown_s=1,
        max_runtime_s=RUN_S,
    )
    pump["meter"] = await make_sensor(api, {}, pump["zone_id"], pump_id=pump["id"], **FLOW)
    return pump


async def raised(api: httpx.AsyncClient, kind: str) -> list[dict[str, Any]]:
    response = await api.get("/v1/alerts", params={"kind": kind, "status": "raised"})
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["items"]
    return found


async def stopped_for(
    api: httpx.AsyncClient,
    device: httpx.AsyncClient,
    api_url: str,
    admin: dict[str, str],
    hardware_id: str,
    flow_lpm: float,
    key_file: Path | None = None,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """A metered pump whose device's meter reads `flow_lpm` while it runs, asked for a
    30 s run: the pump, the run once ended, and the device's run in truth."""
    pump = await metered_pump(api, hardware_id)
    await set_fault(device, site_id=pump["site_id"], hardware_id=hardware_id, flow_lpm=flow_lpm)
    await feed_meters(device, api_url, admin, pump["meter"], key_file=key_file)
    asked = await activate(api, {}, pump["id"], RUN_S)
    assert asked.status_code == 202, asked.text
    ended = await wait_for(lambda: terminal(api, asked.json()["id"]), timeout_s=RUN_S + 10)
    [on] = await runs(device, hardware_id, site_id=pump["site_id"])
    return pump, ended, on


async def test_a_dry_run_stops_within_settle_and_check_with_no_flow_a_fault_and_an_alert(
    api: httpx.AsyncClient,
    api_url: str,
    admin: dict[str, str],
    spawn: StartProcess,
    device: httpx.AsyncClient,
) -> None:
    spawn("worker")
    pump, ended, on = await stopped_for(api, device, api_url, admin, "dry-1", 0)

    assert (ended["status"], ended["stop_cause"]) == ("aborted", "no_flow")
    # In truth: stopped by a command, long before its own 30 s were up.
    assert on["command_id"] == ended["command_id"]
    assert on["stopped_by"] == "command"
    assert SETTLE_S + CHECK_S <= seconds_on(on) <= STOP_WITHIN_S, on
    faulted = (await api.get(f"/v1/pumps/{pump['id']}")).json()
    assert faulted["status"] == "fault"
    assert faulted["fault"].startswith("no_flow: mean 0 L/min")
    [alert] = await wait_for(lambda: raised(api, "no_flow"), timeout_s=20)
    assert alert["subject_id"] == pump["id"]
    assert await raised(api, "pump_fault")
    # Latched: nothing more runs on the device until an operator resets the pump.
    assert_problem(await activate(api, {}, pump["id"], 5), 409, "fault")
    assert len(await runs(device, "dry-1", site_id=pump["site_id"])) == 1


async def test_a_burst_stops_the_run_as_high_flow_with_a_fault_and_an_alert(
    api: httpx.AsyncClient,
    api_url: str,
    admin: dict[str, str],
    spawn: StartProcess,
    device: httpx.AsyncClient,
    key_file: Path,
) -> None:
    spawn("worker")
    pump, ended, on = await stopped_for(api, device, api_url, admin, "burst-1", 70, key_file)

    assert (ended["status"], ended["stop_cause"]) == ("aborted", "high_flow")
    assert on["stopped_by"] == "command"
    assert seconds_on(on) <= STOP_WITHIN_S, on
    faulted = (await api.get(f"/v1/pumps/{pump['id']}")).json()
    assert faulted["fault"].startswith("high_flow: mean 70 L/min")
    [alert] = await wait_for(lambda: raised(api, "high_flow"), timeout_s=20)
    assert alert["subject_id"] == pump["id"]


async def test_a_leak_while_idle_raises_leak_and_halts_the_source(
    api: httpx.AsyncClient,
    api_url: str,
    admin: dict[str, str],
    spawn: StartProcess,
    device: httpx.AsyncClient,
) -> None:
    spawn("worker")
    source = await make_water_source(
        api, {}, "tank", leak_threshold_lpm=1, leak_after_s=3, halt_on_leak=True
    )
    pump = await make_pump(
        api, {}, "tank-1", water_source_id=source["id"], nominal_flow_lpm=20, cooldown_s=1
    )
    meter = await make_sensor(
        api, {}, pump["zone_id"], water_source_id=source["id"], **{**FLOW, "name": "main"}
    )
    # The pump's line leaks 4 L/min into the source's main while the pump is off.
    await set_fault(device, site_id=pump["site_id"], hardware_id="tank-1", leak_lpm=4)
    await feed_meters(device, api_url, admin, meter)

    [alert] = await wait_for(lambda: raised(api, "leak"), timeout_s=30)
    assert (alert["severity"], alert["subject_type"]) == ("critical", "water_source")
    assert alert["subject_id"] == source["id"]
    halted = (await api.get(f"/v1/water-sources/{source['id']}")).json()
    assert halted["halted_at"] is not None
    assert halted["leak_flow_lpm"] == 4
    assert_problem(await activate(api, {}, pump["id"], 5), 409, "source_halted")
    # In truth: the water flowed while the device was off, and it never ran.
    assert await runs(device, "tank-1", site_id=pump["site_id"]) == []

    # Fixed: the meter reads 0 again (a last reading), then an operator resets the source.
    await set_fault(device, site_id=pump["site_id"], hardware_id="tank-1")

    async def dry() -> bool:
        [feed] = (await device.get("/flow/feeds")).json()["feeds"]
        return [m["last_value"] for m in feed["meters"]] == [0]

    await wait_for(dry)
    reset = await api.post(f"/v1/water-sources/{source['id']}/reset")
    assert reset.status_code == 200, reset.text
    asked = await activate(api, {}, pump["id"], 2)
    assert asked.status_code == 202, asked.text
    await wait_for(lambda: runs(device, "tank-1", site_id=pump["site_id"]))
