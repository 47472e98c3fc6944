"""The quarantine: listing and filtering it, approving (with corrections) and rejecting
items one by one or in bulk, and never seeing another site's."""

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from tests.ingest.helpers import NOBODYS_SENSOR, ago, quarantined, rollups, send
from tests.support.api import Headers, bearer, walk
from tests.support.factories import MakeKey, make_sensor
from tests.support.polling import wait_for
from tests.support.problems import assert_invalid, assert_problem


def hour_of(ts: datetime) -> datetime:
    return ts.replace(minute=0, second=0, microsecond=0)


async def approve(
    client: httpx.AsyncClient, headers: Headers, item_id: str, **corrections: Any
) -> httpx.Response:
    body = corrections or None
    return await client.post(f"/v1/quarantine/{item_id}/approve", json=body, headers=headers)


async def readings_of(client: httpx.AsyncClient, headers: Headers, sid: str) -> list[Any]:
    response = await client.get(f"/v1/sensors/{sid}/readings", headers=headers)
    assert response.status_code == 200, response.text
    items: list[Any] = response.json()["items"]
    return items


@pytest.fixture
async def sid(client: httpx.AsyncClient, admin: Headers) -> str:
    """A soil moisture sensor (0-100 %) of site A."""
    return (await make_sensor(client, admin))["id"]


# Listing --------------------------------------------------------------------------------


async def test_the_list_shows_each_item_with_its_reason_and_filters_by_reason_job_and_status(
    client: httpx.AsyncClient, admin: Headers, sid: str
) -> None:
    ts = ago(minutes=1)
    first = await send(
        client,
        admin,
        [
            {"sensor_id": sid, "ts": ts, "value": 150},
            {"sensor_id": NOBODYS_SENSOR, "ts": ts, "value": 1},
            {"sensor_id": sid, "ts": ts, "value": 1, "quality": 5},
            {"sensor_id": sid, "ts": ts, "value": 2},
        ],
    )
    second = await send(client, admin, [{"sensor_id": sid, "ts": ts, "value": 1, "unit": "K"}])

    items = await quarantined(client, admin, first["job_id"])
    assert sorted(items) == [0, 1, 2]
    out_of_range = items[0]
    assert out_of_range["reason"] == "out_of_range"
    assert out_of_range["review_status"] == "pending"
    assert out_of_range["reviewed_at"] is None
    assert out_of_range["sensor_id"] == sid
    assert out_of_range["raw"]["value"] == 150
    assert out_of_range["detail"] == "value 150.0 is outside [0.0, 100.0]"
    # An unknown sensor is not named as a sensor: the raw item still shows what was sent.
    assert items[1]["sensor_id"] is None
    assert items[1]["raw"]["sensor_id"] == NOBODYS_SENSOR

    async def ids(**filters: str) -> list[str]:
        response = await client.get("/v1/quarantine", params=filters, headers=admin)
        assert response.status_code == 200, response.text
        return [item["id"] for item in response.json()["items"]]

    everything = await ids()
    assert len(everything) == 4
    assert await ids(reason="low_quality") == [items[2]["id"]]
    assert await ids(job_id=second["job_id"]) == [
        (await quarantined(client, admin, second["job_id"]))[0]["id"]
    ]
    assert await ids(job_id=first["job_id"], reason="invalid_unit") == []
    assert len(await ids(review_status="pending")) == 4
    assert await ids(review_status="rejected") == []
    await client.post(f"/v1/quarantine/{items[1]['id']}/reject", headers=admin)
    assert await ids(review_status="rejected") == [items[1]["id"]]
    assert len(await ids(review_status="pending")) == 3

    for bad in ({"reason": "sunspots"}, {"review_status": "maybe"}, {"job_id": "x"}):
        response = await client.get("/v1/quarantine", params=bad, headers=admin)
        assert_invalid(response, f"query.{next(iter(bad))}")


