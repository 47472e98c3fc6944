"""POST /v1/readings: every quarantine reason counted exactly, duplicates, the broken
envelope, rollups, last_seen_at, idempotency, the latest value and Redis going away."""

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis

from irrigation.app import create_app
from irrigation.settings import Settings
from tests.ingest.helpers import NOBODYS_SENSOR, ago, counts, reasons, rollups, send
from tests.support.api import Headers, bearer
from tests.support.factories import MakeKey, make_sensor
from tests.support.problems import assert_problem

# Quarantine reasons ---------------------------------------------------------------------


async def test_nan_infinity_wrong_types_missing_and_extra_fields_are_parse_errors(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    sid = (await make_sensor(client, admin))["id"]
    ts = ago(minutes=1)
    good = {"sensor_id": sid, "ts": ts, "value": 1.5}
    items: list[Any] = [
        {**good, "value": "12"},  # a number in a string is not a number
        {**good, "value": True},
        {**good, "value": None},
        {**good, "quality": "80"},
        {**good, "quality": 80.5},
        {**good, "quality": -1},
        {**good, "quality": 101},
        {**good, "sensor_id": 42},
        {**good, "sensor_id": "not-a-uuid"},
        {**good, "ts": "yesterday"},
        {**good, "unit": ["%"]},
        {"ts": ts, "value": 1},
        {"sensor_id": sid, "value": 1},
        {"sensor_id": sid, "ts": ts},
        {**good, "colour": "red"},
        "a string",
        None,
        [sid, ts, 1],
        {**good, "sensor_id": "\u0000", "k\u0000": 1},  # NUL: JSON allows it, PostgreSQL not
        {**good, "ts": ago(minutes=2)},
    ]
    body = await send(client, admin, items)
    last = len(items) - 1
    assert counts(body) == (len(items), 1, 0, last)
    assert reasons(body) == dict.fromkeys(range(last), "parse_error")
    assert body["quarantine"][11]["detail"].startswith("sensor_id:")
    assert body["quarantine"][14]["detail"].startswith("colour:")

    # NaN and Infinity as the bare literals some JSON encoders write.
    raw = (
        '{"readings": ['
        f'{{"sensor_id": "{sid}", "ts": "{ts}", "value": NaN}},'
        f'{{"sensor_id": "{sid}", "ts": "{ts}", "value": Infinity}},'
        f'{{"sensor_id": "{sid}", "ts": "{ts}", "value": -Infinity}},'
        f'{{"sensor_id": "{sid}", "ts": "{ago(minutes=3)}", "value": 12}}'
        "]}"
    )
    response = await client.post(
        "/v1/readings", content=raw, headers={**admin, "Content-Type": "application/json"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert counts(body) == (4, 1, 0, 3)
    assert reasons(body) == {0: "parse_error", 1: "parse_error", 2: "parse_error"}
    assert {q["detail"] for q in body["quarantine"]} == {"value: Input should be a finite number"}


async def test_unknown_sensor_gives_no_hint_that_another_sites_sensor_exists(
    client: httpx.AsyncClient, admin: Headers, other_admin: Headers
) -> None:
    mine = (await make_sensor(client, admin))["id"]
    theirs = (await make_sensor(client, other_admin))["id"]
    ts = ago(minutes=1)
    items = [
        {"sensor_id": theirs, "ts": ts, "value": 1},
        {"sensor_id": NOBODYS_SENSOR, "ts": ts, "value": 1},
        {"sensor_id": mine, "ts": ts, "value": 1},
    ]
    body = await send(client, admin, items)
    assert counts(body) == (3, 1, 0, 2)
    assert reasons(body) == {0: "unknown_sensor", 1: "unknown_sensor"}
    theirs_detail, nobodys_detail = (q["detail"] for q in body["quarantine"])
    assert theirs_detail.replace(theirs, "X") == nobodys_detail.replace(NOBODYS_SENSOR, "X")
    # Nothing reached the other site's sensor.
    latest = await client.get(f"/v1/sensors/{theirs}/latest", headers=other_admin)
    assert latest.json()["recent"] == []


async def test_a_unit_other_than_the_sensors_is_invalid_and_the_same_or_none_is_fine(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    sid = (await make_sensor(client, admin, kind="temperature", unit="°C"))["id"]
    items = [
        {"sensor_id": sid, "ts": ago(minutes=1), "value": 20, "unit": "°F"},
        {"sensor_id": sid, "ts": ago(minutes=2), "value": 20, "unit": "°C"},
        {"sensor_id": sid, "ts": ago(minutes=3), "value": 20},
        {"sensor_id": sid, "ts": ago(minutes=4), "value": 20, "unit": "c"},
    ]
    body = await send(client, admin, items)
    assert counts(body) == (4, 2, 0, 2)
    assert reasons(body) == {0: "invalid_unit", 3: "invalid_unit"}


DEFAULT_RANGES = {
    "soil_moisture": (0, 100),
    "temperature": (-40, 120),
    "pressure": (0, 700),
    "flow": (0, 1000),
    "humidity": (0, 100),
}


async def test_values_outside_the_kinds_range_or_the_sensors_own_are_out_of_range(
    client: httpx.AsyncClient, admin: Headers, subtests: pytest.Subtests
) -> None:
    for kind, (low, high) in DEFAULT_RANGES.items():
        with subtests.test(kind=kind):
            sid = (await make_sensor(client, admin, kind=kind, unit="u"))["id"]
            values = [low, high, low - 0.01, high + 0.01, (low + high) / 2, -1e6, 1e6]
            items = [
                {"sensor_id": sid, "ts": ago(minutes=i + 1), "value": v}
                for i, v in enumerate(values)
            ]
            body = await send(client, admin, items)
            assert counts(body) == (7, 3, 0, 4)
            assert reasons(body) == dict.fromkeys([2, 3, 5, 6], "out_of_range")
            assert f"[{float(low)}, {float(high)}]" in body["quarantine"][0]["detail"]
    with subtests.test("the sensor's own min_value and max_value"):
        sid = (await make_sensor(client, admin, min_value=10, max_value=40))["id"]
        values = [10, 40, 9.99, 40.01, 0, 100, 25]
        items = [
            {"sensor_id": sid, "ts": ago(minutes=i + 1), "value": v} for i, v in enumerate(values)
        ]
        body = await send(client, admin, items)
        assert counts(body) == (7, 3, 0, 4)
        assert reasons(body) == dict.fromkeys([2, 3, 4, 5], "out_of_range")


async def test_naive_future_and_too_old_timestamps_are_invalid(
    client: httpx.AsyncClient, admin: Headers, settings: Settings
) -> None:
    sid = (await make_sensor(client, admin))["id"]
    retention = settings.raw_retention_days
    stamps = [
        datetime.now(UTC).replace(tzinfo=None).isoformat(),  # naive
        "2026-01-01",  # a date is a naive midnight
        ago(minutes=-6),  # more than 5 minutes ahead
        ago(minutes=-4),
        ago(days=retention, hours=1),
        ago(days=retention, hours=-1),
        (datetime.now(UTC) - timedelta(minutes=3)).astimezone().isoformat(),  # any zone
    ]
    items = [{"sensor_id": sid, "ts": ts, "value": 1} for ts in stamps]
    body = await send(client, admin, items)
    assert counts(body) == (7, 3, 0, 4)
    assert reasons(body) == dict.fromkeys([0, 1, 2, 4], "invalid_timestamp")
    details = [q["detail"] for q in body["quarantine"]]
    assert details[0] == details[1] == "ts has no time zone"
    assert "future" in details[2]
    assert "retention" in details[3]


async def test_quality_below_50_is_low_quality_and_50_is_accepted(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    sid = (await make_sensor(client, admin))["id"]
    qualities = [0, 49, 50, 100]
    items = [
        {"sensor_id": sid, "ts": ago(minutes=i + 1), "value": 1, "quality": q}
        for i, q in enumerate(qualities)
    ]
    body = await send(client, admin, items)
    assert counts(body) == (4, 2, 0, 2)
    assert reasons(body) == {0: "low_quality", 1: "low_quality"}
    stored = (await client.get(f"/v1/sensors/{sid}/readings", headers=admin)).json()["items"]
    assert sorted(r["quality"] for r in stored) == [50, 100]


# Duplicates -----------------------------------------------------------------------------


async def test_duplicates_in_a_batch_and_against_stored_rows_are_counted_not_errors(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    sid = (await make_sensor(client, admin))["id"]
    t1, t2, t3 = ago(minutes=1), ago(minutes=2), ago(minutes=3)
    first = await send(
        client,
        admin,
        [
            {"sensor_id": sid, "ts": t1, "value": 1},
            {"sensor_id": sid, "ts": t1, "value": 1},
            {"sensor_id": sid, "ts": t1, "value": 2},  # same instant, other value: still one
            {"sensor_id": sid, "ts": t2, "value": 3},
        ],
    )
    assert counts(first) == (4, 2, 2, 0)
    second = await send(
        client,
        admin,
        [
            {"sensor_id": sid, "ts": t1, "value": 1},
            {"sensor_id": sid, "ts": t2, "value": 9},
            {"sensor_id": sid, "ts": t3, "value": 4},
        ],
    )
    assert counts(second) == (3, 1, 2, 0)
    assert second["quarantine"] == []
    # The first one sent is kept, and the hot cache shows what the database holds.
    stored = (await client.get(f"/v1/sensors/{sid}/readings", headers=admin)).json()["items"]
    assert [r["value"] for r in stored] == [4, 3, 1]
    # The same instant written with another offset is the same reading.
    plus_two = datetime.fromisoformat(t3).astimezone(timezone(timedelta(hours=2))).isoformat()
    resent = await send(client, admin, [{"sensor_id": sid, "ts": plus_two, "value": 4}])
    assert counts(resent) == (1, 0, 1, 0)
    latest = (await client.get(f"/v1/sensors/{sid}/latest", headers=admin)).json()
    assert latest["source"] == "cache"
    assert [r["value"] for r in latest["recent"]] == [1, 3, 4]


# The envelope ---------------------------------------------------------------------------


async def test_the_envelope_takes_1_to_10_000_items_and_a_broken_one_stores_nothing(
    client: httpx.AsyncClient, admin: Headers, settings: Settings, subtests: pytest.Subtests
) -> None:
    sid = (await make_sensor(client, admin))["id"]
    start = datetime.now(UTC) - timedelta(days=1)
    items = [
        {"sensor_id": sid, "ts": (start + timedelta(seconds=i)).isoformat(), "value": i % 100}
        for i in range(10_001)
    ]
    bodies: dict[str, bytes] = {
        "not json": b'{"readings": [',
        "empty body": b"",
        "no readings": b"{}",
        "readings not a list": json.dumps({"readings": items[0]}).encode(),
        "a bare list": json.dumps(items[:1]).encode(),
        "empty list": b'{"readings": []}',
        "10,001 items": json.dumps({"readings": items}).encode(),
    }
    for name, raw in bodies.items():
        with subtests.test(name):
            response = await client.post(
                "/v1/readings", content=raw, headers={**admin, "Content-Type": "application/json"}
            )
            assert_problem(response, 422, "validation_error")
    with subtests.test("above max_body_bytes"):
        filler = "x" * settings.max_body_bytes
        response = await client.post(
            "/v1/readings", content=json.dumps({"readings": [filler]}), headers=admin
        )
        assert_problem(response, 413, "payload_too_large")
    assert (await client.get("/v1/ingest/jobs", headers=admin)).json()["items"] == []
    assert (await client.get("/v1/quarantine", headers=admin)).json()["items"] == []
    # 10,000 is still one batch.
    assert counts(await send(client, admin, items[:10_000])) == (10_000, 10_000, 0, 0)


# Rollups and last_seen_at ---------------------------------------------------------------


async def test_hourly_rollups_are_exact_after_late_data_and_duplicates(
    client: httpx.AsyncClient, admin: Headers, database_url: str
) -> None:
    sid = (await make_sensor(client, admin))["id"]
    h0 = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=5)
    h1, h2 = h0 + timedelta(hours=1), h0 + timedelta(hours=2)

    def at(hour: datetime, minutes: int, value: float) -> dict[str, Any]:
        return {
            "sensor_id": sid,
            "ts": (hour + timedelta(minutes=minutes)).isoformat(),
            "value": value,
        }

    first = await send(client, admin, [at(h0, 1, 10), at(h0, 2, 20), at(h1, 5, 30)])
    assert counts(first) == (3, 3, 0, 0)
    late = [
        at(h0, 3, 5),  # late, into an hour already rolled up
        at(h0, 1, 99),  # a duplicate with another value never counts
        at(h1, 5, 30),  # an exact re-send
        at(h2, 0, 40),
        at(h2, 0, 41),  # a duplicate within the batch
        at(h2, 59, 50.5),
        at(h0, 0, 101),  # quarantined: out of range, never rolled up
    ]
    assert counts(await send(client, admin, late)) == (7, 3, 3, 1)
    assert await rollups(database_url, sid) == {
        h0: (3, 35.0, 5.0, 20.0),
        h1: (1, 30.0, 30.0, 30.0),
        h2: (2, 90.5, 40.0, 50.5),
    }


async def test_last_seen_at_moves_to_the_newest_ts_and_never_back(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    sid = (await make_sensor(client, admin))["id"]

    async def last_seen() -> datetime | None:
        sensor = (await client.get(f"/v1/sensors/{sid}", headers=admin)).json()
        seen = sensor["last_seen_at"]
        return datetime.fromisoformat(seen) if seen else None

    assert await last_seen() is None
    newest = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
    older = newest - timedelta(minutes=20)
    await send(
        client,
        admin,
        [
            {"sensor_id": sid, "ts": older.isoformat(), "value": 1},
            {"sensor_id": sid, "ts": newest.isoformat(), "value": 1},
        ],
    )
    assert await last_seen() == newest
    await send(
        client,
        admin,
        [{"sensor_id": sid, "ts": (older - timedelta(hours=1)).isoformat(), "value": 1}],
    )
    assert await last_seen() == newest
    # Quarantined and duplicate items do not move it either.
    await send(
        client,
        admin,
        [
            {"sensor_id": sid, "ts": ago(minutes=1), "value": 1, "quality": 1},
            {"sensor_id": sid, "ts": newest.isoformat(), "value": 1},
        ],
    )
    assert await last_seen() == newest
    later = newest + timedelta(minutes=5)
    await send(client, admin, [{"sensor_id": sid, "ts": later.isoformat(), "value": 1}])
    assert await last_seen() == later


# Idempotency ----------------------------------------------------------------------------


async def test_an_idempotency_key_replays_the_first_answer_without_inserting_again(
    client: httpx.AsyncClient, admin: Headers, database_url: str
) -> None:
    sid = (await make_sensor(client, admin))["id"]
    items = [
        {"sensor_id": sid, "ts": ago(minutes=1), "value": 7},
        {"sensor_id": sid, "ts": "x", "value": 1},
    ]
    first = await send(client, admin, items, **{"Idempotency-Key": "batch-1"})
    again = await send(client, admin, items, **{"Idempotency-Key": "batch-1"})
    assert again == first
    assert counts(first) == (2, 1, 0, 1)
    jobs = (await client.get("/v1/ingest/jobs", headers=admin)).json()["items"]
    assert [job["id"] for job in jobs] == [first["job_id"]]
    quarantine = (await client.get("/v1/quarantine", headers=admin)).json()["items"]
    assert len(quarantine) == 1
    assert [row[0] for row in (await rollups(database_url, sid)).values()] == [1]

    other = [{"sensor_id": sid, "ts": ago(minutes=2), "value": 8}]
    response = await client.post(
        "/v1/readings",
        json={"readings": other},
        headers={**admin, "Idempotency-Key": "batch-1"},
    )
    assert_problem(response, 422, "idempotency_key_reused")
    # Another key is another request.
    assert counts(await send(client, admin, other, **{"Idempotency-Key": "batch-2"})) == (
        1,
        1,
        0,
        0,
    )


# Latest value ---------------------------------------------------------------------------


async def test_latest_comes_from_the_cache_and_falls_back_to_the_database(
    client: httpx.AsyncClient,
    admin: Headers,
    other_admin: Headers,
    redis: aioredis.Redis,
    redis_namespace: str,
) -> None:
    sid = (await make_sensor(client, admin))["id"]
    empty = (await client.get(f"/v1/sensors/{sid}/latest", headers=admin)).json()
    assert (empty["value"], empty["recent"]) == (None, [])

    newest = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    # Sent out of order, in two batches, the second one late: newest first all the same.
    await send(
        client,
        admin,
        [
            {"sensor_id": sid, "ts": (newest - timedelta(minutes=m)).isoformat(), "value": m}
            for m in (0, 2)
        ],
    )
    await send(
        client,
        admin,
        [{"sensor_id": sid, "ts": (newest - timedelta(minutes=1)).isoformat(), "value": 1}],
    )

    cached = (await client.get(f"/v1/sensors/{sid}/latest", headers=admin)).json()
    assert cached["source"] == "cache"
    assert (cached["value"], cached["quality"]) == (0, 100)
    assert datetime.fromisoformat(cached["ts"]) == newest
    assert [r["value"] for r in cached["recent"]] == [0, 1, 2]

    # 70 older ones, late: sorted in behind, and only the newest 60 kept.
    await send(
        client,
        admin,
        [{"sensor_id": sid, "ts": ago(minutes=m + 4), "value": m} for m in range(70)],
    )
    cached = (await client.get(f"/v1/sensors/{sid}/latest", headers=admin)).json()
    assert cached["source"] == "cache"
    assert [r["value"] for r in cached["recent"]] == [0, 1, 2, *range(57)]

    assert await redis.delete(f"{redis_namespace}:sensor:{sid}:last60") == 1
    stored = (await client.get(f"/v1/sensors/{sid}/latest", headers=admin)).json()
    assert stored["source"] == "database"
    assert {k: stored[k] for k in ("ts", "value", "quality", "recent")} == {
        k: cached[k] for k in ("ts", "value", "quality", "recent")
    }

    response = await client.get(f"/v1/sensors/{sid}/latest", headers=other_admin)
    assert_problem(response, 404, "not_found")
    response = await client.get(f"/v1/sensors/{NOBODYS_SENSOR}/latest", headers=admin)
    assert_problem(response, 404, "not_found")


# Redis down -----------------------------------------------------------------------------


@pytest.fixture
async def silent_redis() -> AsyncIterator[str]:
    """A server that accepts connections and never answers: every Redis call times out."""
    writers: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"redis://127.0.0.1:{port}/0"
    for writer in writers:
        writer.close()
    server.close()
    await server.wait_closed()


@asynccontextmanager
async def app_client(settings: Settings, **changes: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A client of an app built from these settings with some changed, as `serve` builds it."""
    app = create_app(settings.model_copy(update=changes))
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            yield client
    finally:
        await app.state.redis.aclose()
        await app.state.engine.dispose()


# Refused answers at once; silent costs the full timeout, once, before the back-off.
@pytest.mark.parametrize("redis_is", ["refusing", "silent"])
async def test_with_redis_down_readings_are_stored_and_the_next_batch_is_not_slowed(
    settings: Settings, admin: Headers, silent_redis: str, redis_is: str
) -> None:
    url = "redis://127.0.0.1:1/0" if redis_is == "refusing" else silent_redis
    async with app_client(settings, redis_url=url) as down:
        sid = (await make_sensor(down, admin))["id"]
        first = [{"sensor_id": sid, "ts": ago(minutes=2), "value": 1}]
        assert counts(await send(down, admin, first)) == (1, 1, 0, 0)
        started = time.perf_counter()
        second = [{"sensor_id": sid, "ts": ago(minutes=1), "value": 2}]
        assert counts(await send(down, admin, second)) == (1, 1, 0, 0)
        assert time.perf_counter() - started < 0.3
        latest = (await down.get(f"/v1/sensors/{sid}/latest", headers=admin)).json()
        assert latest["source"] == "database"
        assert [r["value"] for r in latest["recent"]] == [2, 1]


# Who may send ---------------------------------------------------------------------------


async def test_a_device_key_may_send_and_a_read_key_may_not(
    client: httpx.AsyncClient, admin: Headers, make_key: MakeKey
) -> None:
    sid = (await make_sensor(client, admin))["id"]
    items = [{"sensor_id": sid, "ts": ago(minutes=1), "value": 1}]
    device = bearer(await make_key("ingest"))
    assert counts(await send(client, device, items)) == (1, 1, 0, 0)
    reader = bearer(await make_key("read"))
    response = await client.post("/v1/readings", json={"readings": items}, headers=reader)
    assert_problem(response, 403, "insufficient_scope")
    response = await client.post("/v1/readings", json={"readings": items})
    assert_problem(response, 401, "unauthorized")


async def test_a_batch_that_cannot_take_a_row_lock_in_time_is_503_and_stores_nothing(
    settings: Settings, admin: Headers, database_url: str
) -> None:
    async with app_client(settings, lock_timeout_ms=100) as client:
        sid = (await make_sensor(client, admin))["id"]
        items = [{"sensor_id": sid, "ts": ago(minutes=1), "value": 1}]
        holder = await asyncpg.connect(database_url)
        try:
            async with holder.transaction():
                await holder.execute(
                    "SELECT 1 FROM sensors WHERE id = $1 FOR UPDATE", uuid.UUID(sid)
                )
                response = await client.post(
                    "/v1/readings", json={"readings": items}, headers=admin
                )
        finally:
            await holder.close()
        assert_problem(response, 503, "unavailable")
        assert response.headers["Retry-After"] == "1"
        # Nothing half-applied: a retry stores the reading once.
        assert counts(await send(client, admin, items)) == (1, 1, 0, 0)
