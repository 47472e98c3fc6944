"""The run queue packs a water source's flow budget by priority, then by fit: a run that
does not fit waits (`capacity`, naming `flow`), and a smaller one of the same priority
behind it may start ahead of it, at most IRRIGATION_RUNQUEUE_MAX_BYPASS times and never if
it could still be on at the waiting run's deadline. No worker runs here: an admitted
activation stays queued and holds its pump and its flow, which is all the queue needs."""

import asyncio
import uuid
from datetime import datetime, timedelta
from typing import Any

import httpx

from irrigation.automation.models import RunRequest
from irrigation.automation.runqueue import enqueue
from irrigation.common import clock
from irrigation.pumps.models import Priority
from tests.automation.conftest import Engine, decisions
from tests.support.factories import activate, make_pump, make_water_source, make_zone


async def flow_fleet(
    client: httpx.AsyncClient, admin: dict[str, str], max_flow: float, *flows: float
) -> list[dict[str, Any]]:
    """Pumps of the given flows, each in a zone of its own, on one source of `max_flow`
    that would feed them all by count."""
    source = await make_water_source(client, admin, max_concurrent_pumps=20, max_flow_lpm=max_flow)
    pumps = []
    for flow in flows:
        zone = await make_zone(client, admin)
        pump = await make_pump(
            client, admin, zone_id=zone["id"], water_source_id=source["id"], nominal_flow_lpm=flow
        )
        pumps.append(pump)
    return pumps


async def queued(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    pump: dict[str, Any],
    duration_s: int = 5,
    **extra: Any,
) -> dict[str, Any]:
    response = await activate(client, admin, pump["id"], duration_s, queue="append", **extra)
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


async def request(
    client: httpx.AsyncClient, admin: dict[str, str], request_id: str
) -> dict[str, Any]:
    body: dict[str, Any] = (await client.get(f"/v1/run-queue/{request_id}", headers=admin)).json()
    return body


async def stop(client: httpx.AsyncClient, admin: dict[str, str], *pumps: dict[str, Any]) -> None:
    for pump in pumps:
        response = await client.post(f"/v1/pumps/{pump['id']}/stop", headers=admin)
        assert response.status_code == 200, response.text


async def test_a_run_that_does_not_fit_the_flow_waits_saying_so_and_starts_once_it_fits(
    client: httpx.AsyncClient, admin: dict[str, str], engine: Engine
) -> None:
    running, waiting = await flow_fleet(client, admin, 100, 60, 60)
    assert (await activate(client, admin, running["id"], 5)).status_code == 202
    big = await queued(client, admin, waiting)
    assert big["status"] == "waiting"
    assert big["last_reason"] == "capacity"
    (deferred,) = await decisions(client, admin, waiting["zone_id"], outcome="deferred")
    assert deferred["reason"] == "capacity"
    assert deferred["detail"] == {
        "limit": "flow",
        "max_flow_lpm": 100,
        "running_flow_lpm": 60,
        "requested_flow_lpm": 60,
    }
    assert "60 of its 100 L/min in use" in deferred["message"]
    assert await engine.dispatch() == 0  # still no room; no second decision
    assert len(await decisions(client, admin, waiting["zone_id"], outcome="deferred")) == 1

    await stop(client, admin, running)
    assert await engine.dispatch() == 1
    assert (await request(client, admin, big["id"]))["status"] == "started"


async def test_a_smaller_run_that_fits_starts_ahead_of_a_larger_one_that_does_not(
    client: httpx.AsyncClient, admin: dict[str, str], engine: Engine
) -> None:
    running, large, small = await flow_fleet(client, admin, 100, 60, 60, 30)
    assert (await activate(client, admin, running["id"], 5)).status_code == 202
    big = await queued(client, admin, large)
    little = await queued(client, admin, small)  # younger, same priority, fits: 60 + 30
    assert little["status"] == "started"
    assert (await request(client, admin, big["id"]))["bypass_count"] == 1

    (started,) = await decisions(client, admin, small["zone_id"], outcome="started")
    assert started["detail"]["bypassed"] == [big["id"]]
    assert f"started ahead of {large['name']!r} (run request {big['id']})" in started["message"]
    # The one passed over still waits for flow, and says so once.
    waited = await decisions(client, admin, large["zone_id"], outcome="deferred")
    assert [(d["reason"], d["detail"]["limit"]) for d in waited] == [("capacity", "flow")]


async def test_a_lower_priority_never_starts_ahead_of_a_higher_one_waiting_for_flow(
    client: httpx.AsyncClient, admin: dict[str, str], engine: Engine
) -> None:
    running, large, small = await flow_fleet(client, admin, 100, 60, 60, 30)
    assert (await activate(client, admin, running["id"], 5)).status_code == 202
    big = await queued(client, admin, large)  # manual
    little = await queued(client, admin, small, priority="emergency")  # fits, but ranks lower
    assert little["status"] == "waiting"
    assert little["last_reason"] == "queued_behind"
    (behind,) = await decisions(client, admin, small["zone_id"], outcome="deferred")
    assert behind["detail"]["behind"] == big["id"]
    assert "of higher priority" in behind["message"]
    assert (await request(client, admin, big["id"]))["bypass_count"] == 0


