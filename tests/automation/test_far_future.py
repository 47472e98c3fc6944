"""A time at the end of the calendar (a pause until 9999-12-31T23:00Z, stored before `until`
was bounded) is shown in a zone east of UTC without an error, and never stops another site's
schedules or queued runs."""

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import httpx
import pytest

from irrigation.automation.decisions import local
from irrigation.automation.models import Reason
from irrigation.automation.triggers import Skip, automation_gate
from irrigation.common import clock
from irrigation.settings import Settings
from irrigation.stack import plain_url
from tests.automation.conftest import Engine, decisions, run_requests
from tests.support.factories import make_pump, make_schedule, make_water_source, make_zone

END_OF_CALENDAR = datetime(9999, 12, 31, 23, 0, tzinfo=UTC)
# 05:59:30 in Tokyo: the schedules' 06:00 is 30 s away.
BEFORE_SIX_IN_TOKYO = datetime(2026, 6, 1, 20, 59, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("moment", "tz", "shown"),
    [
        (END_OF_CALENDAR, "Asia/Tokyo", "9999-12-31 23:00 UTC"),
        (datetime(1, 1, 1, 1, tzinfo=UTC), "America/New_York", "0001-01-01 01:00 UTC"),
    ],
)
def test_a_time_past_the_calendar_in_its_zone_is_written_in_utc(
    moment: datetime, tz: str, shown: str
) -> None:
    with pytest.raises(OverflowError):
        moment.astimezone(ZoneInfo(tz))  # what `local` must survive
    assert local(moment, tz) == shown


def test_a_time_within_the_calendar_is_written_in_its_zone() -> None:
    assert (
        local(datetime(2026, 6, 1, 21, tzinfo=UTC), "Asia/Tokyo") == "2026-06-02 06:00 Asia/Tokyo"
    )


def test_the_gates_word_a_pause_and_a_rain_delay_until_9999_in_tokyo() -> None:
    now = datetime(2026, 6, 1, tzinfo=UTC)
    paused = automation_gate(now, "Asia/Tokyo", END_OF_CALENDAR, None, None)
    rain = automation_gate(now, "Asia/Tokyo", None, None, END_OF_CALENDAR)
    assert paused == Skip(Reason.paused, "automation is paused until 9999-12-31 23:00 UTC")
    assert rain == Skip(Reason.rain_delay, "rain delay until 9999-12-31 23:00 UTC")


async def _fleet(client: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, Any]:
    """A Tokyo zone with two pumps on a source that feeds both: the schedule waters one, a
    queued run waits for the other."""
    zone = await make_zone(client, headers, timezone="Asia/Tokyo")
    source = await make_water_source(client, headers)
    pumps = [
        await make_pump(client, headers, zone_id=zone["id"], water_source_id=source["id"])
        for _ in range(2)
    ]
    schedule = await make_schedule(
        client, headers, zone["id"], pump_id=pumps[0]["id"], duration_s=10
    )
    assert schedule["next_run_at"] == "2026-06-01T21:00:00Z"
    return {"site_id": zone["site_id"], "zone": zone, "pumps": pumps, "schedule": schedule}


async def _waiting_run(conn: asyncpg.Connection, fleet: dict[str, Any]) -> uuid.UUID:
    """A schedule's run waiting for the second pump, written as the run queue writes one."""
    request_id = uuid.uuid4()
    stamp = int(clock.utcnow().timestamp() * 1_000_000)
    await conn.execute(
        """
        INSERT INTO run_requests (id, site_id, zone_id, pump_id, priority, rank, position,
            duration_s, origin, status, deadline, created_at)
        VALUES ($1, $2, $3, $4, 'scheduled', 2, $5, 10, 'schedule:old', 'waiting', $6, $7)
        """,
        request_id,
        uuid.UUID(fleet["site_id"]),
        uuid.UUID(fleet["zone"]["id"]),
        uuid.UUID(fleet["pumps"][1]["id"]),
        stamp,
        clock.utcnow() + timedelta(hours=2),
        clock.utcnow(),
    )
    return request_id


async def test_a_pause_until_9999_in_tokyo_stops_no_other_sites_schedule_or_queued_run(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    other_admin: dict[str, str],
    settings: Settings,
    engine: Engine,
) -> None:
    clock.move(BEFORE_SIX_IN_TOKYO - clock.utcnow())
    fleets = [await _fleet(client, admin), await _fleet(client, other_admin)]
    headers = {fleets[0]["site_id"]: admin, fleets[1]["site_id"]: other_admin}
    # The dispatcher reads waiting runs ordered by site: the paused site's come first.
    bad, good = sorted(fleets, key=lambda f: uuid.UUID(f["site_id"]))
    conn = await asyncpg.connect(plain_url(settings.database_url or ""))
    try:
        # As an old row holds it: the API refuses such an `until` now.
        await conn.execute(
            "UPDATE sites SET paused_until = $1 WHERE id = $2",
            END_OF_CALENDAR,
            uuid.UUID(bad["site_id"]),
        )
        waiting = {f["site_id"]: await _waiting_run(conn, f) for f in (bad, good)}
    finally:
        await conn.close()

    # The dispatcher's cron pass over every site: the good site's queued run starts.
    assert await engine.dispatch() == 1
    good_runs = await run_requests(client, headers[good["site_id"]])
    assert [(r["id"], r["status"]) for r in good_runs] == [
        (str(waiting[good["site_id"]]), "started")
    ]
    bad_runs = await run_requests(client, headers[bad["site_id"]])
    assert [(r["status"], r["last_reason"]) for r in bad_runs] == [("waiting", "paused")]

    # 06:00 in Tokyo: the good site's schedule fires and its run starts; the paused site's
    # schedule is skipped and moves on to the next day (it does not stay due forever).
    clock.move(timedelta(seconds=60))
    assert await engine.fire() == 1
    good_runs = await run_requests(client, headers[good["site_id"]], status="started")
    assert {r["schedule_id"] for r in good_runs} == {good["schedule"]["id"], None}
    bad_schedule = (
        await client.get(f"/v1/schedules/{bad['schedule']['id']}", headers=headers[bad["site_id"]])
    ).json()
    assert bad_schedule["next_run_at"] == "2026-06-02T21:00:00Z"
    skipped = await decisions(client, headers[bad["site_id"]], bad["zone"]["id"], outcome="skipped")
    assert [(d["reason"], d["message"]) for d in skipped] == [
        ("paused", "skipped: automation is paused until 9999-12-31 23:00 UTC")
    ]
    deferred = await decisions(
        client, headers[bad["site_id"]], bad["zone"]["id"], outcome="deferred"
    )
    assert [d["message"] for d in deferred] == [
        "deferred: automation is paused until 9999-12-31 23:00 UTC"
    ]