async def test_the_list_pages_through_every_item_once(
    client: httpx.AsyncClient, admin: Headers, sid: str
) -> None:
    for batch in range(3):
        await send(
            client,
            admin,
            [{"sensor_id": sid, "ts": ago(minutes=1), "value": 200 + i} for i in range(batch + 2)],
        )
    pages = await walk(client, "/v1/quarantine", admin, limit=4)
    assert [len(page) for page in pages] == [4, 4, 1]
    walked = [item["id"] for page in pages for item in page]
    assert len(set(walked)) == 9
    created = [item["created_at"] for page in pages for item in page]
    assert created == sorted(created)
    filtered = await walk(client, "/v1/quarantine", admin, limit=2, reason="out_of_range")
    assert sorted(item["id"] for page in filtered for item in page) == sorted(walked)

    for limit in (0, 501):
        response = await client.get("/v1/quarantine", params={"limit": limit}, headers=admin)
        assert_invalid(response, "query.limit")
    response = await client.get("/v1/quarantine", params={"cursor": "nope"}, headers=admin)
    assert_invalid(response, "query.cursor", code="invalid_cursor")
    response = await client.get("/v1/quarantine", params={"limit": 500}, headers=admin)
    assert response.status_code == 200


# Approving ------------------------------------------------------------------------------


async def test_approving_with_a_corrected_value_stores_the_reading_and_rolls_it_up(
    client: httpx.AsyncClient, admin: Headers, sid: str, database_url: str
) -> None:
    ts = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=3)
    batch = await send(
        client,
        admin,
        [
            {"sensor_id": sid, "ts": (ts - timedelta(minutes=1)).isoformat(), "value": 10},
            {"sensor_id": sid, "ts": ts.isoformat(), "value": 1000, "quality": 90},
        ],
    )
    item = (await quarantined(client, admin, batch["job_id"]))[1]
    before = (await rollups(database_url, sid))[hour_of(ts)]

    response = await approve(client, admin, item["id"], value=42.5)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == item["id"]
    assert body["review_status"] == "approved"
    assert datetime.fromisoformat(body["reviewed_at"]) > ts
    assert body["inserted"] is True
    assert body["reading"] == {
        "sensor_id": sid,
        "ts": body["reading"]["ts"],
        "value": 42.5,
        "quality": 90,
        "raw_value": 42.5,  # no calibration: stored as corrected
    }
    assert datetime.fromisoformat(body["reading"]["ts"]) == ts
    assert body["raw"]["value"] == 1000  # what the device sent stays on record

    count, total, low, high = before
    assert (await rollups(database_url, sid))[hour_of(ts)] == (
        count + 1,
        total + 42.5,
        min(low, 42.5),
        max(high, 42.5),
    )
    stored = {r["value"]: r["quality"] for r in await readings_of(client, admin, sid)}
    assert stored == {10: 100, 42.5: 90}
    latest = (await client.get(f"/v1/sensors/{sid}/latest", headers=admin)).json()
    assert (latest["value"], latest["source"]) == (42.5, "cache")
    sensor = (await client.get(f"/v1/sensors/{sid}", headers=admin)).json()
    assert datetime.fromisoformat(sensor["last_seen_at"]) == ts
    listed = await quarantined(client, admin, batch["job_id"])
    assert listed[1]["review_status"] == "approved"
    # The audit: who approved, and with which correction.
    assert listed[1]["correction"] == {"value": 42.5}
    assert listed[1]["reviewed_by"].startswith("api_key:")


async def test_approving_an_out_of_range_item_as_it_is_is_422_still_invalid(
    client: httpx.AsyncClient, admin: Headers, sid: str, database_url: str
) -> None:
    batch = await send(client, admin, [{"sensor_id": sid, "ts": ago(minutes=1), "value": 101}])
    item = (await quarantined(client, admin, batch["job_id"]))[0]
    for corrections in ({}, {"value": -0.5}):
        response = await approve(client, admin, item["id"], **corrections)
        body = assert_problem(response, 422, "still_invalid")
        assert body["reason"] == "out_of_range"
        assert "outside [0.0, 100.0]" in body["detail"]
    assert (await quarantined(client, admin, batch["job_id"]))[0]["review_status"] == "pending"
    assert await readings_of(client, admin, sid) == []
    assert await rollups(database_url, sid) == {}
    # Corrected after all, it goes through.
    assert (await approve(client, admin, item["id"], value=100)).status_code == 200


