"""A water source's flow budget at the locked gate: a run is admitted only while the
nominal flows of the source's active runs plus its own fit under `max_flow_lpm`; the
refusal is `capacity` naming `flow`. A storm of concurrent requests never overdraws it,
in the database or in the simulator's truth."""

import asyncio
from typing import Any

import asyncpg
import httpx

from irrigation.common.worker_context import WorkerContext
from irrigation.pumps import jobs
from irrigation.stack import plain_url
from tests.support.factories import activate, make_pump, make_water_source, make_zone
from tests.support.problems import assert_problem
from tests.support.simulator import most_drawn_at_once, runs

Ctx = dict[str, WorkerContext]


async def pumps_on(
    client: httpx.AsyncClient, admin: dict[str, str], source: dict[str, Any], *flows: float | None
) -> list[dict[str, Any]]:
    zone = await make_zone(client, admin)
    return [
        await make_pump(
            client,
            admin,
            zone_id=zone["id"],
            water_source_id=source["id"],
            nominal_flow_lpm=flow,
            max_runtime_s=30,
        )
        for flow in flows
    ]


async def test_a_run_that_would_overdraw_the_source_is_refused_as_capacity_naming_flow(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    source = await make_water_source(client, admin, max_concurrent_pumps=5, max_flow_lpm=100)
    first, second, small = await pumps_on(client, admin, source, 60, 60, 40)
    assert (await activate(client, admin, first["id"], 5)).status_code == 202
    refused = await activate(client, admin, second["id"], 5)
    problem = assert_problem(refused, 409, "capacity")
    assert problem["limit"] == "flow"
    assert problem["water_source_id"] == source["id"]
    assert problem["max_flow_lpm"] == 100
    assert problem["running_flow_lpm"] == 60
    assert problem["requested_flow_lpm"] == 60
    assert "60 of its 100 L/min" in problem["detail"]
    # 60 + 40 is exactly the budget: it fits.
    assert (await activate(client, admin, small["id"], 5)).status_code == 202


async def test_the_pump_count_is_still_its_own_limit_and_says_so(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    source = await make_water_source(client, admin, max_concurrent_pumps=1, max_flow_lpm=100)
    first, second = await pumps_on(client, admin, source, 10, 10)
    assert (await activate(client, admin, first["id"], 5)).status_code == 202
    problem = assert_problem(await activate(client, admin, second["id"], 5), 409, "capacity")
    assert problem["limit"] == "pumps"
    assert problem["max_concurrent_pumps"] == 1


async def test_flows_add_up_without_float_error(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    source = await make_water_source(client, admin, max_concurrent_pumps=5, max_flow_lpm=0.3)
    pumps = await pumps_on(client, admin, source, 0.1, 0.2, 0.1)
    codes = [(await activate(client, admin, p["id"], 5)).status_code for p in pumps]
    assert codes == [202, 202, 409]


async def test_a_pump_of_unknown_flow_counts_as_the_whole_budget(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    source = await make_water_source(client, admin, max_concurrent_pumps=5, max_flow_lpm=100)
    unknown, small = await pumps_on(client, admin, source, None, 1)
    assert (await activate(client, admin, small["id"], 5)).status_code == 202
    problem = assert_problem(await activate(client, admin, unknown["id"], 5), 409, "capacity")
    assert problem["requested_flow_lpm"] == 100
    assert "no nominal_flow_lpm" in problem["detail"]
    assert (await client.post(f"/v1/pumps/{small['id']}/stop", headers=admin)).status_code == 200
    assert (await activate(client, admin, unknown["id"], 5)).status_code == 202
    # It runs alone: nothing else fits beside it.
    assert_problem(await activate(client, admin, small["id"], 5), 409, "capacity")


async def test_without_a_flow_limit_flows_are_not_counted(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    source = await make_water_source(client, admin, max_concurrent_pumps=3)
    pumps = await pumps_on(client, admin, source, 900, 900, None)
    codes = [(await activate(client, admin, p["id"], 5)).status_code for p in pumps]
    assert codes == [202, 202, 202]


async def test_a_pump_that_alone_draws_more_than_its_source_gives_is_refused_for_good(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    source = await make_water_source(client, admin, max_flow_lpm=50)
    (pump,) = await pumps_on(client, admin, source, 80)
    problem = assert_problem(
        await activate(client, admin, pump["id"], 5), 409, "flow_exceeds_source"
    )
    assert problem["max_flow_lpm"] == 50
    assert problem["requested_flow_lpm"] == 80
    # Queued, it is skipped at once (waiting would not help), with its reason.
    queued = await activate(client, admin, pump["id"], 5, queue="append")
    assert queued.status_code == 202, queued.text
    assert queued.json()["status"] == "skipped"
    assert queued.json()["last_reason"] == "invalid"


async def test_a_lowered_budget_applies_to_the_next_admission(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    source = await make_water_source(client, admin, max_concurrent_pumps=5, max_flow_lpm=100)
    first, second = await pumps_on(client, admin, source, 50, 50)
    assert (await activate(client, admin, first["id"], 5)).status_code == 202
    lowered = await client.patch(
        f"/v1/water-sources/{source['id']}", json={"version": 1, "max_flow_lpm": 80}, headers=admin
    )
    assert lowered.status_code == 200, lowered.text
    assert_problem(await activate(client, admin, second["id"], 5), 409, "capacity")


async def test_a_storm_of_requests_on_one_source_never_overdraws_it_in_the_database_or_in_truth(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    database_url: str,
    job_ctx: Ctx,
    device: httpx.AsyncClient,
) -> None:
    # 8 pumps drawing 250 L/min in all, on a source of 100 that would feed all 8 by count.
    flows = [10, 15, 20, 25, 30, 35, 55, 60]
    source = await make_water_source(client, admin, max_concurrent_pumps=8, max_flow_lpm=100)
    pumps = await pumps_on(client, admin, source, *flows)
    responses = await asyncio.gather(
        *(activate(client, admin, p["id"], 3) for p in pumps for _ in range(6))
    )
    assert {r.json()["code"] for r in responses if r.status_code == 409} <= {
        "capacity",
        "pump_busy",
    }
    admitted = [r.json() for r in responses if r.status_code == 202]
    flow_of = {p["hardware_id"]: float(f) for p, f in zip(pumps, flows, strict=True)}
    flow_by_pump = {p["id"]: float(f) for p, f in zip(pumps, flows, strict=True)}

    conn = await asyncpg.connect(plain_url(database_url))
    try:
        drawn = await conn.fetchval(
            "SELECT sum(p.nominal_flow_lpm) FROM pump_activations a JOIN pumps p "
            "ON p.id = a.pump_id WHERE a.water_source_id = $1::uuid "
            "AND a.status IN ('queued', 'starting', 'running')",
            source["id"],
        )
    finally:
        await conn.close()
    assert drawn == sum(flow_by_pump[a["pump_id"]] for a in admitted) <= 100
    # Not merely cautious: what is left of the budget fits none of the idle pumps.
    idle = [f for p, f in flow_by_pump.items() if p not in {a["pump_id"] for a in admitted}]
    assert all(drawn + f > 100 for f in idle)

    # The device's truth: every admitted run started, all at once, within the budget.
    # One job's batch starts them all; the others' jobs find their runs taken.
    started = await asyncio.gather(*(jobs.start_activation(job_ctx, a["id"]) for a in admitted))
    assert "running" in started
    assert set(started) <= {"running", "batched"}
    for a in admitted:
        shown = (await client.get(f"/v1/activations/{a['id']}", headers=admin)).json()
        assert shown["status"] == "running", shown
    truth = await runs(device, site_id=source["site_id"])
    assert len(truth) == len(admitted)
    peak, on = most_drawn_at_once(truth, flow_of)
    assert peak == drawn, on
