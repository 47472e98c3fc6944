"""The pumps' live events, read from the site's stream as a client would get them: one
`activation` event per transition, in order, and a `pump` event for every change of a
pump's status, fault, cooldown or active run; nothing for a refused or rolled-back attempt,
nothing in another site's stream. The API in-process, the worker's jobs called as arq calls
them, against the real simulator."""

from dataclasses import replace
from typing import Any

import httpx
import redis.asyncio as aioredis

from irrigation.common.worker_context import WorkerContext
from irrigation.fleet.schemas import PumpOut
from irrigation.pumps import jobs
from irrigation.pumps.schemas import ActivationOut
from irrigation.settings import Settings
from tests.support.factories import activate, make_pump
from tests.support.feed import events
from tests.support.simulator import set_fault

Ctx = dict[str, WorkerContext]
ACTIVATION_FIELDS = set(ActivationOut.model_fields) | {"zone_id", "cause"}
PUMP_FIELDS = set(PumpOut.model_fields)


def summary(found: list[dict[str, Any]]) -> list[tuple[str, str, str | None]]:
    """(type, status, cause) of each event: what a dashboard would show, in order."""
    return [(e["type"], e["data"]["status"], e["data"].get("cause")) for e in found]


def check_shapes(found: list[dict[str, Any]], pump: dict[str, Any]) -> None:
    for e in found:
        assert e["site_id"] == pump["site_id"]
        assert e["data"]["zone_id"] == pump["zone_id"]
        expected = ACTIVATION_FIELDS if e["type"] == "activation" else PUMP_FIELDS
        assert set(e["data"]) == expected, e


async def test_an_activations_life_is_one_event_per_transition_in_order(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    other_admin: dict[str, str],
    job_ctx: Ctx,
    redis: aioredis.Redis,
    settings: Settings,
) -> None:
    pump = await make_pump(client, admin, cooldown_s=1)
    elsewhere = await make_pump(client, other_admin, pump["hardware_id"])
    run = (await activate(client, admin, pump["id"], 1)).json()
    assert await jobs.start_activation(job_ctx, run["id"]) == "running"
    assert await jobs.stop_activation(job_ctx, run["id"], "deadline") == "completed"

    found = await events(redis, settings.redis_namespace, pump["site_id"])
    assert summary(found) == [
        ("activation", "queued", "requested"),
        ("pump", "running", None),
        ("activation", "starting", "worker"),
        ("activation", "running", "device_started"),
        ("activation", "completed", "deadline"),
        ("pump", "cooldown", None),
    ]
    check_shapes(found, pump)
    activations = [e["data"] for e in found if e["type"] == "activation"]
    assert {a["id"] for a in activations} == {run["id"]}
    assert activations[0] | {"zone_id": 0, "cause": 0} == run | {"zone_id": 0, "cause": 0}
    assert activations[2]["started_at"] is not None
    # The last event is the activation as the API now shows it.
    shown = (await client.get(f"/v1/activations/{run['id']}", headers=admin)).json()
    assert {k: v for k, v in activations[-1].items() if k not in ("zone_id", "cause")} == shown
    taken, rested = (e["data"] for e in found if e["type"] == "pump")
    assert taken["active_activation_id"] == run["id"]
    assert rested["active_activation_id"] is None
    assert rested["cooldown_until"] is not None
    now = (await client.get(f"/v1/pumps/{pump['id']}", headers=admin)).json()
    assert rested | {"status": None} == now | {"status": None}  # status moves with time

    assert await events(redis, settings.redis_namespace, elsewhere["site_id"]) == []


