"""Cycle-and-soak: a zone's automated watering longer than its `max_cycle_s` runs as
cycles, each a run request of its own with its own decision, chained, waiting out the soak
without holding the water source, so another zone's run starts in the gap. No worker runs
here: an admitted activation stays queued and holds its pump until the test stops it (an
aborted run: no cooldown), and the clock is moved, not slept."""

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from irrigation.automation.cycles import MAX_CYCLES, Cycling, plan, split
from irrigation.automation.et import compute_water_level, scaled_duration_s
from irrigation.common import clock
from irrigation.fleet.models import Pump
from irrigation.settings import Settings
from irrigation.stack import plain_url
from irrigation.weather import DailyWeather
from tests.automation.conftest import Engine, decisions, post_moisture, run_requests
from tests.support.factories import make_pump

MINUTE = 60


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """A runtime cap of an hour, so the waterings here are a grower's: minutes, not seconds."""
    return settings.model_copy(update={"max_runtime_cap_s": 3600})


# The plan ----------------------------------------------------------------------------


def pump(max_runtime_s: int = 3600, cooldown_s: int = 0) -> Pump:
    return Pump(id=uuid.uuid4(), max_runtime_s=max_runtime_s, cooldown_s=cooldown_s)


def test_a_watering_splits_into_the_fewest_even_cycles_of_at_most_the_cycle() -> None:
    assert split(1800, 300) == [300] * 6
    assert split(700, 300) == [234, 233, 233]
    assert split(300, 300) == [300]
    assert split(299, 300) == [299]
    assert split(0, 300) == []
    for total in range(1, 400):
        for cycle in (1, 7, 60, 300):
            parts = split(total, cycle)
            assert sum(parts) == total
            assert max(parts) <= cycle
            assert len(parts) == -(-total // cycle)
            assert max(parts) - min(parts) <= 1


def test_each_cycle_keeps_to_the_pumps_max_runtime_and_the_whole_watering_runs() -> None:
    short = pump(max_runtime_s=120)
    steps = plan([short], 1800, Cycling(max_cycle_s=300, min_soak_s=600))
    assert [s.duration_s for s in steps] == [120] * 15
    assert [(s.cycle, s.cycles) for s in steps] == [(k, 15) for k in range(1, 16)]
    assert [s.soak_s for s in steps] == [0] + [600] * 14


def test_soak_and_cooldown_the_longer_of_the_two_separates_cycles_in_the_plan() -> None:
    soak_longer = plan([pump(cooldown_s=60)], 1800, Cycling(300, 600))
    assert [s.offset_s for s in soak_longer] == [k * 900 for k in range(6)]
    rest_longer = plan([pump(cooldown_s=900)], 1800, Cycling(300, 600))
    assert [s.offset_s for s in rest_longer] == [k * 1200 for k in range(6)]


def test_a_zones_pumps_water_in_rounds_and_the_soak_comes_between_rounds() -> None:
    a, b = pump(), pump(max_runtime_s=200)
    steps = plan([a, b], 600, Cycling(300, 600))
    assert [(s.pump.id, s.cycle, s.cycles, s.duration_s, s.soak_s) for s in steps] == [
        (a.id, 1, 2, 300, 0),
        (b.id, 1, 3, 200, 0),
        (a.id, 2, 2, 300, 600),
        (b.id, 2, 3, 200, 0),
        (b.id, 3, 3, 200, 600),
    ]
    assert [s.offset_s for s in steps] == [0, 300, 1100, 1400, 2200]


def test_without_a_cycle_length_nothing_splits_and_a_run_is_cut_to_the_runtime_as_before() -> None:
    a, b = pump(max_runtime_s=30), pump()
    steps = plan([a, b], 1800, Cycling())
    assert [(s.duration_s, s.cycle, s.cycles, s.soak_s, s.offset_s) for s in steps] == [
        (30, 1, 1, 0, 0),
        (1800, 1, 1, 0, 0),
    ]


def test_a_watering_needing_more_cycles_than_the_limit_is_cut_and_says_from_what() -> None:
    (first, *rest) = plan([pump()], 3600, Cycling(max_cycle_s=10))
    assert len(rest) + 1 == MAX_CYCLES
    assert first.duration_s == 10
    assert first.cut_from_s == 3600


def test_a_split_watering_is_scaled_by_the_water_level_past_the_runtime_cap() -> None:
    assert scaled_duration_s(1800, 150, None) == 2700
    assert scaled_duration_s(1800, 150, 30) == 30


# The zone's settings -------------------------------------------------------------------


async def test_a_zone_sets_reads_and_clears_its_cycle_and_soak(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    made = await client.post(
        "/v1/zones",
        json={"name": "lawn", "timezone": "UTC", "max_cycle_s": 300, "min_soak_s": 600},
        headers=admin,
    )
    assert made.status_code == 201, made.text
    zone = made.json()
    assert (zone["max_cycle_s"], zone["min_soak_s"]) == (300, 600)
    plain = (
        await client.post("/v1/zones", json={"name": "bed", "timezone": "UTC"}, headers=admin)
    ).json()
    assert (plain["max_cycle_s"], plain["min_soak_s"]) == (None, 0)

    patched = await client.patch(
        f"/v1/zones/{zone['id']}",
        json={"version": zone["version"], "max_cycle_s": None, "min_soak_s": 900},
        headers=admin,
    )
    assert patched.status_code == 200, patched.text
    assert (patched.json()["max_cycle_s"], patched.json()["min_soak_s"]) == (None, 900)
    read = (await client.get(f"/v1/zones/{zone['id']}", headers=admin)).json()
    assert (read["max_cycle_s"], read["min_soak_s"]) == (None, 900)


@pytest.mark.parametrize(
    "body",
    [
        {"max_cycle_s": 0},
        {"max_cycle_s": -5},
        {"max_cycle_s": 3601},
        {"max_cycle_s": 1.5},
        {"max_cycle_s": "long"},
        {"min_soak_s": -1},
        {"min_soak_s": 86401},
    ],
)
async def test_a_cycle_or_soak_out_of_bounds_is_refused_on_create_and_patch(
    client: httpx.AsyncClient, admin: dict[str, str], body: dict[str, Any]
) -> None:
    refused = await client.post(
        "/v1/zones", json={"name": "lawn", "timezone": "UTC", **body}, headers=admin
    )
    assert refused.status_code == 422, refused.text
    assert refused.headers["content-type"] == "application/problem+json"
    zone = (
        await client.post("/v1/zones", json={"name": "bed", "timezone": "UTC"}, headers=admin)
    ).json()
    patched = await client.patch(
        f"/v1/zones/{zone['id']}", json={"version": zone["version"], **body}, headers=admin
    )
    assert patched.status_code == 422, patched.text


async def test_a_zones_soak_cannot_be_patched_to_null(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    zone = (
        await client.post("/v1/zones", json={"name": "bed", "timezone": "UTC"}, headers=admin)
    ).json()
    patched = await client.patch(
        f"/v1/zones/{zone['id']}",
        json={"version": zone["version"], "min_soak_s": None},
        headers=admin,
    )
    assert patched.status_code == 422, patched.text


# The run queue -------------------------------------------------------------------------


async def two_zones_on_one_source(
    client: httpx.AsyncClient, admin: dict[str, str], *, cooldown_s: int = 60
) -> dict[str, Any]:
    """A lawn (cycle 5 min, soak 10 min) and a bed, one pump each on a source that feeds one
    pump at a time; a moisture sensor and a threshold rule in each: 30 min for the lawn, 2
    for the bed."""
    source = (
        await client.post(
            "/v1/water-sources", json={"name": "well", "max_concurrent_pumps": 1}, headers=admin
        )
    ).json()
    found: dict[str, Any] = {}
    for name, zone_extra, duration in (
        ("lawn", {"max_cycle_s": 5 * MINUTE, "min_soak_s": 10 * MINUTE}, 30 * MINUTE),
        ("bed", {}, 2 * MINUTE),
    ):
        zone = await client.post(
            "/v1/zones", json={"name": name, "timezone": "UTC", **zone_extra}, headers=admin
        )
        assert zone.status_code == 201, zone.text
        zone_id = zone.json()["id"]
        made = await make_pump(
            client,
            admin,
            f"hw-{name}",
            zone_id=zone_id,
            water_source_id=source["id"],
            max_runtime_s=10 * MINUTE,
            cooldown_s=cooldown_s,
        )
        sensor = await client.post(
            "/v1/sensors",
            json={"zone_id": zone_id, "name": name, "kind": "soil_moisture", "unit": "%"},
            headers=admin,
        )
        rule = await client.post(
            "/v1/threshold-rules",
            json={
                "zone_id": zone_id,
                "start_below": 30,
                "stop_above": 45,
                "window_s": 60,
                "duration_s": duration,
            },
            headers=admin,
        )
        assert rule.status_code == 201, rule.text
        found[name] = {
            "zone": zone.json(),
            "pump": made,
            "sensor": sensor.json(),
            "rule": rule.json(),
        }
    return found


async def dry(
    client: httpx.AsyncClient, admin: dict[str, str], engine: Engine, sensor_id: str
) -> None:
    await post_moisture(client, admin, sensor_id, [12], end=clock.utcnow())
    await engine.evaluate()


async def stop(client: httpx.AsyncClient, admin: dict[str, str], pump_id: str) -> None:
    response = await client.post(f"/v1/pumps/{pump_id}/stop", headers=admin)
    assert response.status_code == 200, response.text


async def cycles_of(
    client: httpx.AsyncClient, admin: dict[str, str], pump_id: str
) -> list[dict[str, Any]]:
    """The pump's run requests that are cycles of a watering, first cycle first."""
    found = await run_requests(client, admin, pump_id=pump_id)
    return sorted((r for r in found if r["watering_id"]), key=lambda r: r["cycle"])


async def test_a_30_minute_watering_runs_as_6_cycles_with_the_soak_kept_and_a_zone_between(
    client: httpx.AsyncClient, admin: dict[str, str], engine: Engine
) -> None:
    site = await two_zones_on_one_source(client, admin)
    lawn, bed = site["lawn"], site["bed"]
    await dry(client, admin, engine, lawn["sensor"]["id"])

    cycles = await cycles_of(client, admin, lawn["pump"]["id"])
    assert [(r["cycle"], r["cycles"], r["duration_s"]) for r in cycles] == [
        (k, 6, 300) for k in range(1, 7)
    ]
    assert len({r["watering_id"] for r in cycles}) == 1
    assert cycles[0]["watering_id"] is not None
    assert [r["soak_s"] for r in cycles] == [0] + [600] * 5
    assert [r["after_id"] for r in cycles[1:]] == [r["id"] for r in cycles[:-1]]
    # Each cycle keeps the first one's slack: its deadline moves with its planned start.
    deadlines = [datetime.fromisoformat(r["deadline"]) for r in cycles]
    assert [(d - deadlines[0]).total_seconds() for d in deadlines] == [k * 900 for k in range(6)]
    assert [r["status"] for r in cycles] == ["started"] + ["waiting"] * 5

    # The bed asks while the lawn's first cycle runs: the source is full.
    await dry(client, admin, engine, bed["sensor"]["id"])
    (bed_run,) = await run_requests(client, admin, pump_id=bed["pump"]["id"])
    assert (bed_run["status"], bed_run["last_reason"]) == ("waiting", "capacity")

    await stop(client, admin, lawn["pump"]["id"])
    assert await engine.dispatch() == 1
    # The lawn soaks; the bed takes the source in the gap.
    (bed_run,) = await run_requests(client, admin, pump_id=bed["pump"]["id"])
    assert bed_run["status"] == "started"
    second = (await cycles_of(client, admin, lawn["pump"]["id"]))[1]
    assert (second["status"], second["last_reason"]) == ("waiting", "soaking")
    await stop(client, admin, bed["pump"]["id"])

    for cycle in range(2, 7):
        clock.move(timedelta(seconds=599))
        assert await engine.dispatch() == 0, f"cycle {cycle} started inside the soak"
        clock.move(timedelta(seconds=2))
        assert await engine.dispatch() == 1, f"cycle {cycle} did not start after the soak"
        await stop(client, admin, lawn["pump"]["id"])

    cycles = await cycles_of(client, admin, lawn["pump"]["id"])
    assert [r["status"] for r in cycles] == ["started"] * 6
    decided = await decisions(client, admin, lawn["zone"]["id"])
    started = sorted(
        (d for d in decided if d["outcome"] == "started"), key=lambda d: d["detail"]["cycle"]
    )
    # Each cycle is a run with its own decision, all of one watering.
    assert [d["run_request_id"] for d in started] == [r["id"] for r in cycles]
    assert len({d["activation_id"] for d in started}) == 6
    assert {d["watering_id"] for d in started} == {cycles[0]["watering_id"]}
    assert [(d["detail"]["cycle"], d["detail"]["cycles"]) for d in started] == [
        (k, 6) for k in range(1, 7)
    ]
    assert started[2]["message"].startswith("started: cycle 3 of 6 of 'hw-lawn' for 300 s")
    soaking = [d for d in decided if d["reason"] == "soaking"]
    assert len(soaking) == 5
    assert {d["detail"]["min_soak_s"] for d in soaking} == {600}
    by_watering = await decisions(
        client, admin, lawn["zone"]["id"], watering_id=cycles[0]["watering_id"]
    )
    assert {d["id"] for d in by_watering} == {d["id"] for d in decided if d["watering_id"]}
    listed = await run_requests(client, admin, watering_id=cycles[0]["watering_id"])
    assert {r["id"] for r in listed} == {r["id"] for r in cycles}


async def test_a_pump_cooldown_longer_than_the_soak_is_what_separates_cycles(
    client: httpx.AsyncClient, admin: dict[str, str], engine: Engine, settings: Settings
) -> None:
    site = await two_zones_on_one_source(client, admin, cooldown_s=900)
    lawn = site["lawn"]
    await dry(client, admin, engine, lawn["sensor"]["id"])
    await stop(client, admin, lawn["pump"]["id"])
    # A stop of a started run rests the pump (the worker's stop, done here by hand).
    conn = await asyncpg.connect(plain_url(settings.effective_database_url))
    try:
        await conn.execute(
            "UPDATE pumps SET cooldown_until = $1 WHERE id = $2",
            clock.utcnow() + timedelta(seconds=900),
            uuid.UUID(lawn["pump"]["id"]),
        )
    finally:
        await conn.close()
    clock.move(timedelta(seconds=601))
    assert await engine.dispatch() == 0
    second = (await cycles_of(client, admin, lawn["pump"]["id"]))[1]
    assert second["last_reason"] == "cooldown"
    clock.move(timedelta(seconds=300))
    assert await engine.dispatch() == 1


async def test_a_cycle_past_its_deadline_ends_the_watering_and_rearms_the_rule(
    client: httpx.AsyncClient, admin: dict[str, str], engine: Engine, settings: Settings
) -> None:
    site = await two_zones_on_one_source(client, admin)
    lawn = site["lawn"]
    await dry(client, admin, engine, lawn["sensor"]["id"])
    # The first cycle never ends (a stuck run, say): the second waits past its deadline.
    clock.move(timedelta(seconds=settings.threshold_run_deadline_s + 900 + 1))
    assert await engine.dispatch() == 0
    cycles = await cycles_of(client, admin, lawn["pump"]["id"])
    assert [(r["status"], r["last_reason"]) for r in cycles] == [
        ("started", "started"),
        ("skipped", "deadline_passed"),
    ] + [("skipped", "watering_ended")] * 4
    ended = await decisions(client, admin, lawn["zone"]["id"], reason="watering_ended")
    assert sorted(d["detail"]["cycle"] for d in ended) == [3, 4, 5, 6]
    assert {d["outcome"] for d in ended} == {"skipped"}
    assert {d["detail"]["ended_by"] for d in ended} == {cycles[1]["id"]}
    assert "cycle 2 of 6 of the watering was skipped (deadline_passed)" in ended[0]["message"]
    rule = (await client.get(f"/v1/threshold-rules/{lawn['rule']['id']}", headers=admin)).json()
    assert rule["armed"] is True


async def test_cancelling_a_cycle_cancels_the_later_ones_and_leaves_the_earlier_ones(
    client: httpx.AsyncClient, admin: dict[str, str], engine: Engine
) -> None:
    site = await two_zones_on_one_source(client, admin)
    lawn = site["lawn"]
    await dry(client, admin, engine, lawn["sensor"]["id"])
    cycles = await cycles_of(client, admin, lawn["pump"]["id"])
    cancelled = await client.delete(f"/v1/run-queue/{cycles[3]['id']}", headers=admin)
    assert cancelled.status_code == 200, cancelled.text
    cycles = await cycles_of(client, admin, lawn["pump"]["id"])
    assert [(r["status"], r["last_reason"]) for r in cycles] == [
        ("started", "started"),
        ("waiting", "after_previous"),
        ("waiting", "after_previous"),
        ("cancelled", "cancelled"),
        ("cancelled", "watering_ended"),
        ("cancelled", "watering_ended"),
    ]


async def test_a_persons_run_supersedes_the_waiting_cycles_of_its_pump(
    client: httpx.AsyncClient, admin: dict[str, str], engine: Engine
) -> None:
    site = await two_zones_on_one_source(client, admin)
    lawn = site["lawn"]
    await dry(client, admin, engine, lawn["sensor"]["id"])
    asked = await client.post(
        f"/v1/pumps/{lawn['pump']['id']}/activations",
        json={"duration_s": 60, "priority": "manual", "queue": "append"},
        headers=admin,
    )
    assert asked.status_code == 202, asked.text
    assert asked.json()["watering_id"] is None
    assert asked.json()["cycle"] is None
    cycles = await cycles_of(client, admin, lawn["pump"]["id"])
    assert [r["status"] for r in cycles] == ["started"] + ["superseded"] * 5
    superseded = await decisions(client, admin, lawn["zone"]["id"], outcome="superseded")
    assert len(superseded) == 5
    assert {d["watering_id"] for d in superseded} == {cycles[0]["watering_id"]}


async def test_a_zone_without_a_cycle_length_waters_in_one_run_as_before(
    client: httpx.AsyncClient, admin: dict[str, str], engine: Engine
) -> None:
    site = await two_zones_on_one_source(client, admin)
    bed = site["bed"]
    await dry(client, admin, engine, bed["sensor"]["id"])
    (run,) = await run_requests(client, admin, pump_id=bed["pump"]["id"])
    assert (run["cycle"], run["cycles"], run["soak_s"], run["duration_s"]) == (1, 1, 0, 120)
    assert run["watering_id"] is not None
    (started,) = await decisions(client, admin, bed["zone"]["id"], outcome="started")
    assert started["message"].startswith("started: 'hw-bed' for 120 s")
    assert "cycle" not in started["detail"]
    assert started["watering_id"] == run["watering_id"]


async def test_a_schedules_watering_is_split_after_et_scaling_and_runs_whole(
    client: httpx.AsyncClient, admin: dict[str, str], engine: Engine
) -> None:
    clock.move(datetime(2026, 7, 15, 9, 0, tzinfo=UTC) - clock.utcnow())  # a long, hot day
    zone = await client.post(
        "/v1/zones",
        json={
            "name": "lawn",
            "timezone": "UTC",
            "latitude": 52.52,
            "longitude": 13.40,
            "et_scaling": True,
            "et_baseline_mm": 3.0,
            "max_cycle_s": 5 * MINUTE,
            "min_soak_s": 10 * MINUTE,
        },
        headers=admin,
    )
    assert zone.status_code == 201, zone.text
    lawn = await make_pump(
        client, admin, "hw-lawn", zone_id=zone.json()["id"], max_runtime_s=4 * MINUTE
    )
    engine.weather.set(t_min_c=14, t_max_c=30)
    schedule = await client.post(
        "/v1/schedules",
        json={"zone_id": zone.json()["id"], "duration_s": 20 * MINUTE, "cron": "* * * * *"},
        headers=admin,
    )
    assert schedule.status_code == 201, schedule.text
    clock.move(timedelta(seconds=61))
    await engine.fire()

    level = compute_water_level(DailyWeather(clock.utcnow().date(), 14, 30, 0), 52.52, 3.0, 0, 200)
    assert level.pct > 100
    watering = round(20 * MINUTE * level.pct / 100)
    cycles = await cycles_of(client, admin, lawn["id"])
    # More than one run may hold (the pump's 4 min): the whole scaled watering, in cycles
    # of at most the pump's 4 minutes (shorter than the zone's 5).
    assert sum(r["duration_s"] for r in cycles) == watering
    assert max(r["duration_s"] for r in cycles) <= 4 * MINUTE
    assert len(cycles) == -(-watering // (4 * MINUTE))
    assert {r["priority"] for r in cycles} == {"scheduled"}
    assert {r["schedule_id"] for r in cycles} == {schedule.json()["id"]}
    assert all(f"water level {level.pct} %" in r["reason"] for r in cycles)


async def test_a_zones_pumps_take_their_cycles_in_rounds_and_a_superseded_one_ends_the_rest(
    client: httpx.AsyncClient, admin: dict[str, str], engine: Engine
) -> None:
    zone = (
        await client.post(
            "/v1/zones",
            json={"name": "orchard", "timezone": "UTC", "max_cycle_s": 300, "min_soak_s": 600},
            headers=admin,
        )
    ).json()
    pumps = []
    for name in ("hw-a", "hw-b"):
        # A source each: only the chain keeps the second pump waiting.
        source = (await client.post("/v1/water-sources", json={"name": name}, headers=admin)).json()
        pumps.append(
            await make_pump(
                client,
                admin,
                name,
                zone_id=zone["id"],
                water_source_id=source["id"],
                max_runtime_s=600,
            )
        )
    a, b = pumps
    sensor = await client.post(
        "/v1/sensors",
        json={"zone_id": zone["id"], "name": "m", "kind": "soil_moisture", "unit": "%"},
        headers=admin,
    )
    rule = await client.post(
        "/v1/threshold-rules",
        json={
            "zone_id": zone["id"],
            "start_below": 30,
            "stop_above": 45,
            "window_s": 60,
            "duration_s": 900,
        },
        headers=admin,
    )
    assert rule.status_code == 201, rule.text
    await dry(client, admin, engine, sensor.json()["id"])

    asked = {r["id"]: r for r in await run_requests(client, admin, zone_id=zone["id"])}
    (first,) = [r for r in asked.values() if r["after_id"] is None]
    chain = [first]
    while nxt := [r for r in asked.values() if r["after_id"] == chain[-1]["id"]]:
        chain += nxt
    name = {a["id"]: "a", b["id"]: "b"}
    assert [(name[r["pump_id"]], r["cycle"], r["cycles"], r["soak_s"]) for r in chain] == [
        ("a", 1, 3, 0),
        ("b", 1, 3, 0),
        ("a", 2, 3, 600),
        ("b", 2, 3, 0),
        ("a", 3, 3, 600),
        ("b", 3, 3, 0),
    ]
    assert len({r["watering_id"] for r in chain}) == 1

    # A person's run for pump a supersedes its waiting cycles; the watering ends with them.
    manual = await client.post(
        f"/v1/pumps/{a['id']}/activations",
        json={"duration_s": 60, "priority": "manual", "queue": "append"},
        headers=admin,
    )
    assert manual.status_code == 202, manual.text
    now = {r["id"]: r for r in await run_requests(client, admin, zone_id=zone["id"])}
    assert [(now[r["id"]]["status"], now[r["id"]]["last_reason"]) for r in chain] == [
        ("started", "started"),
        ("waiting", "after_previous"),
        ("superseded", "superseded"),
        ("superseded", "watering_ended"),
        ("superseded", "superseded"),
        ("superseded", "watering_ended"),
    ]


async def test_an_unsplit_zone_wide_watering_still_waters_its_other_pumps_when_one_is_cancelled(
    client: httpx.AsyncClient, admin: dict[str, str], engine: Engine
) -> None:
    zone = (
        await client.post("/v1/zones", json={"name": "beds", "timezone": "UTC"}, headers=admin)
    ).json()
    a = await make_pump(client, admin, "hw-a", zone_id=zone["id"])
    busy = await client.post(
        f"/v1/pumps/{a['id']}/activations", json={"duration_s": 5}, headers=admin
    )
    assert busy.status_code == 202, busy.text  # pump a is busy: the watering's first run waits
    spare = (await client.post("/v1/water-sources", json={"name": "spare"}, headers=admin)).json()
    b = await make_pump(client, admin, "hw-b", zone_id=zone["id"], water_source_id=spare["id"])
    sensor = await client.post(
        "/v1/sensors",
        json={"zone_id": zone["id"], "name": "m", "kind": "soil_moisture", "unit": "%"},
        headers=admin,
    )
    await client.post(
        "/v1/threshold-rules",
        json={"zone_id": zone["id"], "start_below": 30, "stop_above": 45, "duration_s": 5},
        headers=admin,
    )
    await dry(client, admin, engine, sensor.json()["id"])
    (for_a,) = await cycles_of(client, admin, a["id"])
    (for_b,) = await cycles_of(client, admin, b["id"])
    assert for_b["after_id"] == for_a["id"]
    cancelled = await client.delete(f"/v1/run-queue/{for_a['id']}", headers=admin)
    assert cancelled.json()["status"] == "cancelled"
    assert await engine.dispatch() == 1
    (for_b,) = await cycles_of(client, admin, b["id"])
    assert for_b["status"] == "started"
