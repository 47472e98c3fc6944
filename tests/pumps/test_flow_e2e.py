"""A water source's flow budget under waves of concurrent requests, with a real API and
real workers, judged from the simulator's truth: what the devices really ran at once never
draws more than the source gives."""

import asyncio
import time
from typing import Any

import httpx
import pytest

from tests.support.factories import activate, make_pump, make_water_source, make_zone
from tests.support.polling import wait_for
from tests.support.processes import StartProcess
from tests.support.simulator import most_drawn_at_once, runs

# Real API and worker processes: left out of `make test-quick`.
# The heaviest, most timing-sensitive end-to-end tests: one xdist group, so `make test`'s
# parallel slow phase (`--dist loadgroup`) runs them one after another, never side by side.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("heavy")]

TERMINAL = {"completed", "aborted", "failed", "expired", "rejected"}
FLOWS = [20, 30, 40, 50, 60, 70]


async def test_waves_of_requests_never_overdraw_the_source_in_truth(
    api: httpx.AsyncClient, spawn: StartProcess, device: httpx.AsyncClient
) -> None:
    spawn("worker", IRRIGATION_GATEWAY_TIMEOUT_S="3")
    spawn("worker", IRRIGATION_GATEWAY_TIMEOUT_S="3")
    # Enough pumps by count for all six: only the flow (270 L/min asked) limits them.
    source = await make_water_source(api, {}, "main", max_concurrent_pumps=6, max_flow_lpm=100)
    zone = await make_zone(api, {})
    pumps: list[dict[str, Any]] = [
        await make_pump(
            api,
            {},
            f"flow-{flow}",
            zone_id=zone["id"],
            water_source_id=source["id"],
            nominal_flow_lpm=flow,
            max_runtime_s=2,
            cooldown_s=1,
        )
        for flow in FLOWS
    ]
    answers: list[httpx.Response] = []
    until = time.monotonic() + 8
    wave = 0
    while time.monotonic() < until:
        answers += await asyncio.gather(
            *(
                activate(api, {}, p["id"], 1 + (wave + i) % 2)
                for i, p in enumerate(pumps)
                for _ in range(3)
            )
        )
        wave += 1
        await asyncio.sleep(0.2)
    refusals = {r.json()["code"] for r in answers if r.status_code == 409}
    assert refusals <= {"capacity", "pump_busy", "cooldown"}, refusals
    admitted = [r.json()["id"] for r in answers if r.status_code == 202]

    async def all_ended() -> bool:
        for activation_id in admitted:
            body = (await api.get(f"/v1/activations/{activation_id}")).json()
            if body["status"] not in TERMINAL:
                return False
        return True

    await wait_for(all_ended, timeout_s=60, interval_s=0.5)
    truth = await runs(device, site_id=source["site_id"])
    # Direct requests are first come, first served (the run queue is what packs them fairly):
    # whichever pumps got in, every run in truth is one that was admitted.
    assert {r["command_id"] for r in truth} <= set(admitted)
    assert len(truth) > len(FLOWS) // 2
    flow_of = {p["hardware_id"]: float(f) for p, f in zip(pumps, FLOWS, strict=True)}
    peak, on = most_drawn_at_once(truth, flow_of)
    assert peak <= 100, on
    assert peak > max(FLOWS), on  # runs did share the source: the budget was packed
