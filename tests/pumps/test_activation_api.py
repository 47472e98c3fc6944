"""The activation request path through the ASGI app (no worker): admission and refusals."""

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx

from irrigation.stack import plain_url
from tests.support.api import bearer
from tests.support.factories import MakeKey, activate, make_pump
from tests.support.servers import run_sql


async def test_accepted_request_is_queued_with_location_and_audit_trail(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    pump = await make_pump(client, admin, "hw-1")
    response = await activate(client, admin, pump["id"], 5, reason="dry corner")
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "queued"
    assert body["pump_id"] == pump["id"]
    assert body["priority"] == "manual"
    assert body["duration_s"] == 5
    assert body["reason"] == "dry corner"
    assert response.headers["location"] == f"/v1/activations/{body['id']}"

    fetched = await client.get(response.headers["location"], headers=admin)
    assert fetched.json() == body
    events = (await client.get(f"/v1/activations/{body['id']}/events", headers=admin)).json()
    assert [(e["status"], e["cause"]) for e in events["items"]] == [("queued", "requested")]

    shown = (await client.get(f"/v1/pumps/{pump['id']}", headers=admin)).json()
    assert shown["status"] == "running"
    assert shown["active_activation_id"] == body["id"]


async def test_second_request_is_refused_as_busy_naming_the_active_activation(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    pump = await make_pump(client, admin, "hw-1")
    first = (await activate(client, admin, pump["id"], 5)).json()
    second = await activate(client, admin, pump["id"], 5)
    assert second.status_code == 409
    assert second.headers["content-type"] == "application/problem+json"
    problem = second.json()
    assert problem["code"] == "pump_busy"
    assert problem["active_activation_id"] == first["id"]
    # The run (5 s) then the cooldown (900 s by default) must pass before a start can succeed.
    assert 900 <= int(second.headers["retry-after"]) <= 906


async def test_duration_above_max_runtime_is_422_naming_the_limit(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    pump = await make_pump(client, admin, "hw-1", max_runtime_s=10)
    response = await activate(client, admin, pump["id"], 11)
    assert response.status_code == 422
    problem = response.json()
    assert problem["code"] == "duration_exceeds_max_runtime"
    assert problem["max_runtime_s"] == 10
    assert "10" in problem["detail"]
    assert problem["errors"][0]["path"] == "body.duration_s"


async def test_disabled_pump_is_refused(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    pump = await make_pump(client, admin, "hw-1", enabled=False)
    response = await activate(client, admin, pump["id"])
    assert response.status_code == 409
    assert response.json()["code"] == "disabled"


async def test_pump_latched_in_fault_is_refused_until_reset(
    client: httpx.AsyncClient, admin: dict[str, str], database_url: str
) -> None:
    pump = await make_pump(client, admin, "hw-1")
    await run_sql(
        database_url,
        "UPDATE pumps SET fault = 'gateway: timeout', fault_at = now() WHERE id = $1::uuid",
        pump["id"],
    )
    refused = await activate(client, admin, pump["id"])
    assert refused.status_code == 409
    assert refused.json()["code"] == "fault"
    assert (await client.get(f"/v1/pumps/{pump['id']}", headers=admin)).json()["status"] == "fault"

    reset = await client.post(f"/v1/pumps/{pump['id']}/reset", headers=admin)
    assert reset.status_code == 200
    assert reset.json()["status"] == "idle"
    assert reset.json()["fault"] is None
    assert (await activate(client, admin, pump["id"])).status_code == 202


async def test_cooldown_is_refused_with_retry_after(
    client: httpx.AsyncClient, admin: dict[str, str], database_url: str
) -> None:
    pump = await make_pump(client, admin, "hw-1")
    until = datetime.now(UTC) + timedelta(seconds=120)
    await run_sql(
        database_url, "UPDATE pumps SET cooldown_until = $1 WHERE id = $2::uuid", until, pump["id"]
    )
    response = await activate(client, admin, pump["id"])
    assert response.status_code == 409
    problem = response.json()
    assert problem["code"] == "cooldown"
    assert 118 <= problem["retry_after_s"] <= 121
    assert response.headers["retry-after"] == str(problem["retry_after_s"])
    shown = (await client.get(f"/v1/pumps/{pump['id']}", headers=admin)).json()
    assert shown["status"] == "cooldown"


async def test_water_source_of_capacity_one_refuses_a_second_pump(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    source = await client.post(
        "/v1/water-sources", json={"name": "main line", "max_concurrent_pumps": 1}, headers=admin
    )
    a = await make_pump(client, admin, "hw-a", water_source_id=source.json()["id"])
    b = await make_pump(
        client, admin, "hw-b", zone_id=a["zone_id"], water_source_id=source.json()["id"]
    )
    assert (await activate(client, admin, a["id"])).status_code == 202
    refused = await activate(client, admin, b["id"])
    assert refused.status_code == 409
    assert refused.json()["code"] == "capacity"
    assert refused.json()["max_concurrent_pumps"] == 1


async def test_capacity_two_admits_two_pumps_and_refuses_the_third(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    source = await client.post(
        "/v1/water-sources", json={"name": "tank", "max_concurrent_pumps": 2}, headers=admin
    )
    sid = source.json()["id"]
    first = await make_pump(client, admin, "hw-1", water_source_id=sid)
    pumps = [first] + [
        await make_pump(client, admin, f"hw-{i}", zone_id=first["zone_id"], water_source_id=sid)
        for i in (2, 3)
    ]
    codes = [(await activate(client, admin, p["id"])).status_code for p in pumps]
    assert codes == [202, 202, 409]


async def test_concurrent_requests_on_a_shared_source_never_exceed_its_capacity(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    source = await client.post(
        "/v1/water-sources", json={"name": "tank", "max_concurrent_pumps": 2}, headers=admin
    )
    sid = source.json()["id"]
    first = await make_pump(client, admin, "hw-0", water_source_id=sid)
    pumps = [first] + [
        await make_pump(client, admin, f"hw-{i}", zone_id=first["zone_id"], water_source_id=sid)
        for i in range(1, 6)
    ]
    responses = await asyncio.gather(
        *(activate(client, admin, p["id"]) for p in pumps for _ in range(5))
    )
    codes = sorted(r.status_code for r in responses)
    assert codes.count(202) == 2
    assert {r.json()["code"] for r in responses if r.status_code == 409} <= {
        "capacity",
        "pump_busy",
    }


async def test_idempotency_key_replays_the_first_answer(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    pump = await make_pump(client, admin, "hw-1")
    first = await activate(client, admin, pump["id"], 3, idempotency_key="k-1")
    again = await activate(client, admin, pump["id"], 3, idempotency_key="k-1")
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    assert again.headers["location"] == first.headers["location"]
    history = (await client.get(f"/v1/pumps/{pump['id']}/activations", headers=admin)).json()
    assert len(history["items"]) == 1


async def test_idempotency_key_with_another_body_is_422(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    pump = await make_pump(client, admin, "hw-1")
    assert (await activate(client, admin, pump["id"], 3, idempotency_key="k-1")).status_code == 202
    other = await activate(client, admin, pump["id"], 4, idempotency_key="k-1")
    assert other.status_code == 422
    assert other.json()["code"] == "idempotency_key_reused"


async def test_idempotency_key_replays_a_refusal_too(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    pump = await make_pump(client, admin, "hw-1")
    assert (await activate(client, admin, pump["id"], 3)).status_code == 202
    refused = await activate(client, admin, pump["id"], 3, idempotency_key="k-2")
    await client.post(f"/v1/pumps/{pump['id']}/stop", headers=admin)
    replay = await activate(client, admin, pump["id"], 3, idempotency_key="k-2")
    assert refused.status_code == replay.status_code == 409
    assert replay.json() == refused.json()


async def test_concurrent_requests_with_one_idempotency_key_admit_one_run(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    pump = await make_pump(client, admin, "hw-1")
    responses = await asyncio.gather(
        *(activate(client, admin, pump["id"], 3, idempotency_key="same") for _ in range(20))
    )
    # Each answer is the one run, or 409 while the request that admits it is in flight.
    accepted = [r for r in responses if r.status_code == 202]
    assert accepted
    assert len({r.json()["id"] for r in accepted}) == 1
    for r in responses:
        if r.status_code != 202:
            assert r.status_code == 409, r.text
            assert r.json()["code"] == "idempotency_in_flight"
    history = (await client.get(f"/v1/pumps/{pump['id']}/activations", headers=admin)).json()
    assert len(history["items"]) == 1


async def test_automation_priorities_are_not_open_to_api_keys(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    pump = await make_pump(client, admin, "hw-1")
    for priority in ("scheduled", "threshold", "bogus"):
        response = await client.post(
            f"/v1/pumps/{pump['id']}/activations",
            json={"duration_s": 2, "priority": priority},
            headers=admin,
        )
        assert response.status_code == 422, priority
        assert response.json()["errors"][0]["path"] == "body.priority"
    emergency = await activate(client, admin, pump["id"], priority="emergency")
    assert emergency.status_code == 202
    assert emergency.json()["priority"] == "emergency"


async def test_stop_aborts_a_queued_run_and_frees_the_pump(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    pump = await make_pump(client, admin, "hw-1")
    run = (await activate(client, admin, pump["id"])).json()
    stop = await client.post(f"/v1/pumps/{pump['id']}/stop", headers=admin)
    assert stop.status_code == 200
    [stopped] = stop.json()["stopped"]
    assert stopped["id"] == run["id"]
    assert stopped["status"] == "aborted"
    assert stopped["stop_cause"] == "operator"
    # It never ran, so there is no cooldown to rest through.
    assert (await client.get(f"/v1/pumps/{pump['id']}", headers=admin)).json()["status"] == "idle"
    assert (await activate(client, admin, pump["id"])).status_code == 202
    again = await client.post(f"/v1/pumps/{pump['id']}/stop", headers=admin)
    assert again.status_code == 200
    nothing = await client.post(f"/v1/pumps/{pump['id']}/stop", headers=admin)
    assert nothing.json() == {"stopped": []}


async def test_stop_all_stops_every_active_run_of_the_site_only(
    client: httpx.AsyncClient, admin: dict[str, str], other_admin: dict[str, str]
) -> None:
    mine = [await make_pump(client, admin, f"hw-{i}") for i in range(3)]
    theirs = await make_pump(client, other_admin, "hw-b")
    for pump in mine:
        assert (await activate(client, admin, pump["id"])).status_code == 202
    assert (await activate(client, other_admin, theirs["id"])).status_code == 202

    response = await client.post("/v1/pumps/stop-all", headers=admin)
    assert response.status_code == 200
    assert len(response.json()["stopped"]) == 3
    for pump in mine:
        shown = (await client.get(f"/v1/pumps/{pump['id']}", headers=admin)).json()
        assert shown["active_activation_id"] is None
    other = (await client.get(f"/v1/pumps/{theirs['id']}", headers=other_admin)).json()
    assert other["status"] == "running"


async def test_activation_endpoints_are_scoped_to_the_site(
    client: httpx.AsyncClient, admin: dict[str, str], other_admin: dict[str, str]
) -> None:
    pump = await make_pump(client, admin, "hw-1")
    run = (await activate(client, admin, pump["id"])).json()
    for method, path in [
        ("GET", f"/v1/activations/{run['id']}"),
        ("GET", f"/v1/activations/{run['id']}/events"),
        ("GET", f"/v1/pumps/{pump['id']}/activations"),
        ("POST", f"/v1/pumps/{pump['id']}/activations"),
        ("POST", f"/v1/pumps/{pump['id']}/stop"),
        ("POST", f"/v1/pumps/{pump['id']}/reset"),
    ]:
        body = {"duration_s": 2} if path.endswith("activations") and method == "POST" else None
        response = await client.request(method, path, json=body, headers=other_admin)
        assert response.status_code == 404, (method, path, response.text)
        assert response.json()["code"] == "not_found"


async def test_read_key_cannot_activate(
    client: httpx.AsyncClient, admin: dict[str, str], make_key: MakeKey
) -> None:
    pump = await make_pump(client, admin, "hw-1")
    reader = bearer(await make_key("read"))
    response = await activate(client, reader, pump["id"])
    assert response.status_code == 403
    assert response.json()["code"] == "insufficient_scope"
    controller = bearer(await make_key("control"))
    assert (await activate(client, controller, pump["id"])).status_code == 202


async def test_a_stuck_lock_answers_503_not_a_hung_request(
    client: httpx.AsyncClient, admin: dict[str, str], database_url: str
) -> None:
    pump = await make_pump(client, admin, "hw-1")
    holder = await asyncpg.connect(plain_url(database_url))
    try:
        tx = holder.transaction()
        await tx.start()
        await holder.execute("SELECT 1 FROM pumps WHERE id = $1::uuid FOR UPDATE", pump["id"])
        started = asyncio.get_running_loop().time()
        response = await activate(client, admin, pump["id"])
        waited = asyncio.get_running_loop().time() - started
        await tx.rollback()
    finally:
        await holder.close()
    assert response.status_code == 503
    assert response.json()["code"] == "lock_timeout"
    assert response.headers["retry-after"] == "1"
    assert waited < 5


async def test_history_is_paginated_newest_first(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    pump = await make_pump(client, admin, "hw-1")
    ids = []
    for _ in range(5):
        ids.append((await activate(client, admin, pump["id"])).json()["id"])
        await client.post(f"/v1/pumps/{pump['id']}/stop", headers=admin)
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (
            await client.get(f"/v1/pumps/{pump['id']}/activations", params=params, headers=admin)
        ).json()
        seen += [a["id"] for a in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))


async def test_a_pump_whose_hardware_id_predates_the_address_pattern_is_refused_until_fixed(
    client: httpx.AsyncClient, admin: dict[str, str], database_url: str
) -> None:
    pump = await make_pump(client, admin, "hw-1")
    # What the migration reports and leaves alone: an id from before the pattern.
    await run_sql(
        database_url, "UPDATE pumps SET hardware_id = 'old:relay/1' WHERE id = $1::uuid", pump["id"]
    )
    refused = await activate(client, admin, pump["id"])
    assert refused.status_code == 409
    problem = refused.json()
    assert problem["code"] == "invalid_hardware_id"
    assert problem["hardware_id"] == "old:relay/1"
    assert "PATCH" in problem["detail"]
    shown = (await client.get(f"/v1/pumps/{pump['id']}", headers=admin)).json()
    assert shown["hardware_id"] == "old:relay/1"
    assert shown["active_activation_id"] is None

    fixed = await client.patch(
        f"/v1/pumps/{pump['id']}", json={"version": 1, "hardware_id": "relay-1"}, headers=admin
    )
    assert fixed.status_code == 200, fixed.text
    assert (await activate(client, admin, pump["id"])).status_code == 202
