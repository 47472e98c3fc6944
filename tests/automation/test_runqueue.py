"""The run queue: priority then age, supersede, deadlines, `front`/`replace`, cooldown and
capacity always hold. No worker runs here: an admitted activation stays queued and holds
its pump, which is all the queue needs to see."""

import asyncio
from datetime import timedelta
from typing import Any

import asyncpg
import httpx

from irrigation.common import clock
from irrigation.settings import Settings
from irrigation.stack import plain_url
from tests.automation.conftest import Engine, decisions, run_requests
from tests.support.factories import activate, make_pump


async def queued(
    client: httpx.AsyncClient, admin: dict[str, str], pump_id: str, mode: str, **extra: Any
) -> dict[str, Any]:
    response = await activate(client, admin, pump_id, 5, queue=mode, **extra)
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    assert body["kind"] == "run_request"
    assert response.headers["location"] == f"/v1/run-queue/{body['id']}"
    return body


async def stop(client: httpx.AsyncClient, admin: dict[str, str], pump_id: str) -> None:
    response = await client.post(f"/v1/pumps/{pump_id}/stop", headers=admin)
    assert response.status_code == 200, response.text


async def status_of(client: httpx.AsyncClient, admin: dict[str, str], request_id: str) -> str:
    status: str = (await client.get(f"/v1/run-queue/{request_id}", headers=admin)).json()["status"]
    return status


async def test_waiting_requests_start_in_priority_order_then_age_front_first(
    client: httpx.AsyncClient, admin: dict[str, str], engine: Engine
) -> None:
    pump = await make_pump(client, admin, "hw-1")
    first = await activate(client, admin, pump["id"], 5)
    assert first.status_code == 202
    a = await queued(client, admin, pump["id"], "append", reason="a")
    b = await queued(client, admin, pump["id"], "append", reason="b")
    c = await queued(client, admin, pump["id"], "front", reason="c")
    assert {a["status"], b["status"], c["status"]} == {"waiting"}

    order = []
    for _ in range(3):
        await stop(client, admin, pump["id"])  # a queued activation is aborted: no cooldown
        assert await engine.dispatch() == 1
        started = list(await run_requests(client, admin, status="started"))
        order += [r["reason"] for r in started if r["reason"] not in order]
    # `front` first, then age.
    assert order == ["c", "a", "b"]


async def test_on_a_full_water_source_the_higher_priority_starts_first_whatever_its_age(
    client: httpx.AsyncClient, admin: dict[str, str], engine: Engine
) -> None:
    source = (
        await client.post(
            "/v1/water-sources", json={"name": "main", "max_concurrent_pumps": 1}, headers=admin
        )
    ).json()
    pumps = [
        await make_pump(client, admin, f"hw-{i}", water_source_id=source["id"]) for i in range(3)
    ]
    await activate(client, admin, pumps[0]["id"], 5)
    older = await queued(client, admin, pumps[1]["id"], "append", priority="emergency")
    newer = await queued(client, admin, pumps[2]["id"], "append")
    assert older["last_reason"] == newer["last_reason"] == "capacity"
    await stop(client, admin, pumps[0]["id"])
    assert await engine.dispatch() == 1
    assert await status_of(client, admin, newer["id"]) == "started"
    assert await status_of(client, admin, older["id"]) == "waiting"


async def test_a_higher_priority_supersedes_a_lower_one_waiting_for_the_same_pump(
    client: httpx.AsyncClient, admin: dict[str, str], engine: Engine
) -> None:
    pump = await make_pump(client, admin, "hw-1")
    await activate(client, admin, pump["id"], 5)
    low = await queued(client, admin, pump["id"], "append", priority="emergency")
    high = await queued(client, admin, pump["id"], "append")
    assert await status_of(client, admin, low["id"]) == "superseded"
    assert await status_of(client, admin, high["id"]) == "waiting"
    superseded = await decisions(client, admin, pump["zone_id"], outcome="superseded")
    assert [(d["run_request_id"], d["reason"]) for d in superseded] == [(low["id"], "superseded")]
    assert superseded[0]["detail"]["superseded_by"] == high["id"]
    # A lower priority arriving later waits behind, it does not displace.
    later = await queued(client, admin, pump["id"], "append", priority="emergency")
    assert await status_of(client, admin, later["id"]) == "waiting"
    assert await status_of(client, admin, high["id"]) == "waiting"


async def test_a_request_still_waiting_at_its_deadline_is_skipped_with_a_decision(
    client: httpx.AsyncClient, admin: dict[str, str], engine: Engine
) -> None:
    pump = await make_pump(client, admin, "hw-1")
    await activate(client, admin, pump["id"], 5)
    deadline = clock.utcnow() + timedelta(minutes=5)
    waiting = await queued(client, admin, pump["id"], "append", deadline=deadline.isoformat())
    assert await engine.dispatch() == 0
    assert await status_of(client, admin, waiting["id"]) == "waiting"
    clock.move(timedelta(minutes=6))
    await stop(client, admin, pump["id"])  # free now, but too late
    assert await engine.dispatch() == 0
    assert await status_of(client, admin, waiting["id"]) == "skipped"
    skipped = await decisions(client, admin, pump["zone_id"], outcome="skipped")
    assert [d["reason"] for d in skipped] == ["deadline_passed"]
    assert "pump_busy" in skipped[0]["message"]


