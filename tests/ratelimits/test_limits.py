"""Each class of routes has its own limit per API key: over it, 429 `rate_limited` with
`Retry-After`; every answer says where the caller stands (IETF RateLimit headers)."""

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tests.ratelimits.conftest import Limited, policies, states
from tests.support.api import Headers, bearer
from tests.support.factories import MakeKey, make_sensor
from tests.support.problems import assert_problem

Send = Callable[[httpx.AsyncClient, Headers, int], Awaitable[httpx.Response]]


def now_iso(**delta: float) -> str:
    return (datetime.now(UTC) + timedelta(**delta)).isoformat()


async def _read(client: httpx.AsyncClient, headers: Headers, i: int) -> httpx.Response:
    return await client.get("/v1/zones", headers=headers)


async def _write(client: httpx.AsyncClient, headers: Headers, i: int) -> httpx.Response:
    return await client.post(
        "/v1/zones", json={"name": f"zone {i}", "timezone": "UTC"}, headers=headers
    )


async def _control(client: httpx.AsyncClient, headers: Headers, i: int) -> httpx.Response:
    return await client.post(
        "/v1/sites/current/pause", json={"until": now_iso(hours=1)}, headers=headers
    )


async def _ingest(client: httpx.AsyncClient, headers: Headers, i: int) -> httpx.Response:
    # An unknown sensor: quarantined, still counted (one reading: a cost of 2).
    reading = {"sensor_id": "00000000-0000-4000-8000-000000000000", "ts": now_iso(), "value": 1}
    return await client.post("/v1/readings", json={"readings": [reading]}, headers=headers)


async def _expensive(client: httpx.AsyncClient, headers: Headers, i: int) -> httpx.Response:
    # A CSV export (of the sensor made before the first request, by a write).
    sensor = (await client.get("/v1/sensors", headers=headers)).json()["items"][0]["id"]
    return await client.get(
        f"/v1/sensors/{sensor}/readings", headers={**headers, "Accept": "text/csv"}
    )


CASES: dict[str, tuple[Send, int]] = {
    # class: (one request of it, what it costs)
    "read": (_read, 1),
    "write": (_write, 1),
    "control": (_control, 1),
    "ingest": (_ingest, 2),
    "expensive": (_expensive, 1),
}


@pytest.mark.parametrize("rate_class", sorted(CASES))
async def test_over_its_class_limit_a_key_gets_429_with_retry_after_and_ratelimit_headers(
    rate_class: str, limited: Limited, admin: Headers
) -> None:
    send, cost = CASES[rate_class]
    client = await limited(**{rate_class: f"{3 * cost}/minute"})
    if rate_class == "expensive":
        await make_sensor(client, admin)  # by writes: the expensive budget is untouched
    for i in range(3):
        response = await send(client, admin, i)
        assert response.status_code < 300, response.text
        assert policies(response)[rate_class] == f'"{rate_class}";q={3 * cost};w=60'
        remaining, reset_s = states(response)[rate_class]
        assert remaining == (2 - i) * cost
        assert 0 <= reset_s <= 60

    refused = await send(client, admin, 3)

    body = assert_problem(refused, 429, "rate_limited")
    assert body["policy"] == rate_class
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert states(refused)[rate_class][0] == 0
    assert policies(refused)[rate_class] == f'"{rate_class}";q={3 * cost};w=60'


async def test_the_expensive_default_is_15_a_minute_per_key_as_the_ingestion_seed_asks(
    limited: Limited, admin: Headers
) -> None:
    client = await limited()  # the deployment defaults
    await make_sensor(client, admin)
    answers = [await _expensive(client, admin, i) for i in range(16)]
    assert [a.status_code for a in answers] == [200] * 15 + [429]
    assert policies(answers[0])["expensive"] == '"expensive";q=15;w=60'
    assert_problem(answers[15], 429, "rate_limited")


async def test_stopping_a_pump_is_counted_but_never_refused(
    limited: Limited, admin: Headers
) -> None:
    client = await limited(control="1/minute")
    assert (await _control(client, admin, 0)).status_code == 200
    assert_problem(await _control(client, admin, 1), 429, "rate_limited")

    stopped = await client.post("/v1/pumps/stop-all", headers=admin)

    assert stopped.status_code == 200, stopped.text
    assert states(stopped)["control"][0] == 0


