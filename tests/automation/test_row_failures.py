"""One customer's bad row never hurts another: a schedule, rule or run request whose
processing raises is logged, backed off (not retried at once, not at the head of the next
batch) and alerted for its own site (`automation_failure`), while the other site's row is
processed in the same pass. And the firer and the dispatcher take every site's head first,
so one site's backlog never pushes another site's row out of the batch."""

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, time, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from irrigation.alerts.evaluate import evaluate_alerts
from irrigation.automation import scheduling
from irrigation.automation.runqueue import dispatch
from irrigation.common import clock
from irrigation.settings import Settings
from irrigation.stack import plain_url
from tests.alerts.helpers import open_alerts
from tests.automation.conftest import Engine, decisions, post_moisture, run_requests
from tests.support.factories import (
    make_pump,
    make_rule,
    make_schedule,
    make_sensor,
    make_water_source,
    make_zone,
)

Headers = dict[str, str]


@asynccontextmanager
async def sql(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(plain_url(settings.database_url or ""))
    try:
        yield conn
    finally:
        await conn.close()


def tomorrow_at(hour: int, minute: int) -> datetime:
    return datetime.combine(clock.utcnow().date() + timedelta(days=1), time(hour, minute), UTC)


def travel_to(moment: datetime) -> None:
    clock.move(moment - clock.utcnow())


async def failing_alerts(
    engine: Engine, client: httpx.AsyncClient, headers: Headers
) -> list[dict[str, Any]]:
    """The site's open `automation_failure` alerts after an evaluation."""
    async with engine.sessions() as session:
        await evaluate_alerts(session, engine.settings)
    found: list[dict[str, Any]] = await open_alerts(client, headers, "automation_failure")
    return found


async def retried(conn: asyncpg.Connection, table: str, row_id: str) -> asyncpg.Record:
    row = await conn.fetchrow(
        f"SELECT failures, retry_at FROM {table} WHERE id = $1",
        uuid.UUID(row_id),
    )
    assert row is not None
    return row


def assert_alert_names(alert: dict[str, Any], site_id: str, kind: str, row_id: str) -> None:
    assert (alert["site_id"], alert["subject_type"], alert["subject_id"]) == (
        site_id,
        "site",
        site_id,
    )
    assert alert["severity"] == "warning"
    assert f"{kind} {row_id}" in alert["message"]
    assert (alert["detail"]["row_kind"], alert["detail"]["row_id"]) == (
        kind.replace(" ", "_"),
        row_id,
    )


# Schedules -------------------------------------------------------------------------------


async def test_a_schedule_that_raises_is_backed_off_and_alerted_while_another_sites_fires(
    client: httpx.AsyncClient,
    admin: Headers,
    other_admin: Headers,
    settings: Settings,
    engine: Engine,
) -> None:
    six = tomorrow_at(6, 0)
    travel_to(six - timedelta(minutes=1))
    made = {}
    for name, headers in (("bad", admin), ("good", other_admin)):
        zone = await make_zone(client, headers, timezone="UTC")
        pump = await make_pump(client, headers, zone_id=zone["id"])
        schedule = await make_schedule(client, headers, zone["id"], pump_id=pump["id"])
        made[name] = (zone, schedule)
    (bad_zone, bad), (_, good) = made["bad"], made["good"]
    async with sql(settings) as conn:
        # A row the code cannot handle (written by hand, past the API's validation).
        await conn.execute(
            "UPDATE schedules SET start_times = ARRAY['25:99'] WHERE id = $1",
            uuid.UUID(bad["id"]),
        )
        travel_to(six + timedelta(seconds=30))

        assert await engine.fire() == 1
        (started,) = await run_requests(client, other_admin, status="started")
        assert started["schedule_id"] == good["id"]
        row = await retried(conn, "schedules", bad["id"])
        base = settings.automation_retry_base_s
        assert row["failures"] == 1
        wait = row["retry_at"] - clock.utcnow()
        assert timedelta(seconds=base - 5) < wait <= timedelta(seconds=base)
        # Its 06:00 is kept for the retry: it is not moved on as if it had fired.
        assert (
            await conn.fetchval(
                "SELECT next_run_at FROM schedules WHERE id = $1", uuid.UUID(bad["id"])
            )
            == six
        )
        (held,) = await decisions(client, admin, bad_zone["id"], outcome="deferred")
        assert (held["reason"], held["schedule_id"]) == ("row_failed", bad["id"])
        assert "25:99" not in held["message"]  # never the exception's text

        # Not retried at once, and not again at the head of the next pass.
        assert await engine.fire() == 0
        assert (await retried(conn, "schedules", bad["id"]))["failures"] == 1

        (alert,) = await failing_alerts(engine, client, admin)
        assert_alert_names(alert, bad_zone["site_id"], "schedule", bad["id"])
        assert "25:99" not in alert["message"]
        assert await failing_alerts(engine, client, other_admin) == []

        # Still broken after its back-off: tried once more, then waits twice as long.
        clock.move(timedelta(seconds=settings.automation_retry_base_s + 1))
        assert await engine.fire() == 0
        row = await retried(conn, "schedules", bad["id"])
        assert row["failures"] == 2
        wait = row["retry_at"] - clock.utcnow()
        assert timedelta(seconds=2 * base - 5) < wait <= timedelta(seconds=2 * base)

        # Repaired: its next attempt fires the 06:00 run (within its max delay), and the
        # failure count and the alert go.
        await conn.execute(
            "UPDATE schedules SET start_times = ARRAY['06:00'] WHERE id = $1",
            uuid.UUID(bad["id"]),
        )
        clock.move(timedelta(seconds=2 * base + 1))
        assert await engine.fire() == 1
        row = await retried(conn, "schedules", bad["id"])
        assert (row["failures"], row["retry_at"]) == (0, None)
        assert await conn.fetchval(
            "SELECT next_run_at FROM schedules WHERE id = $1", uuid.UUID(bad["id"])
        ) == six + timedelta(days=1)
    (run,) = await run_requests(client, admin)
    assert run["schedule_id"] == bad["id"]
    assert await failing_alerts(engine, client, admin) == []


async def test_the_firer_takes_every_sites_oldest_due_schedule_first(
    client: httpx.AsyncClient,
    admin: Headers,
    other_admin: Headers,
    settings: Settings,
    engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(scheduling, "FIRE_BATCH", 3)
    five = tomorrow_at(5, 0)
    travel_to(five - timedelta(minutes=1))
    busy = await make_zone(client, admin, timezone="UTC")
    await make_pump(client, admin, zone_id=busy["id"])
    backlog = [
        await make_schedule(client, admin, busy["id"], start_times=[f"05:0{i}"]) for i in range(5)
    ]
    quiet = await make_zone(client, other_admin, timezone="UTC")
    await make_pump(client, other_admin, zone_id=quiet["id"])
    later = await make_schedule(client, other_admin, quiet["id"], start_times=["05:30"])
    travel_to(five + timedelta(minutes=40))

    await engine.fire()  # one pass of at most 3: the busy site's 1st, the quiet's, its 2nd

    async with sql(settings) as conn:
        due = await conn.fetch("SELECT id FROM schedules WHERE next_run_at <= $1", clock.utcnow())
    still_due = {str(r["id"]) for r in due}
    assert later["id"] not in still_due
    assert still_due == {s["id"] for s in backlog[2:]}


# Threshold rules -------------------------------------------------------------------------


# Fails the evaluation's commit of one rule (its `last_evaluated_at`), not the back-off's.
_FAIL_EVALUATION = """
CREATE FUNCTION fail_evaluation() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'injected: evaluation failed'; END $$;
CREATE TRIGGER fail_evaluation BEFORE UPDATE ON threshold_rules
FOR EACH ROW WHEN (NEW.id = '{rule_id}'
                   AND NEW.last_evaluated_at IS DISTINCT FROM OLD.last_evaluated_at)
EXECUTE FUNCTION fail_evaluation();
"""


async def test_a_rule_that_raises_is_backed_off_and_alerted_while_another_sites_triggers(
    client: httpx.AsyncClient,
    admin: Headers,
    other_admin: Headers,
    settings: Settings,
    engine: Engine,
) -> None:
    made = {}
    for name, headers in (("bad", admin), ("good", other_admin)):
        zone = await make_zone(client, headers, timezone="UTC")
        await make_pump(client, headers, zone_id=zone["id"])
        sensor = await make_sensor(client, headers, zone["id"])
        rule = await make_rule(client, headers, zone["id"], duration_s=10)
        await post_moisture(client, headers, sensor["id"], [10, 10], end=clock.utcnow())
        made[name] = (zone, rule)
    (bad_zone, bad), (_, good) = made["bad"], made["good"]
    async with sql(settings) as conn:
        await conn.execute(_FAIL_EVALUATION.format(rule_id=bad["id"]))

        assert await engine.evaluate() == 1
        (started,) = await run_requests(client, other_admin, status="started")
        assert started["rule_id"] == good["id"]
        assert await run_requests(client, admin) == []
        row = await retried(conn, "threshold_rules", bad["id"])
        assert row["failures"] == 1
        assert row["retry_at"] > clock.utcnow()
        (held,) = await decisions(client, admin, bad_zone["id"], outcome="deferred")
        assert (held["reason"], held["rule_id"]) == ("row_failed", bad["id"])

        # Not retried at once (the trigger would count a second failure).
        assert await engine.evaluate() == 0
        assert (await retried(conn, "threshold_rules", bad["id"]))["failures"] == 1

        (alert,) = await failing_alerts(engine, client, admin)
        assert_alert_names(alert, bad_zone["site_id"], "threshold rule", bad["id"])
        assert "injected" not in alert["message"]
        assert await failing_alerts(engine, client, other_admin) == []

        await conn.execute("DROP TRIGGER fail_evaluation ON threshold_rules")
        clock.move(timedelta(seconds=settings.automation_retry_base_s + 1))
        assert await engine.evaluate() == 1
        assert (await retried(conn, "threshold_rules", bad["id"]))["failures"] == 0
    (run,) = await run_requests(client, admin)
    assert run["rule_id"] == bad["id"]
    assert await failing_alerts(engine, client, admin) == []


# The run-queue dispatcher ----------------------------------------------------------------


# Fails the commit of one request's start (or skip), not the back-off's.
_FAIL_START = """
CREATE FUNCTION fail_start() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'injected: start failed'; END $$;
CREATE TRIGGER fail_start BEFORE UPDATE ON run_requests
FOR EACH ROW WHEN (NEW.id = '{request_id}' AND NEW.status IS DISTINCT FROM OLD.status)
EXECUTE FUNCTION fail_start();
"""


async def waiting_run(
    conn: asyncpg.Connection, pump: dict[str, Any], site_id: str, position: int | None = None
) -> str:
    """A waiting run request, written as the run queue writes one."""
    request_id = uuid.uuid4()
    if position is None:
        position = int(clock.utcnow().timestamp() * 1_000_000)
    await conn.execute(
        """
        INSERT INTO run_requests (id, site_id, zone_id, pump_id, priority, rank, position,
            duration_s, origin, status, deadline, created_at)
        VALUES ($1, $2, $3, $4, 'manual', 0, $5, 10, 'api', 'waiting', $6, $7)
        """,
        request_id,
        uuid.UUID(site_id),
        uuid.UUID(pump["zone_id"]),
        uuid.UUID(pump["id"]),
        position,
        clock.utcnow() + timedelta(hours=2),
        clock.utcnow(),
    )
    return str(request_id)


async def two_sites(
    client: httpx.AsyncClient, admin: Headers, other_admin: Headers, pumps: int
) -> list[tuple[Headers, str, list[dict[str, Any]]]]:
    """Both sites, each with `pumps` pumps on a water source that feeds them all, ordered
    by site id: the first is the one an order by site would read first."""
    sites = []
    for headers in (admin, other_admin):
        zone = await make_zone(client, headers, timezone="UTC")
        source = await make_water_source(client, headers, max_concurrent_pumps=pumps)
        made = [
            await make_pump(client, headers, zone_id=zone["id"], water_source_id=source["id"])
            for _ in range(pumps)
        ]
        sites.append((headers, zone["site_id"], made))
    return sorted(sites, key=lambda s: uuid.UUID(s[1]))


async def test_a_run_request_that_raises_is_backed_off_and_alerted_and_the_rest_start(
    client: httpx.AsyncClient,
    admin: Headers,
    other_admin: Headers,
    settings: Settings,
    engine: Engine,
) -> None:
    (bad_headers, bad_site, bad_pumps), (good_headers, good_site, good_pumps) = await two_sites(
        client, admin, other_admin, pumps=2
    )
    async with sql(settings) as conn:
        poison = await waiting_run(conn, bad_pumps[0], bad_site)
        await conn.execute(_FAIL_START.format(request_id=poison))
        clock.move(timedelta(microseconds=10))
        healthy = await waiting_run(conn, bad_pumps[1], bad_site)
        other = await waiting_run(conn, good_pumps[0], good_site)

        # The poisoned request comes first (its site, then its age) and raises; the
        # request after it in its own site and the other site's both start.
        assert await engine.dispatch() == 2
        shown = {r["id"]: r for r in await run_requests(client, bad_headers)}
        assert (shown[poison]["status"], shown[poison]["last_reason"]) == (
            "waiting",
            "row_failed",
        )
        assert shown[healthy]["status"] == "started"
        (started,) = await run_requests(client, good_headers)
        assert (started["id"], started["status"]) == (other, "started")
        row = await retried(conn, "run_requests", poison)
        assert row["failures"] == 1
        assert row["retry_at"] > clock.utcnow()
        held = await decisions(client, bad_headers, bad_pumps[0]["zone_id"], outcome="deferred")
        assert [(d["reason"], d["run_request_id"]) for d in held] == [("row_failed", poison)]

        # Not retried at once.
        assert await engine.dispatch() == 0
        assert (await retried(conn, "run_requests", poison))["failures"] == 1

        (alert,) = await failing_alerts(engine, client, bad_headers)
        assert_alert_names(alert, bad_site, "run request", poison)
        assert await failing_alerts(engine, client, good_headers) == []

        # Repaired: it starts after its back-off; the failure count and the alert go.
        await conn.execute("DROP TRIGGER fail_start ON run_requests")
        clock.move(timedelta(seconds=settings.automation_retry_base_s + 1))
        assert await engine.dispatch() == 1
        assert (await retried(conn, "run_requests", poison))["failures"] == 0
    assert await failing_alerts(engine, client, bad_headers) == []


async def test_one_sites_backlog_never_pushes_another_sites_head_out_of_the_dispatch(
    client: httpx.AsyncClient,
    admin: Headers,
    other_admin: Headers,
    settings: Settings,
    engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(dispatch, "BATCH", 5)
    (
        (busy_headers, busy_site, busy_pumps),
        (quiet_headers, quiet_site, quiet_pumps),
    ) = await two_sites(client, admin, other_admin, pumps=1)
    async with sql(settings) as conn:
        # More waiting requests than one dispatch reads, all older than the other site's,
        # and of the site an order by site reads first.
        backlog = [
            await waiting_run(conn, busy_pumps[0], busy_site, position=i) for i in range(1, 9)
        ]
        head = await waiting_run(conn, quiet_pumps[0], quiet_site)

    assert await engine.dispatch() == 2
    (started,) = await run_requests(client, quiet_headers)
    assert (started["id"], started["status"]) == (head, "started")
    busy = {r["id"]: r for r in await run_requests(client, busy_headers)}
    assert busy[backlog[0]]["status"] == "started"
    # Each site's share of the pass is 5 // 2 = 2: the busy site's 2nd was read (behind its
    # started 1st); the rest wait for the next pass.
    assert [busy[i]["last_reason"] for i in backlog[1:]] == ["queued_behind"] + [None] * 6


async def test_a_site_alone_gets_the_whole_dispatch_batch(
    client: httpx.AsyncClient,
    admin: Headers,
    settings: Settings,
    engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(dispatch, "BATCH", 5)
    zone = await make_zone(client, admin, timezone="UTC")
    pump = await make_pump(client, admin, zone_id=zone["id"])
    async with sql(settings) as conn:
        backlog = [await waiting_run(conn, pump, zone["site_id"], position=i) for i in range(1, 9)]

    assert await engine.dispatch() == 1
    shown = {r["id"]: r for r in await run_requests(client, admin)}
    assert shown[backlog[0]]["status"] == "started"
    assert [shown[i]["last_reason"] for i in backlog[1:]] == ["queued_behind"] * 4 + [None] * 3