async def test_no_queue_option_starts_a_pump_inside_its_cooldown(
    client: httpx.AsyncClient, admin: dict[str, str], engine: Engine, settings: Settings
) -> None:
    pump = await make_pump(client, admin, "hw-1", cooldown_s=600)
    conn = await asyncpg.connect(plain_url(settings.effective_database_url))
    try:
        await conn.execute(
            "UPDATE pumps SET cooldown_until = now() + interval '10 minutes' WHERE id = $1",
            pump["id"],
        )
    finally:
        await conn.close()
    refused = await activate(client, admin, pump["id"], 5)
    assert refused.status_code == 409
    assert refused.json()["code"] == "cooldown"
    for mode in ("append", "front", "replace"):
        request = await queued(client, admin, pump["id"], mode)
        assert request["status"] == "waiting", mode
        assert request["last_reason"] == "cooldown"
    assert await engine.dispatch() == 0
    clock.move(timedelta(minutes=9))
    assert await engine.dispatch() == 0
    clock.move(timedelta(minutes=2))
    assert await engine.dispatch() == 1  # one run; the other two wait for the next cooldown
    assert len(await run_requests(client, admin, status="started")) == 1


async def test_capacity_one_source_feeds_two_zones_one_after_the_other(
    client: httpx.AsyncClient, admin: dict[str, str], engine: Engine
) -> None:
    source = (
        await client.post(
            "/v1/water-sources", json={"name": "main", "max_concurrent_pumps": 1}, headers=admin
        )
    ).json()
    p1 = await make_pump(client, admin, "hw-1", water_source_id=source["id"])
    p2 = await make_pump(client, admin, "hw-2", water_source_id=source["id"])
    r1 = await queued(client, admin, p1["id"], "append")
    r2 = await queued(client, admin, p2["id"], "append")
    assert r1["status"] == "started"
    assert r2["status"] == "waiting"
    assert r2["last_reason"] == "capacity"
    assert await engine.dispatch() == 0
    await stop(client, admin, p1["id"])
    assert await engine.dispatch() == 1
    assert await status_of(client, admin, r2["id"]) == "started"
    deferred = await decisions(client, admin, p2["zone_id"], outcome="deferred")
    assert [d["reason"] for d in deferred] == ["capacity"]


async def test_replace_stops_the_other_runs_on_the_water_source_and_starts(
    client: httpx.AsyncClient, admin: dict[str, str], engine: Engine
) -> None:
    source = (
        await client.post(
            "/v1/water-sources", json={"name": "main", "max_concurrent_pumps": 1}, headers=admin
        )
    ).json()
    p1 = await make_pump(client, admin, "hw-1", water_source_id=source["id"])
    p2 = await make_pump(client, admin, "hw-2", water_source_id=source["id"])
    running = (await activate(client, admin, p1["id"], 5)).json()
    replacing = await queued(client, admin, p2["id"], "replace")
    # The queued activation of p1 is aborted at once (a running one would be stopped by
    # the worker first), so the replacing request starts within the same call.
    assert replacing["status"] == "started"
    stopped = (await client.get(f"/v1/activations/{running['id']}", headers=admin)).json()
    assert stopped["status"] == "aborted"
    assert stopped["stop_cause"] == "replaced"


async def test_a_storm_of_dispatchers_and_queued_requests_starts_each_request_once(
    client: httpx.AsyncClient, admin: dict[str, str], engine: Engine, settings: Settings
) -> None:
    source = (
        await client.post(
            "/v1/water-sources", json={"name": "main", "max_concurrent_pumps": 2}, headers=admin
        )
    ).json()
    pumps = [
        await make_pump(client, admin, f"hw-{i}", water_source_id=source["id"]) for i in range(4)
    ]
    requests = await asyncio.gather(
        *(queued(client, admin, p["id"], "append") for p in pumps for _ in range(3)),
        *(engine.dispatch() for _ in range(10)),
    )
    del requests
    await asyncio.gather(*(engine.dispatch() for _ in range(10)))
    conn = await asyncpg.connect(plain_url(settings.effective_database_url))
    try:
        active = await conn.fetch(
            "SELECT pump_id, count(*) AS n FROM pump_activations "
            "WHERE status IN ('queued', 'starting', 'running') GROUP BY pump_id"
        )
        started = await conn.fetch(
            "SELECT activation_id FROM run_requests WHERE status = 'started'"
        )
        total = await conn.fetchval("SELECT count(*) FROM pump_activations")
    finally:
        await conn.close()
    assert all(row["n"] == 1 for row in active)
    assert len(active) == 2  # the source feeds two pumps at a time, never more
    assert len(started) == total == 2  # every activation belongs to exactly one request
    assert len({row["activation_id"] for row in started}) == 2