async def test_a_key_over_its_limit_limits_neither_another_key_nor_another_site(
    limited: Limited, make_key: MakeKey, admin: Headers, other_admin: Headers
) -> None:
    client = await limited(read="2/minute")
    same_site = bearer(await make_key("read"))
    assert [(await _read(client, admin, i)).status_code for i in range(3)] == [200, 200, 429]

    for other in (same_site, other_admin):
        answer = await _read(client, other, 0)
        assert answer.status_code == 200, answer.text
        assert states(answer)["read"][0] == 1


async def test_requests_without_a_valid_key_are_limited_per_client_address(
    limited: Limited, admin: Headers
) -> None:
    client = await limited(read="3/minute")
    junk = [bearer("irr_" + "x" * 43), bearer("not-a-key"), {}]
    answers = [await _read(client, junk[i % 3], i) for i in range(4)]

    assert [a.status_code for a in answers] == [401, 401, 401, 429]
    assert states(answers[2])["read"][0] == 0
    assert_problem(answers[3], 429, "rate_limited")
    # A valid key from the same address has its own budget.
    assert (await _read(client, admin, 0)).status_code == 200


async def test_ingest_counts_each_reading_as_well_as_the_request(
    limited: Limited, make_key: MakeKey, admin: Headers
) -> None:
    device = bearer(await make_key("ingest"))
    client = await limited(ingest="25/minute")
    sensor = "00000000-0000-4000-8000-000000000000"
    ten = {
        "readings": [
            {"sensor_id": sensor, "ts": now_iso(seconds=-i), "value": i} for i in range(10)
        ]
    }

    first = await client.post("/v1/readings", json=ten, headers=device)
    second = await client.post("/v1/readings", json=ten, headers=device)
    third = await client.post("/v1/readings", json=ten, headers=device)

    assert first.status_code == second.status_code == 200, first.text
    assert [states(first)["ingest"][0], states(second)["ingest"][0]] == [14, 3]
    body = assert_problem(third, 429, "rate_limited")
    assert body["policy"] == "ingest"
    # Refused before anything was stored: the two batches' readings only (all quarantined,
    # as their sensor is unknown).
    listed = await client.get("/v1/quarantine", headers=admin, params={"limit": 100})
    assert len(listed.json()["items"]) == 20


async def test_a_batch_larger_than_the_whole_ingest_limit_says_so(
    limited: Limited, make_key: MakeKey
) -> None:
    device = bearer(await make_key("ingest"))
    client = await limited(ingest="5/minute")
    sensor = "00000000-0000-4000-8000-000000000000"
    batch = {"readings": [{"sensor_id": sensor, "ts": now_iso(), "value": i} for i in range(9)]}

    refused = await client.post("/v1/readings", json=batch, headers=device)

    body = assert_problem(refused, 429, "rate_limited")
    assert "more than the whole `ingest` limit" in body["detail"]
    assert int(refused.headers["Retry-After"]) == 60


async def test_an_aggregate_over_a_long_range_is_also_counted_as_expensive(
    limited: Limited, admin: Headers
) -> None:
    client = await limited(expensive="1/minute")
    sensor = (await make_sensor(client, admin))["id"]
    path = f"/v1/sensors/{sensor}/aggregates"
    end = datetime.now(UTC).replace(microsecond=0)
    long_range = {
        "bucket": "day",
        "start": (end - timedelta(days=40)).isoformat(),
        "end": end.isoformat(),
    }
    short_range = {
        "bucket": "day",
        "start": (end - timedelta(days=31)).isoformat(),
        "end": end.isoformat(),
    }

    first = await client.get(path, params=long_range, headers=admin)
    assert first.status_code == 200, first.text
    assert set(policies(first)) == {"read", "expensive"}
    assert_problem(await client.get(path, params=long_range, headers=admin), 429, "rate_limited")
    short = await client.get(path, params=short_range, headers=admin)
    assert short.status_code == 200, short.text
    assert set(policies(short)) == {"read"}
