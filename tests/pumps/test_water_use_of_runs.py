"""A run's end reaches the water-use rollup whichever job ends it: the pump jobs called
in-process against the real simulator, the litres judged from the simulator's truth."""

import asyncio

import httpx

from irrigation.common.worker_context import WorkerContext
from irrigation.pumps import jobs
from irrigation.wateruse import rollup
from tests.support.factories import activate, make_pump
from tests.support.polling import wait_for
from tests.support.simulator import runs, seconds_on

Ctx = dict[str, WorkerContext]


async def _litres_of(client: httpx.AsyncClient, admin: dict[str, str], pump_id: str) -> float:
    answer = await client.get(f"/v1/pumps/{pump_id}/water-use", headers=admin)
    assert answer.status_code == 200, answer.text
    litres: float = answer.json()["estimated_litres"]
    return litres


async def test_completed_and_aborted_runs_are_accounted_from_the_devices_runtime(
    client: httpx.AsyncClient, admin: dict[str, str], job_ctx: Ctx, device: httpx.AsyncClient
) -> None:
    jc = job_ctx["irrigation"]
    pump = await make_pump(client, admin, "water-1", nominal_flow_lpm=120, cooldown_s=1)
    # One run to its deadline, one stopped by the operator while it runs.
    first = (await activate(client, admin, pump["id"], 1)).json()
    assert await jobs.start_activation(job_ctx, first["id"]) == "running"
    await asyncio.sleep(1.2)
    assert await jobs.stop_activation(job_ctx, first["id"], "deadline") == "completed"

    answers: list[httpx.Response] = []

    async def rested() -> bool:
        answers.append(await activate(client, admin, pump["id"], 5))
        return answers[-1].status_code == 202

    await wait_for(rested, timeout_s=5)
    second = answers[-1].json()
    assert await jobs.start_activation(job_ctx, second["id"]) == "running"
    await asyncio.sleep(0.5)
    assert await jobs.stop_activation(job_ctx, second["id"], "manual") == "aborted"
    # A request stopped while queued never ran: no water, no mark.
    await wait_for(rested, timeout_s=5)
    third = answers[-1].json()
    stopped = await client.post(f"/v1/pumps/{pump['id']}/stop", headers=admin)
    assert stopped.status_code == 200, stopped.text
    assert (await client.get(f"/v1/activations/{third['id']}", headers=admin)).json()[
        "status"
    ] == "aborted"
    # Nothing counted until the rollup has run.
    assert await _litres_of(client, admin, pump["id"]) == 0.0

    async with jc.sessions() as session:
        assert await rollup.roll_up(session, jc.settings) == 2
    truth = await runs(device, "water-1")
    assert len(truth) == 2
    on_s = sum(seconds_on(run) for run in truth)
    # 120 L/min is 2 L/s. The service counts from the start's confirmation (a little after
    # the device started) to the stop the device reported: never more than ran, and less
    # by at most the confirmations' latency.
    litres = await _litres_of(client, admin, pump["id"])
    assert 2 * (on_s - 2 * 0.5) <= litres <= 2 * on_s + 0.01, (litres, on_s)
