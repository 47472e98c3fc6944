"""The quotas of waiting run requests, per pump and per site: a person's queued request over
one is 409 naming it, a request that supersedes the waiting ones is never refused, racing
requests never overshoot, and a schedule or rule over it skips its run with a decision (the
schedule still moves on). No worker runs: an admitted activation holds its pump."""

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from irrigation.common import clock
from tests.automation.conftest import Engine, decisions, post_moisture, run_requests
from tests.support.factories import (
    activate,
    make_pump,
    make_rule,
    make_schedule,
    make_water_source,
    make_zone,
)
from tests.support.problems import assert_problem

QUOTAS = "/v1/sites/current/quotas"


async def set_quotas(client: httpx.AsyncClient, headers: dict[str, str], **values: int) -> None:
    response = await client.patch(QUOTAS, json=values, headers=headers)
    assert response.status_code == 200, response.text


async def busy_pump(client: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, Any]:
    """A pump on a source of its own, busy with an admitted run (no worker starts it)."""
    source = await make_water_source(client, headers, f"Well {uuid.uuid4().hex[:8]}")
    pump = await make_pump(client, headers, water_source_id=source["id"])
    first = await activate(client, headers, pump["id"], 5)
    assert first.status_code == 202, first.text
    return pump


async def queue_run(
    client: httpx.AsyncClient, headers: dict[str, str], pump_id: str, priority: str = "manual"
) -> httpx.Response:
    return await activate(client, headers, pump_id, 5, queue="append", priority=priority)


async def waiting(client: httpx.AsyncClient, headers: dict[str, str]) -> list[dict[str, Any]]:
    return await run_requests(client, headers, status="waiting")