async def test_each_reason_is_approved_once_its_cause_is_corrected(
    client: httpx.AsyncClient, admin: Headers, sid: str, settings: Any
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    naive = (now - timedelta(minutes=4)).replace(tzinfo=None).isoformat()
    too_old = (now - timedelta(days=settings.raw_retention_days + 1)).isoformat()
    raw = (
        '{"readings": ['
        f'{{"sensor_id": "{sid}", "ts": "{ago(minutes=1)}", "value": NaN}},'
        f'{{"sensor_id": "{sid}", "ts": "{ago(minutes=2)}", "value": 5, "unit": "mm"}},'
        f'{{"sensor_id": "{sid}", "ts": "{naive}", "value": 6}},'
        f'{{"sensor_id": "{sid}", "ts": "{too_old}", "value": 7}},'
        f'{{"sensor_id": "{NOBODYS_SENSOR}", "ts": "{ago(minutes=5)}", "value": 8}},'
        '"garbage",'
        f'{{"sensor_id": "{sid}", "ts": "{ago(minutes=6)}", "value": 9, "quality": 7}}'
        "]}"
    )
    response = await client.post(
        "/v1/readings", content=raw, headers={**admin, "Content-Type": "application/json"}
    )
    items = await quarantined(client, admin, response.json()["job_id"])
    assert [items[i]["reason"] for i in range(7)] == [
        "parse_error",
        "invalid_unit",
        "invalid_timestamp",
        "invalid_timestamp",
        "unknown_sensor",
        "parse_error",
        "low_quality",
    ]
    # NaN is kept as the client wrote it, in an item that can still be corrected.
    assert items[0]["raw"]["value"] == "NaN"
    assert (await approve(client, admin, items[0]["id"])).json()["reason"] == "parse_error"

    fixes: list[tuple[int, dict[str, Any]]] = [
        (0, {"value": 3.5}),
        (1, {"unit": "%"}),
        (2, {"ts": (now - timedelta(minutes=4)).isoformat()}),
        (3, {"ts": (now - timedelta(hours=2)).isoformat()}),
        # Approving overrides the quality flag, and the reading keeps its quality.
        (6, {}),
    ]
    for index, corrections in fixes:
        response = await approve(client, admin, items[index]["id"], **corrections)
        assert response.status_code == 200, (index, response.text)
    # Nothing makes an unknown sensor known, nor a string a reading.
    for index, reason in ((4, "unknown_sensor"), (5, "parse_error")):
        response = await approve(client, admin, items[index]["id"], value=1)
        assert assert_problem(response, 422, "still_invalid")["reason"] == reason
    stored = {r["value"]: r["quality"] for r in await readings_of(client, admin, sid)}
    assert stored == {3.5: 100, 5: 100, 6: 100, 7: 100, 9: 7}


async def test_approving_a_reading_already_stored_counts_it_as_a_duplicate(
    client: httpx.AsyncClient, admin: Headers, sid: str, database_url: str
) -> None:
    ts = ago(minutes=1)
    batch = await send(
        client,
        admin,
        [{"sensor_id": sid, "ts": ts, "value": 20}, {"sensor_id": sid, "ts": ts, "value": 120}],
    )
    item = (await quarantined(client, admin, batch["job_id"]))[1]
    before = await rollups(database_url, sid)
    response = await approve(client, admin, item["id"], value=21)
    assert response.status_code == 200, response.text
    assert response.json()["inserted"] is False
    assert await rollups(database_url, sid) == before
    assert [r["value"] for r in await readings_of(client, admin, sid)] == [20]
    latest = (await client.get(f"/v1/sensors/{sid}/latest", headers=admin)).json()
    assert [r["value"] for r in latest["recent"]] == [20]


async def test_corrections_are_validated_like_any_body(
    client: httpx.AsyncClient, admin: Headers, sid: str
) -> None:
    batch = await send(client, admin, [{"sensor_id": sid, "ts": ago(minutes=1), "value": 101}])
    item_id = (await quarantined(client, admin, batch["job_id"]))[0]["id"]
    for body, path in (
        ({"value": "12"}, "body.value"),
        ({"value": True}, "body.value"),
        ({"quality": 80}, "body.quality"),
        ({"unit": ""}, "body.unit"),
        ({"ts": "soon"}, "body.ts"),
    ):
        response = await client.post(f"/v1/quarantine/{item_id}/approve", json=body, headers=admin)
        assert_invalid(response, path)
    response = await client.post(f"/v1/quarantine/{item_id}/approve", json=[1], headers=admin)
    assert_problem(response, 422, "validation_error")
    response = await client.post("/v1/quarantine/not-a-uuid/approve", headers=admin)
    assert_invalid(response, "path.item_id")


async def test_a_reviewer_waits_for_another_ones_decision_and_then_gets_409(
    client: httpx.AsyncClient, admin: Headers, sid: str, database_url: str
) -> None:
    batch = await send(
        client, admin, [{"sensor_id": sid, "ts": ago(minutes=1), "value": 5, "quality": 1}]
    )
    item_id = (await quarantined(client, admin, batch["job_id"]))[0]["id"]
    other_reviewer = await asyncpg.connect(database_url)
    # Outside the reviewer's transaction, which would see pg_stat_activity as it first did.
    watcher = await asyncpg.connect(database_url)

    async def approval_waits_or_is_done() -> bool:
        waiting = await watcher.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return bool(waiting) or pending.done()

    try:
        async with other_reviewer.transaction():
            await other_reviewer.execute(
                "SELECT 1 FROM quarantined_readings WHERE id = $1 FOR UPDATE",
                uuid.UUID(item_id),
            )
            pending = asyncio.create_task(approve(client, admin, item_id))
            await wait_for(approval_waits_or_is_done, timeout_s=5, interval_s=0.02)
            assert not pending.done(), "the approval did not wait for the row lock"
            await other_reviewer.execute(
                "UPDATE quarantined_readings SET review_status = 'rejected', "
                "reviewed_at = now() WHERE id = $1",
                uuid.UUID(item_id),
            )
        response = await pending
    finally:
        await watcher.close()
        await other_reviewer.close()
    assert assert_problem(response, 409, "already_reviewed")["review_status"] == "rejected"
    assert await readings_of(client, admin, sid) == []
    assert await rollups(database_url, sid) == {}


# Rejecting ------------------------------------------------------------------------------


async def test_rejecting_keeps_the_reading_out_and_a_reviewed_item_is_409(
    client: httpx.AsyncClient, admin: Headers, sid: str
) -> None:
    batch = await send(
        client,
        admin,
        [
            {"sensor_id": sid, "ts": ago(minutes=1), "value": 1, "quality": 1},
            {"sensor_id": sid, "ts": ago(minutes=2), "value": 2, "quality": 1},
        ],
    )
    items = await quarantined(client, admin, batch["job_id"])
    rejected, approved = items[0]["id"], items[1]["id"]

    response = await client.post(f"/v1/quarantine/{rejected}/reject", headers=admin)
    assert response.status_code == 200, response.text
    assert response.json()["review_status"] == "rejected"
    assert response.json()["reviewed_at"] is not None
    assert response.json()["reviewed_by"].startswith("api_key:")
    assert response.json()["correction"] is None
    assert (await approve(client, admin, approved)).status_code == 200

    for item_id, status in ((rejected, "rejected"), (approved, "approved")):
        for action in ("approve", "reject"):
            response = await client.post(f"/v1/quarantine/{item_id}/{action}", headers=admin)
            body = assert_problem(response, 409, "already_reviewed")
            assert body["review_status"] == status
    assert [r["value"] for r in await readings_of(client, admin, sid)] == [2]


# Bulk -----------------------------------------------------------------------------------


async def test_bulk_approve_answers_for_each_id_in_the_order_sent(
    client: httpx.AsyncClient, admin: Headers, other_admin: Headers, sid: str
) -> None:
    theirs = (await make_sensor(client, other_admin))["id"]
    their_batch = await send(
        client, other_admin, [{"sensor_id": theirs, "ts": ago(minutes=1), "value": 500}]
    )
    their_item = (await quarantined(client, other_admin, their_batch["job_id"]))[0]["id"]
    batch = await send(
        client,
        admin,
        [
            {"sensor_id": sid, "ts": ago(minutes=1), "value": 11, "quality": 20},
            {"sensor_id": sid, "ts": ago(minutes=2), "value": 500},
            {"sensor_id": sid, "ts": ago(minutes=3), "value": 13, "quality": 20},
        ],
    )
    items = await quarantined(client, admin, batch["job_id"])
    low, out, rejected = (items[i]["id"] for i in range(3))
    await client.post(f"/v1/quarantine/{rejected}/reject", headers=admin)
    nobodys = str(uuid.uuid4())

    sent = [low, out, rejected, their_item, nobodys, low]
    response = await client.post("/v1/quarantine/approve", json={"ids": sent}, headers=admin)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [(r["id"], r["status"]) for r in results] == [
        (low, "approved"),
        (out, "still_invalid"),
        (rejected, "already_reviewed"),
        (their_item, "not_found"),
        (nobodys, "not_found"),
        (low, "already_reviewed"),
    ]
    assert "out_of_range" in results[1]["detail"]
    assert [r["value"] for r in await readings_of(client, admin, sid)] == [11]
    # The other site's item was not touched.
    theirs_now = await quarantined(client, other_admin, their_batch["job_id"])
    assert theirs_now[0]["review_status"] == "pending"


async def test_bulk_reject_answers_for_each_id(
    client: httpx.AsyncClient, admin: Headers, other_admin: Headers, sid: str
) -> None:
    theirs = (await make_sensor(client, other_admin))["id"]
    their_batch = await send(
        client, other_admin, [{"sensor_id": theirs, "ts": ago(minutes=1), "value": 500}]
    )
    their_item = (await quarantined(client, other_admin, their_batch["job_id"]))[0]["id"]
    batch = await send(
        client,
        admin,
        [{"sensor_id": sid, "ts": ago(minutes=m + 1), "value": 500} for m in range(3)],
    )
    items = await quarantined(client, admin, batch["job_id"])
    a, b, c = (items[i]["id"] for i in range(3))
    assert (await approve(client, admin, c, value=1)).status_code == 200

    response = await client.post(
        "/v1/quarantine/reject", json={"ids": [a, b, c, their_item]}, headers=admin
    )
    assert response.status_code == 200, response.text
    assert [r["status"] for r in response.json()["results"]] == [
        "rejected",
        "rejected",
        "already_reviewed",
        "not_found",
    ]
    statuses = {
        i["id"]: i["review_status"]
        for i in (await quarantined(client, admin, batch["job_id"])).values()
    }
    assert statuses == {a: "rejected", b: "rejected", c: "approved"}
    theirs_now = await quarantined(client, other_admin, their_batch["job_id"])
    assert theirs_now[0]["review_status"] == "pending"


async def test_bulk_takes_1_to_500_ids(client: httpx.AsyncClient, admin: Headers) -> None:
    for action in ("approve", "reject"):
        path = f"/v1/quarantine/{action}"
        for ids in ([], [str(uuid.uuid4()) for _ in range(501)]):
            response = await client.post(path, json={"ids": ids}, headers=admin)
            assert_invalid(response, "body.ids")
        assert_invalid(await client.post(path, json={"ids": ["x"]}, headers=admin), "body.ids.0")
        assert_invalid(await client.post(path, json={}, headers=admin), "body.ids")
    many = [str(uuid.uuid4()) for _ in range(500)]
    response = await client.post("/v1/quarantine/reject", json={"ids": many}, headers=admin)
    assert response.status_code == 200, response.text
    assert [r["id"] for r in response.json()["results"]] == many
    assert {r["status"] for r in response.json()["results"]} == {"not_found"}


# Sites and scopes -----------------------------------------------------------------------


async def test_only_the_sites_own_keys_see_and_review_its_items_with_their_scopes(
    client: httpx.AsyncClient, admin: Headers, other_admin: Headers, make_key: MakeKey, sid: str
) -> None:
    batch = await send(
        client, admin, [{"sensor_id": sid, "ts": ago(minutes=1), "value": 1, "quality": 1}]
    )
    item_id = (await quarantined(client, admin, batch["job_id"]))[0]["id"]

    assert (await client.get("/v1/quarantine", headers=other_admin)).json()["items"] == []
    assert await quarantined(client, other_admin, batch["job_id"]) == {}
    for action, body in (("approve", {"value": 5}), ("approve", None), ("reject", None)):
        response = await client.post(
            f"/v1/quarantine/{item_id}/{action}", json=body, headers=other_admin
        )
        assert_problem(response, 404, "not_found")
    assert (await quarantined(client, admin, batch["job_id"]))[0]["review_status"] == "pending"

    reader = bearer(await make_key("read"))
    device = bearer(await make_key("ingest"))
    assert len((await client.get("/v1/quarantine", headers=reader)).json()["items"]) == 1
    assert_problem(await client.get("/v1/quarantine", headers=device), 403, "insufficient_scope")
    for path in (f"/v1/quarantine/{item_id}/approve", f"/v1/quarantine/{item_id}/reject"):
        assert_problem(await client.post(path, headers=reader), 403, "insufficient_scope")
    response = await client.post("/v1/quarantine/approve", json={"ids": [item_id]}, headers=reader)
    assert_problem(response, 403, "insufficient_scope")
    assert_problem(await client.get("/v1/quarantine"), 401, "unauthorized")
    assert (await approve(client, device, item_id)).status_code == 200