async def test_a_refused_start_and_a_rejected_edit_emit_nothing(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    job_ctx: Ctx,
    redis: aioredis.Redis,
    settings: Settings,
) -> None:
    pump = await make_pump(client, admin, cooldown_s=1)
    run = (await activate(client, admin, pump["id"], 5)).json()
    site = pump["site_id"]
    before = await events(redis, settings.redis_namespace, site)
    assert summary(before) == [("activation", "queued", "requested"), ("pump", "running", None)]

    busy = await activate(client, admin, pump["id"], 5)
    assert busy.status_code == 409, busy.text
    stale = await client.patch(
        f"/v1/pumps/{pump['id']}", json={"version": 99, "enabled": False}, headers=admin
    )
    assert stale.status_code == 409, stale.text
    renamed = await client.patch(
        f"/v1/pumps/{pump['id']}", json={"version": pump["version"], "name": "x"}, headers=admin
    )
    assert renamed.status_code == 200, renamed.text  # a pump's event is not about its name
    assert await events(redis, settings.redis_namespace, site) == before

    # A queued run stopped by an operator: aborted, and the pump free again at once.
    stopped = await client.post(f"/v1/pumps/{pump['id']}/stop", headers=admin)
    assert stopped.status_code == 200, stopped.text
    # The start job then finds nothing to do, and says so to nobody.
    assert await jobs.start_activation(job_ctx, run["id"]) == "skipped: aborted"
    found = await events(redis, settings.redis_namespace, site)
    assert summary(found[2:]) == [("activation", "aborted", "operator"), ("pump", "idle", None)]
    check_shapes(found, pump)


async def test_a_stop_of_a_running_run_is_requested_then_recorded(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    job_ctx: Ctx,
    redis: aioredis.Redis,
    settings: Settings,
) -> None:
    pump = await make_pump(client, admin, cooldown_s=1)
    run = (await activate(client, admin, pump["id"], 20)).json()
    assert await jobs.start_activation(job_ctx, run["id"]) == "running"
    stopped = await client.post(f"/v1/pumps/{pump['id']}/stop", headers=admin)
    assert stopped.status_code == 200, stopped.text
    assert await jobs.stop_activation(job_ctx, run["id"], "operator") == "aborted"

    found = await events(redis, settings.redis_namespace, pump["site_id"])
    assert summary(found)[4:] == [
        ("activation", "running", "stop_requested"),
        ("activation", "aborted", "operator"),
        ("pump", "cooldown", None),
    ]
    check_shapes(found, pump)
    assert found[4]["data"]["stop_requested_at"] is not None


async def test_a_latched_fault_its_reset_and_enabling_are_pump_events(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    job_ctx: Ctx,
    device: httpx.AsyncClient,
    redis: aioredis.Redis,
    settings: Settings,
) -> None:
    pump = await make_pump(client, admin, cooldown_s=1)
    site = pump["site_id"]
    await set_fault(device, site_id=site, hardware_id=pump["hardware_id"], stuck_off=True)
    impatient = settings.model_copy(update={"confirm_timeout_s": 0.3})
    ctx = {"irrigation": replace(job_ctx["irrigation"], settings=impatient)}
    run = (await activate(client, admin, pump["id"], 2)).json()
    assert await jobs.start_activation(ctx, run["id"]) == "not_confirmed"

    reset = f"/v1/pumps/{pump['id']}/reset"
    assert (await client.post(reset, headers=admin)).status_code == 200
    assert (await client.post(reset, headers=admin)).status_code == 200  # no fault: no change
    path = f"/v1/pumps/{pump['id']}"
    off = await client.patch(
        path, json={"version": pump["version"], "enabled": False}, headers=admin
    )
    assert off.status_code == 200, off.text
    on = await client.patch(
        path, json={"version": off.json()["version"], "enabled": True}, headers=admin
    )
    assert on.status_code == 200, on.text

    found = await events(redis, settings.redis_namespace, site)
    pumps = [e["data"] for e in found if e["type"] == "pump"]
    assert summary(found)[:4] == [
        ("activation", "queued", "requested"),
        ("pump", "running", None),
        ("activation", "starting", "worker"),
        ("activation", "failed", "not_confirmed"),
    ]
    assert found[3]["data"]["error"] == "not_confirmed"
    latched = pumps[1]
    assert latched["status"] == "fault"
    assert latched["fault"].startswith("not_confirmed:")
    assert latched["active_activation_id"] is None
    assert latched["cooldown_until"] is not None
    cleared, disabled, enabled = pumps[2:]
    assert (cleared["fault"], cleared["fault_at"]) == (None, None)
    assert (disabled["status"], disabled["enabled"]) == ("disabled", False)
    assert enabled["enabled"] is True
    assert len(pumps) == 5
    check_shapes(found, pump)