async def test_one_more_waiting_request_for_a_pump_is_409_naming_the_pump_quota(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    await set_quotas(client, admin, waiting_run_requests_per_pump=2)
    pump, other = await busy_pump(client, admin), await busy_pump(client, admin)
    for _ in range(2):
        accepted = await queue_run(client, admin, pump["id"])
        assert accepted.status_code == 202, accepted.text
        assert accepted.json()["status"] == "waiting"

    refused = await queue_run(client, admin, pump["id"])
    problem = assert_problem(refused, 409, "quota_exceeded")
    assert (problem["quota"], problem["limit"]) == ("waiting_run_requests_per_pump", 2)
    assert pump["name"] in problem["detail"]
    # Another pump of the site still has room.
    assert (await queue_run(client, admin, other["id"])).status_code == 202
    assert len(await waiting(client, admin)) == 3


async def test_one_more_waiting_request_in_the_site_is_409_naming_the_site_quota(
    client: httpx.AsyncClient, admin: dict[str, str], other_admin: dict[str, str]
) -> None:
    await set_quotas(client, admin, waiting_run_requests_per_site=3)
    pumps = [await busy_pump(client, admin) for _ in range(3)]
    for pump in pumps:
        assert (await queue_run(client, admin, pump["id"])).status_code == 202
    refused = await queue_run(client, admin, pumps[0]["id"])
    problem = assert_problem(refused, 409, "quota_exceeded")
    assert (problem["quota"], problem["limit"]) == ("waiting_run_requests_per_site", 3)

    # Another site's queue is not this site's.
    theirs = await busy_pump(client, other_admin)
    for _ in range(4):
        assert (await queue_run(client, other_admin, theirs["id"])).status_code == 202

    # A cancelled request makes room.
    first = (await waiting(client, admin))[0]
    cancelled = await client.delete(f"/v1/run-queue/{first['id']}", headers=admin)
    assert cancelled.status_code == 200, cancelled.text
    assert (await queue_run(client, admin, pumps[0]["id"])).status_code == 202


async def test_a_request_that_supersedes_the_waiting_ones_is_never_refused(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    await set_quotas(client, admin, waiting_run_requests_per_pump=2)
    pump = await busy_pump(client, admin)
    for _ in range(2):
        assert (await queue_run(client, admin, pump["id"], "emergency")).status_code == 202
    full = await queue_run(client, admin, pump["id"], "emergency")
    assert_problem(full, 409, "quota_exceeded")

    manual = await queue_run(client, admin, pump["id"], "manual")
    assert manual.status_code == 202, manual.text
    assert [r["id"] for r in await waiting(client, admin)] == [manual.json()["id"]]
    superseded = await run_requests(client, admin, status="superseded")
    assert len(superseded) == 2


async def test_racing_requests_never_overshoot_the_site_or_the_pump_quota(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    await set_quotas(client, admin, waiting_run_requests_per_site=3)
    pumps = [await busy_pump(client, admin) for _ in range(5)]
    answers = await asyncio.gather(
        *(queue_run(client, admin, pump["id"]) for pump in pumps for _ in range(2))
    )
    statuses = sorted(r.status_code for r in answers)
    assert statuses == [202] * 3 + [409] * 7, [r.text for r in answers]
    assert len(await waiting(client, admin)) == 3

    await set_quotas(
        client, admin, waiting_run_requests_per_site=100, waiting_run_requests_per_pump=4
    )
    one = await busy_pump(client, admin)
    answers = await asyncio.gather(*(queue_run(client, admin, one["id"]) for _ in range(10)))
    assert sorted(r.status_code for r in answers) == [202] * 4 + [409] * 6
    assert len([r for r in await waiting(client, admin) if r["pump_id"] == one["id"]]) == 4


async def test_a_schedule_over_the_quota_skips_its_run_and_moves_on(
    client: httpx.AsyncClient, admin: dict[str, str], engine: Engine
) -> None:
    clock.move(datetime(2026, 6, 1, 5, 59, 30, tzinfo=UTC) - clock.utcnow())
    await set_quotas(client, admin, waiting_run_requests_per_site=0)
    zone = await make_zone(client, admin, timezone="UTC")
    for _ in range(2):  # a zone-wide run: none of its pumps is queued
        await make_pump(client, admin, zone_id=zone["id"])
    schedule = await make_schedule(client, admin, zone["id"], start_times=["06:00"])
    clock.move(timedelta(seconds=60))

    assert await engine.fire() == 0
    assert await run_requests(client, admin) == []
    skipped = await decisions(client, admin, zone["id"], outcome="skipped")
    assert [d["reason"] for d in skipped] == ["quota_exceeded"]
    assert "waiting_run_requests_per_site" in skipped[0]["message"]
    shown = (await client.get(f"/v1/schedules/{schedule['id']}", headers=admin)).json()
    assert shown["next_run_at"] == "2026-06-02T06:00:00Z"
    assert shown["last_run_at"] == "2026-06-01T06:00:00Z"


async def test_a_rule_over_the_quota_skips_once_and_asks_again_when_there_is_room(
    client: httpx.AsyncClient, admin: dict[str, str], engine: Engine
) -> None:
    await set_quotas(client, admin, waiting_run_requests_per_pump=0)
    zone = await make_zone(client, admin, timezone="UTC")
    await make_pump(client, admin, zone_id=zone["id"])
    sensor = await client.post(
        "/v1/sensors",
        json={"zone_id": zone["id"], "name": "m", "kind": "soil_moisture", "unit": "%"},
        headers=admin,
    )
    assert sensor.status_code == 201, sensor.text
    await make_rule(client, admin, zone["id"], window_s=60)
    for _ in range(3):
        clock.move(timedelta(seconds=10))
        await post_moisture(client, admin, sensor.json()["id"], [10], end=clock.utcnow())
        assert await engine.evaluate() == 0
    skipped = await decisions(client, admin, zone["id"], outcome="skipped")
    assert [d["reason"] for d in skipped] == ["quota_exceeded"], "logged once"
    assert await run_requests(client, admin) == []

    await set_quotas(client, admin, waiting_run_requests_per_pump=1)
    assert await engine.evaluate() == 1
    assert [r["status"] for r in await run_requests(client, admin)] == ["started"]
