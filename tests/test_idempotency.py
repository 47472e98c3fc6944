"""Idempotency keys, one matrix for every idempotent route (a run now, a queued run, a batch
of readings): a retry replays the first answer, the key with another body is 422, and the
key while the first request is still in flight is 409 with `Retry-After`. The in-flight case
is real: a second database connection holds a row lock the first request needs."""

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest

from irrigation.settings import Settings
from irrigation.stack import plain_url
from tests.support.api import Headers
from tests.support.factories import activate, make_pump, make_sensor, make_zone
from tests.support.problems import assert_problem


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """A request waits on the held row lock for as long as a test holds it."""
    return settings.model_copy(update={"lock_timeout_ms": 30_000})


@dataclass(frozen=True)
class Target:
    id: str  # the pump or the sensor
    ts: str  # the readings' time


@dataclass(frozen=True)
class Route:
    name: str
    prepare: Callable[[httpx.AsyncClient, Headers], Awaitable[Target]]
    # The request with this key; `other` changes its body.
    send: Callable[[httpx.AsyncClient, Headers, Target, str, bool], Awaitable[httpx.Response]]
    accepted: int
    # A row the first request locks before it commits.
    lock: str
    # What the route did, as a client sees it: how many runs, run requests or jobs.
    done: Callable[[httpx.AsyncClient, Headers, Target], Awaitable[int]]
    # The parts of the first answer a replay repeats (a queued run's current state is at
    # its Location; the replay is the answer at acceptance).
    identity: Callable[[httpx.Response], object]


async def _pump(client: httpx.AsyncClient, admin: Headers) -> Target:
    return Target((await make_pump(client, admin, "hw-idem"))["id"], "")


async def _sensor(client: httpx.AsyncClient, admin: Headers) -> Target:
    zone = await make_zone(client, admin)
    sensor = await make_sensor(client, admin, zone["id"])
    return Target(sensor["id"], (datetime.now(UTC) - timedelta(minutes=1)).isoformat())


async def _run_now(
    client: httpx.AsyncClient, admin: Headers, target: Target, key: str, other: bool
) -> httpx.Response:
    return await activate(client, admin, target.id, 4 if other else 3, idempotency_key=key)


async def _queued_run(
    client: httpx.AsyncClient, admin: Headers, target: Target, key: str, other: bool
) -> httpx.Response:
    mode = "front" if other else "append"
    return await activate(client, admin, target.id, 3, queue=mode, idempotency_key=key)


async def _readings(
    client: httpx.AsyncClient, admin: Headers, target: Target, key: str, other: bool
) -> httpx.Response:
    item = {"sensor_id": target.id, "ts": target.ts, "value": 8 if other else 7}
    return await client.post(
        "/v1/readings", json={"readings": [item]}, headers={**admin, "Idempotency-Key": key}
    )


async def _count(client: httpx.AsyncClient, admin: Headers, path: str) -> int:
    response = await client.get(path, params={"limit": 100}, headers=admin)
    assert response.status_code == 200, response.text
    return len(response.json()["items"])


ROUTES = [
    Route(
        "activation",
        _pump,
        _run_now,
        202,
        "SELECT 1 FROM pumps WHERE id = $1 FOR UPDATE",
        lambda c, a, t: _count(c, a, f"/v1/pumps/{t.id}/activations"),
        lambda r: (r.json(), r.headers["location"]),
    ),
    Route(
        "queued_run",
        _pump,
        _queued_run,
        202,
        "SELECT 1 FROM pumps WHERE id = $1 FOR UPDATE",
        lambda c, a, t: _count(c, a, "/v1/run-queue"),
        lambda r: (r.json()["kind"], r.json()["id"], r.headers["location"]),
    ),
    Route(
        "readings",
        _sensor,
        _readings,
        200,
        "SELECT 1 FROM sensors WHERE id = $1 FOR UPDATE",
        lambda c, a, t: _count(c, a, "/v1/ingest/jobs"),
        lambda r: r.json(),
    ),
]
matrix = pytest.mark.parametrize("route", ROUTES, ids=[r.name for r in ROUTES])


@matrix
async def test_a_retry_with_the_same_key_replays_the_first_answer(
    client: httpx.AsyncClient, admin: Headers, route: Route
) -> None:
    target = await route.prepare(client, admin)
    first = await route.send(client, admin, target, "k-1", False)
    again = await route.send(client, admin, target, "k-1", False)
    assert first.status_code == again.status_code == route.accepted, again.text
    assert route.identity(again) == route.identity(first)
    assert await route.done(client, admin, target) == 1


@matrix
async def test_the_same_key_with_another_body_is_422(
    client: httpx.AsyncClient, admin: Headers, route: Route
) -> None:
    target = await route.prepare(client, admin)
    first = await route.send(client, admin, target, "k-1", False)
    assert first.status_code == route.accepted, first.text
    other = await route.send(client, admin, target, "k-1", True)
    assert_problem(other, 422, "idempotency_key_reused")
    assert await route.done(client, admin, target) == 1


async def _until_a_request_waits_on_a_lock(
    holder: asyncpg.Connection, first: "asyncio.Task[httpx.Response]"
) -> None:
    for _ in range(500):
        assert not first.done(), (await first).text
        waiting = await holder.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        if waiting:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the first request never waited on the held lock")


@matrix
async def test_the_same_key_while_the_first_request_is_in_flight_is_409_with_retry_after(
    client: httpx.AsyncClient, admin: Headers, database_url: str, route: Route
) -> None:
    target = await route.prepare(client, admin)
    holder = await asyncpg.connect(plain_url(database_url))
    try:
        lock = holder.transaction()
        await lock.start()
        await holder.execute(route.lock, uuid.UUID(target.id))
        first = asyncio.create_task(route.send(client, admin, target, "k-1", False))
        try:
            await _until_a_request_waits_on_a_lock(holder, first)
            second = await route.send(client, admin, target, "k-1", False)
        finally:
            await lock.rollback()
        answered = await first
    finally:
        await holder.close()

    body = assert_problem(second, 409, "idempotency_in_flight")
    assert "in flight" in body["detail"]
    assert second.headers["retry-after"] == "1"
    # Released, the first request completes; a retry then replays its answer.
    assert answered.status_code == route.accepted, answered.text
    later = await route.send(client, admin, target, "k-1", False)
    assert later.status_code == route.accepted, later.text
    assert route.identity(later) == route.identity(answered)
    assert await route.done(client, admin, target) == 1