async def test_after_the_most_bypasses_allowed_the_waiting_run_holds_the_source_until_it_fits(
    client: httpx.AsyncClient, admin: dict[str, str], engine: Engine
) -> None:
    assert engine.settings.runqueue_max_bypass == 3  # the default
    running, large, *smalls = await flow_fleet(client, admin, 100, 60, 80, 10, 10, 10, 10)
    assert (await activate(client, admin, running["id"], 5)).status_code == 202
    big = await queued(client, admin, large)
    little = [await queued(client, admin, p) for p in smalls]
    # Three pass it (60 + 3 x 10 = 90); the fourth would fit too, but waits behind it.
    assert [r["status"] for r in little] == ["started"] * 3 + ["waiting"]
    assert little[3]["last_reason"] == "queued_behind"
    assert (await request(client, admin, big["id"]))["bypass_count"] == 3
    (held,) = await decisions(client, admin, smalls[3]["zone_id"], outcome="deferred")
    assert held["detail"] == {"limit": "flow", "behind": big["id"], "behind_bypass_count": 3}
    assert "passed 3 times, the most allowed" in held["message"]
    assert await engine.dispatch() == 0  # nothing changes while nothing stops

    # 10 + 10 running: the large one fits now (100) and starts before the small one, which
    # then waits for flow (100 + 10).
    await stop(client, admin, running, smalls[0])
    assert await engine.dispatch() == 1
    assert (await request(client, admin, big["id"]))["status"] == "started"
    last = await request(client, admin, little[3]["id"])
    assert (last["status"], last["last_reason"]) == ("waiting", "capacity")
    assert last["bypass_count"] == 0


async def test_a_run_that_could_still_be_on_at_a_waiting_runs_deadline_does_not_pass_it(
    client: httpx.AsyncClient, admin: dict[str, str], engine: Engine
) -> None:
    running, large, long, short = await flow_fleet(client, admin, 100, 60, 60, 20, 20)
    assert (await activate(client, admin, running["id"], 5)).status_code == 202
    # It must start within 30 s; an admitted start may wait up to IRRIGATION_MAX_QUEUE_DELAY_S
    # (10 s) before it runs.
    deadline = clock.utcnow() + timedelta(seconds=30)
    big = await queued(client, admin, large, deadline=deadline.isoformat())
    longer = await queued(client, admin, long, 25)  # 10 + 25 s: past the deadline
    assert longer["status"] == "waiting"
    assert longer["last_reason"] == "queued_behind"
    (behind,) = await decisions(client, admin, long["zone_id"], outcome="deferred")
    assert behind["detail"]["behind"] == big["id"]
    assert "could still be on at its deadline" in behind["message"]
    shorter = await queued(client, admin, short, 5)  # over 15 s from now at the latest
    assert shorter["status"] == "started"
    assert (await request(client, admin, big["id"]))["bypass_count"] == 1


async def add_waiting(
    engine: Engine, pump: dict[str, Any], duration_s: int = 5, deadline: datetime | None = None
) -> uuid.UUID:
    """A person's queued request, queued without the dispatch that follows it in the API."""
    wish = enqueue.Wish(
        pump_id=uuid.UUID(pump["id"]),
        priority=Priority.manual,
        duration_s=duration_s,
        origin="test",
        deadline=deadline or clock.utcnow() + timedelta(hours=1),
        queue="append",
    )
    async with engine.sessions() as session, session.begin():
        added, _ = await enqueue.add(session, engine.settings, uuid.UUID(pump["site_id"]), wish)
    return added.id


async def waiting_state(engine: Engine, request_id: uuid.UUID) -> RunRequest:
    async with engine.sessions() as session, session.begin():
        found = await session.get(RunRequest, request_id)
    assert found is not None
    return found


async def test_concurrent_dispatchers_never_pass_a_waiting_run_more_often_than_allowed(
    client: httpx.AsyncClient, admin: dict[str, str], engine: Engine
) -> None:
    running, large, *smalls = await flow_fleet(client, admin, 100, 50, 60, *[5] * 8)
    assert (await activate(client, admin, running["id"], 5)).status_code == 202
    big = await add_waiting(engine, large)
    little = [await add_waiting(engine, p) for p in smalls]
    # Every small run fits (50 + 8 x 5 = 90): only the bound stops them.
    started = await asyncio.gather(*(engine.dispatch() for _ in range(8)))
    assert sum(started) == 3
    assert (await waiting_state(engine, big)).bypass_count == 3
    states = [(await waiting_state(engine, r)).status for r in little]
    assert states == ["started"] * 3 + ["waiting"] * 5


async def test_with_no_bypass_allowed_the_queue_is_strictly_first_come(
    client: httpx.AsyncClient, admin: dict[str, str], engine: Engine
) -> None:
    engine.settings = engine.settings.model_copy(update={"runqueue_max_bypass": 0})
    running, large, small = await flow_fleet(client, admin, 100, 60, 60, 30)
    assert (await activate(client, admin, running["id"], 5)).status_code == 202
    big = await add_waiting(engine, large)
    little = await add_waiting(engine, small)
    assert await engine.dispatch() == 0
    assert (await waiting_state(engine, little)).last_reason == "queued_behind"
    assert (await waiting_state(engine, big)).last_reason == "capacity"
