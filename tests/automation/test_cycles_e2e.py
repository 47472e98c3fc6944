"""End to end, judged from the simulator's truth: a real API and a real worker water a
lawn whose 30-minute watering has a 5-minute cycle and a 10-minute soak, with another
zone on the same single-pump water source. Time is scaled a minute to a second (30 s, 5 s,
10 s; cooldown 1 s, so the soak is what separates the cycles): six cycles, every gap at
least the soak, each cycle at most the cycle, and the other zone's pump inside a gap."""

from datetime import datetime
from itertools import pairwise
from typing import Any

import httpx
import pytest

from tests.automation.conftest import post_moisture
from tests.support.polling import wait_for
from tests.support.processes import StartProcess
from tests.support.simulator import runs, seconds_on

# Real API and worker processes: left out of `make test-quick`.
# The heaviest, most timing-sensitive end-to-end tests: one xdist group, so `make test`'s
# parallel slow phase (`--dist loadgroup`) runs them one after another, never side by side.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("heavy")]

WATERING_S, CYCLE_S, SOAK_S = 30, 5, 10
# How much longer than commanded the device's truth may show a run (as the pump tests).
RUN_TOLERANCE_S = 0.25


async def zone_on(
    api: httpx.AsyncClient, name: str, source_id: str, duration_s: int, **zone: Any
) -> dict[str, Any]:
    made = await api.post("/v1/zones", json={"name": name, "timezone": "UTC", **zone})
    assert made.status_code == 201, made.text
    zone_id = made.json()["id"]
    pump = await api.post(
        "/v1/pumps",
        json={
            "zone_id": zone_id,
            "water_source_id": source_id,
            "name": name,
            "hardware_id": f"hw-{name}",
            # Longer than the cycle: the cycle, not the pump's cap, splits the watering.
            "max_runtime_s": 2 * CYCLE_S,
            "cooldown_s": 1,
        },
    )
    assert pump.status_code == 201, pump.text
    sensor = await api.post(
        "/v1/sensors",
        json={"zone_id": zone_id, "name": name, "kind": "soil_moisture", "unit": "%"},
    )
    assert sensor.status_code == 201, sensor.text
    rule = await api.post(
        "/v1/threshold-rules",
        json={
            "zone_id": zone_id,
            "start_below": 30,
            "stop_above": 45,
            "window_s": 60,
            "duration_s": duration_s,
        },
    )
    assert rule.status_code == 201, rule.text
    return {"zone": made.json(), "pump": pump.json(), "sensor": sensor.json()}


def at(moment: str) -> datetime:
    return datetime.fromisoformat(moment)


async def test_a_30_minute_watering_runs_as_6_cycles_with_the_soak_kept_and_a_zone_between(
    api: httpx.AsyncClient,
    admin: dict[str, str],
    spawn: StartProcess,
    device: httpx.AsyncClient,
) -> None:
    spawn("worker")
    source = await api.post("/v1/water-sources", json={"name": "well", "max_concurrent_pumps": 1})
    assert source.status_code == 201, source.text
    source_id = source.json()["id"]
    lawn = await zone_on(api, "lawn", source_id, WATERING_S, max_cycle_s=CYCLE_S, min_soak_s=SOAK_S)
    bed = await zone_on(api, "bed", source_id, 3)
    site_id = lawn["zone"]["site_id"]

    async def lawn_runs() -> list[dict[str, Any]]:
        return await runs(device, "hw-lawn", site_id)

    await post_moisture(api, admin, lawn["sensor"]["id"], [12, 11, 10])
    await wait_for(lawn_runs, timeout_s=20)
    # The bed dries while the lawn waters: it runs in one of the lawn's soaks.
    await post_moisture(api, admin, bed["sensor"]["id"], [12, 11, 10])

    async def watered() -> list[dict[str, Any]] | None:
        found = await lawn_runs()
        return found if len(found) == 6 and all(r["stopped_at"] for r in found) else None

    # Six cycles of 5 s and five soaks of 10 s: 80 s at the least.
    cycles = await wait_for(watered, timeout_s=150, interval_s=0.5)

    for run in cycles:
        assert seconds_on(run) <= CYCLE_S + RUN_TOLERANCE_S, run
    gaps = [
        (at(later["started_at"]) - at(earlier["stopped_at"])).total_seconds()
        for earlier, later in pairwise(cycles)
    ]
    assert all(gap >= SOAK_S for gap in gaps), gaps

    (bed_run,) = await wait_for(lambda: runs(device, "hw-bed", site_id), timeout_s=20)
    assert bed_run["stopped_at"], bed_run
    inside = [
        k
        for k, (earlier, later) in enumerate(pairwise(cycles))
        if at(earlier["stopped_at"]) <= at(bed_run["started_at"])
        and at(bed_run["stopped_at"]) <= at(later["started_at"])
    ]
    assert len(inside) == 1, (bed_run, cycles)

    # One watering; each cycle a run request with its own `started` decision.
    requests = (await api.get("/v1/run-queue", params={"pump_id": lawn["pump"]["id"]})).json()
    cycles_asked = sorted(requests["items"], key=lambda r: r["cycle"])
    assert [(r["cycle"], r["cycles"], r["status"]) for r in cycles_asked] == [
        (k, 6, "started") for k in range(1, 7)
    ]
    assert sum(r["duration_s"] for r in cycles_asked) == WATERING_S
    (watering_id,) = {r["watering_id"] for r in cycles_asked}
    decided = (
        await api.get(
            f"/v1/zones/{lawn['zone']['id']}/decisions",
            params={"watering_id": watering_id, "outcome": "started", "limit": "50"},
        )
    ).json()["items"]
    assert sorted(d["run_request_id"] for d in decided) == sorted(r["id"] for r in cycles_asked)
    # The truth's runs are those cycles' activations, one each.
    commanded = {r["command_id"] for r in cycles}
    assert commanded == {d["activation_id"] for d in decided}
