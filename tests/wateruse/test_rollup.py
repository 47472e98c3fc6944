"""The water-use rollup: runs as runtime x nominal flow (estimated), attached meters'
readings integrated (measured), split at local midnight, across a DST change, and what
counts for a pump, its zone, its source and the site. Expected litres are computed here
from the runs and readings a test made, not from the service's SQL."""

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

import httpx
import pytest

from irrigation.db import create_engine, create_sessionmaker
from irrigation.ingest import flow_hours, store
from irrigation.ingest.rows import encode
from irrigation.settings import Settings
from tests.support.api import Headers
from tests.support.factories import make_pump, make_sensor, make_water_source, make_zone
from tests.wateruse.helpers import (
    Sessions,
    by_day,
    ended_run,
    every,
    roll_up,
    send_flows,
    site_id,
    water_use,
)

MINUTE = timedelta(minutes=1)


@pytest.fixture
async def sessions(settings: Settings) -> AsyncIterator[Sessions]:
    engine = create_engine(settings)
    yield create_sessionmaker(engine)
    await engine.dispose()


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


async def test_a_run_without_a_meter_is_its_runtime_times_nominal_flow_marked_estimated(
    client: httpx.AsyncClient, admin: Headers, sessions: Sessions, settings: Settings
) -> None:
    site = await site_id(client, admin)
    zone = await make_zone(client, admin, timezone="Europe/Berlin")
    source = await make_water_source(client, admin)
    pump = await make_pump(
        client, admin, zone_id=zone["id"], water_source_id=source["id"], nominal_flow_lpm=30
    )
    # 20 minutes at 30 L/min, 11:00-11:20 in Berlin (CET).
    await ended_run(sessions, site, pump, at("2026-11-10T10:00:00"), at("2026-11-10T10:20:00"))
    assert await roll_up(sessions, settings) == 1

    params = {"from": "2026-11-09", "to": "2026-11-11"}
    for path in (
        f"/v1/pumps/{pump['id']}",
        f"/v1/zones/{zone['id']}",
        f"/v1/water-sources/{source['id']}",
        "/v1/sites/current",
    ):
        body = await water_use(client, admin, path, **params)
        days = by_day(body)
        assert list(days) == ["2026-11-09", "2026-11-10", "2026-11-11"], path
        assert days["2026-11-10"] == {
            "start": "2026-11-10",
            "litres": 600.0,
            "measured_litres": 0.0,
            "estimated_litres": 600.0,
            "estimated": True,
            "runtime_without_flow_s": 0.0,
        }, path
        assert days["2026-11-09"]["litres"] == days["2026-11-11"]["litres"] == 0.0
        assert days["2026-11-09"]["estimated"] is False
        assert (body["litres"], body["estimated"]) == (600.0, True)
    # Accounted once: a second rollup finds no mark, and adds nothing.
    assert await roll_up(sessions, settings) == 0
    body = await water_use(client, admin, "/v1/sites/current", **params)
    assert body["litres"] == 600.0


async def test_a_run_across_local_midnight_splits_between_the_two_days(
    client: httpx.AsyncClient, admin: Headers, sessions: Sessions, settings: Settings
) -> None:
    site = await site_id(client, admin)
    zone = await make_zone(client, admin, timezone="Europe/Berlin")
    pump = await make_pump(client, admin, zone_id=zone["id"], nominal_flow_lpm=60)
    # 23:30 - 00:45 in Berlin: 30 minutes on the 10th, 45 on the 11th. In UTC the whole
    # run lies on the 10th.
    await ended_run(sessions, site, pump, at("2026-11-10T22:30:00"), at("2026-11-10T23:45:00"))
    await roll_up(sessions, settings)

    days = by_day(await water_use(client, admin, f"/v1/zones/{zone['id']}", to="2026-11-11"))
    assert days["2026-11-10"]["litres"] == 30 * 60
    assert days["2026-11-11"]["litres"] == 45 * 60


async def test_a_pump_without_nominal_flow_reports_its_runtime_as_water_unknown(
    client: httpx.AsyncClient, admin: Headers, sessions: Sessions, settings: Settings
) -> None:
    site = await site_id(client, admin)
    pump = await make_pump(client, admin)  # a UTC zone of its own, no nominal flow
    await ended_run(sessions, site, pump, at("2026-11-10T08:00:00"), at("2026-11-10T08:01:30"))
    await roll_up(sessions, settings)

    days = by_day(await water_use(client, admin, f"/v1/pumps/{pump['id']}", to="2026-11-10"))
    assert days["2026-11-10"]["litres"] == 0.0
    assert days["2026-11-10"]["estimated"] is False
    assert days["2026-11-10"]["runtime_without_flow_s"] == 90.0


async def test_a_metered_pump_counts_its_readings_by_the_trapezoid_rule_not_its_runtime(
    client: httpx.AsyncClient, admin: Headers, sessions: Sessions, settings: Settings
) -> None:
    site = await site_id(client, admin)
    zone = await make_zone(client, admin, timezone="UTC")
    pump = await make_pump(client, admin, zone_id=zone["id"], nominal_flow_lpm=100)
    meter = await make_sensor(
        client, admin, zone["id"], kind="flow", unit="L/min", pump_id=pump["id"]
    )
    start = at("2026-11-10T10:00:00")
    # A ramp: 0, 10, 20, 30 L/min a minute apart, then 30 for 6 more minutes, then 0.
    flows = [0.0, 10.0, 20.0, 30.0, 30.0, 30.0, 30.0, 30.0, 30.0, 30.0, 0.0]
    await send_flows(
        client, admin, meter["id"], [(start + n * MINUTE, v) for n, v in enumerate(flows)]
    )
    await ended_run(sessions, site, pump, start, start + 10 * MINUTE)
    await roll_up(sessions, settings)

    expected = sum((a + b) / 2 for a, b in itertools.pairwise(flows))  # x 1 minute
    assert expected == 240.0
    for path in (f"/v1/pumps/{pump['id']}", f"/v1/zones/{zone['id']}", "/v1/sites/current"):
        day = by_day(await water_use(client, admin, path, to="2026-11-10"))["2026-11-10"]
        # Not the run's 10 minutes x 100 L/min: the meter counts, and alone.
        assert day["measured_litres"] == pytest.approx(expected), path
        assert (day["estimated_litres"], day["estimated"]) == (0.0, False), path


async def test_readings_further_apart_than_the_gap_are_not_integrated(
    client: httpx.AsyncClient, admin: Headers, sessions: Sessions, settings: Settings
) -> None:
    zone = await make_zone(client, admin, timezone="UTC")
    pump = await make_pump(client, admin, zone_id=zone["id"])
    meter = await make_sensor(
        client, admin, zone["id"], kind="flow", unit="L/min", pump_id=pump["id"]
    )
    start = at("2026-11-10T10:00:00")
    gap = timedelta(seconds=settings.water_use_max_gap_s)
    # Two minutes at 60 L/min, a silence longer than the gap, two minutes more.
    later = start + 2 * MINUTE + gap + MINUTE
    times = [*every(start, start + 2 * MINUTE, MINUTE), *every(later, later + 2 * MINUTE, MINUTE)]
    await send_flows(client, admin, meter["id"], [(t, 60.0) for t in times])
    await roll_up(sessions, settings)

    day = by_day(await water_use(client, admin, f"/v1/pumps/{pump['id']}", to="2026-11-10"))
    assert day["2026-11-10"]["measured_litres"] == pytest.approx(4 * 60.0)


async def test_late_and_resent_readings_integrate_the_day_again_exactly(
    client: httpx.AsyncClient, admin: Headers, sessions: Sessions, settings: Settings
) -> None:
    zone = await make_zone(client, admin, timezone="UTC")
    pump = await make_pump(client, admin, zone_id=zone["id"])
    meter = await make_sensor(
        client, admin, zone["id"], kind="flow", unit="L/min", pump_id=pump["id"]
    )
    start = at("2026-11-10T10:00:00")
    await send_flows(client, admin, meter["id"], [(start, 10.0), (start + 2 * MINUTE, 10.0)])
    await roll_up(sessions, settings)
    path = f"/v1/pumps/{pump['id']}"
    assert (await water_use(client, admin, path, to="2026-11-10"))["litres"] == 20.0

    # A reading between the two, sent late: 10 -> 50 -> 10 over the same two minutes.
    await send_flows(client, admin, meter["id"], [(start + MINUTE, 50.0)])
    await roll_up(sessions, settings)
    assert (await water_use(client, admin, path, to="2026-11-10"))["litres"] == 60.0

    # The same readings again (duplicates), and a rollup with nothing marked: no change.
    await send_flows(client, admin, meter["id"], [(start, 10.0), (start + MINUTE, 50.0)])
    await roll_up(sessions, settings)
    assert await roll_up(sessions, settings) == 0
    assert (await water_use(client, admin, path, to="2026-11-10"))["litres"] == 60.0


async def test_a_source_with_a_meter_is_counted_by_it_and_its_pumps_by_their_runs(
    client: httpx.AsyncClient, admin: Headers, sessions: Sessions, settings: Settings
) -> None:
    site = await site_id(client, admin)
    zone = await make_zone(client, admin, timezone="UTC")
    source = await make_water_source(client, admin)
    main = await make_sensor(
        client, admin, zone["id"], kind="flow", unit="L/min", water_source_id=source["id"]
    )
    pump = await make_pump(
        client, admin, zone_id=zone["id"], water_source_id=source["id"], nominal_flow_lpm=60
    )
    start = at("2026-11-10T06:00:00")
    await ended_run(sessions, site, pump, start, start + 10 * MINUTE)
    # The main measured 55 L/min over those 10 minutes (the pump's nominal flow is 60).
    await send_flows(
        client, admin, main["id"], [(t, 55.0) for t in every(start, start + 10 * MINUTE, MINUTE)]
    )
    await roll_up(sessions, settings)

    def day_of(body: dict[str, object]) -> dict[str, object]:
        return by_day(body)["2026-11-10"]  # type: ignore[arg-type]

    pump_day = day_of(await water_use(client, admin, f"/v1/pumps/{pump['id']}", to="2026-11-10"))
    zone_day = day_of(await water_use(client, admin, f"/v1/zones/{zone['id']}", to="2026-11-10"))
    source_path = f"/v1/water-sources/{source['id']}"
    source_day = day_of(await water_use(client, admin, source_path, to="2026-11-10"))
    site_day = day_of(await water_use(client, admin, "/v1/sites/current", to="2026-11-10"))
    assert pump_day["litres"] == zone_day["litres"] == 600.0
    assert pump_day["estimated"] is True
    # The source's own meter, not the pump's estimate, and never both.
    assert source_day["litres"] == site_day["litres"] == 550.0
    assert source_day["estimated"] is site_day["estimated"] is False


async def test_water_use_per_day_across_a_dst_change_lands_in_the_local_days(
    client: httpx.AsyncClient, admin: Headers, sessions: Sessions, settings: Settings
) -> None:
    """Europe/Berlin, 2026-10-25: clocks go back at 03:00 CEST, so the local day runs from
    2026-10-24T22:00Z to 2026-10-25T23:00Z, 25 hours."""
    site = await site_id(client, admin)
    zone = await make_zone(client, admin, timezone="Europe/Berlin")
    source = await make_water_source(client, admin)
    estimated = await make_pump(
        client, admin, zone_id=zone["id"], water_source_id=source["id"], nominal_flow_lpm=60
    )
    metered = await make_pump(client, admin, zone_id=zone["id"], water_source_id=source["id"])
    meter = await make_sensor(
        client, admin, zone["id"], kind="flow", unit="L/min", pump_id=metered["id"]
    )
    # 23:30 CEST on the 24th to 00:30 CEST on the 25th: half an hour in each.
    await ended_run(sessions, site, estimated, at("2026-10-24T21:30:00"), at("2026-10-24T22:30:00"))
    # 23:30 CET on the 25th to 00:30 CET on the 26th: half an hour in each. Counted in
    # summer time (UTC+2), it would all land on the 26th.
    await ended_run(sessions, site, estimated, at("2026-10-25T22:30:00"), at("2026-10-25T23:30:00"))
    # The meter: 10 L/min every minute from 23:00 CEST on the 24th to 01:00 CET on the 26th.
    readings = every(at("2026-10-24T21:00:00"), at("2026-10-26T00:00:00"), MINUTE)
    await send_flows(client, admin, meter["id"], [(t, 10.0) for t in readings])
    await roll_up(sessions, settings)

    params = {"from": "2026-10-24", "to": "2026-10-26"}
    days = by_day(await water_use(client, admin, f"/v1/pumps/{metered['id']}", **params))
    # One hour on the 24th, all 25 hours of the 25th, one hour on the 26th.
    assert days["2026-10-24"]["measured_litres"] == pytest.approx(60 * 10)
    assert days["2026-10-25"]["measured_litres"] == pytest.approx(25 * 60 * 10)
    assert days["2026-10-26"]["measured_litres"] == pytest.approx(60 * 10)
    days = by_day(await water_use(client, admin, f"/v1/pumps/{estimated['id']}", **params))
    assert [days[d]["estimated_litres"] for d in params_days()] == [1800.0, 3600.0, 1800.0]
    days = by_day(await water_use(client, admin, f"/v1/zones/{zone['id']}", **params))
    assert [days[d]["litres"] for d in params_days()] == pytest.approx(
        [600 + 1800, 15000 + 3600, 600 + 1800]
    )
    assert all(days[d]["estimated"] for d in params_days())

    october = await water_use(
        client,
        admin,
        f"/v1/zones/{zone['id']}",
        bucket="month",
        **{"from": "2026-10-01", "to": "2026-10-31"},
    )
    assert [b["start"] for b in october["buckets"]] == ["2026-10-01"]
    assert october["buckets"][0]["litres"] == pytest.approx(2400 + 18600 + 2400)


def params_days() -> list[str]:
    return ["2026-10-24", "2026-10-25", "2026-10-26"]


async def test_every_batch_sent_while_rollups_run_is_integrated(
    client: httpx.AsyncClient, admin: Headers, sessions: Sessions, settings: Settings
) -> None:
    """Batches of a meter, each the only one of its day, race two rollups that run over and
    over: a mark taken before its readings were visible, or lost to a race, would leave its
    day short, since nothing else marks that day again."""
    zone = await make_zone(client, admin, timezone="UTC")
    pump = await make_pump(client, admin, zone_id=zone["id"])
    meter = await make_sensor(
        client, admin, zone["id"], kind="flow", unit="L/min", pump_id=pump["id"]
    )
    first = at("2026-10-01T06:00:00")
    batches = [
        [(first + timedelta(days=d, seconds=10 * n), float((n * 7 + d) % 13)) for n in range(60)]
        for d in range(24)
    ]
    sending = True

    async def rollups() -> None:
        while sending:
            await roll_up(sessions, settings)
            await asyncio.sleep(0)

    async def send(some: list[list[tuple[datetime, float]]]) -> None:
        for batch in some:
            await send_flows(client, admin, meter["id"], batch)

    racing = [asyncio.create_task(rollups()) for _ in range(2)]
    try:
        await asyncio.gather(*(send(batches[k::4]) for k in range(4)))
    finally:
        sending = False
        await asyncio.gather(*racing)
    await roll_up(sessions, settings)

    body = await water_use(
        client, admin, f"/v1/pumps/{pump['id']}", **{"from": "2026-10-01", "to": "2026-10-24"}
    )
    got = [b["measured_litres"] for b in body["buckets"]]
    # Readings 10 s apart: each pair encloses (a + b) / 2 L/min for 1/6 minute.
    expected = [
        sum((a + b) / 2 / 6 for (_, a), (_, b) in itertools.pairwise(batch)) for batch in batches
    ]
    assert got == pytest.approx(expected, abs=0.0005)  # litres are given to the millilitre


class _Reading(NamedTuple):
    sensor_id: uuid.UUID
    ts: datetime
    value: float
    quality: int = 100


async def test_a_mark_held_by_an_uncommitted_batch_is_left_for_a_later_round(
    client: httpx.AsyncClient, admin: Headers, sessions: Sessions, settings: Settings
) -> None:
    """The hour's mark exists (an earlier batch's, not yet rolled up) when a second batch
    writes into the same hour: the second batch's upsert holds the mark until it commits,
    so the rollup leaves it (without waiting) and integrates both batches after."""
    zone = await make_zone(client, admin, timezone="UTC")
    pump = await make_pump(client, admin, zone_id=zone["id"])
    meter = await make_sensor(
        client, admin, zone["id"], kind="flow", unit="L/min", pump_id=pump["id"]
    )
    start = at("2026-11-10T10:00:00")
    await send_flows(client, admin, meter["id"], [(start, 10.0), (start + MINUTE, 10.0)])

    sensor = uuid.UUID(meter["id"])
    async with sessions() as writer, writer.begin():
        written = await store.write_readings(
            writer, encode([_Reading(sensor, start + 2 * MINUTE, 10.0)])
        )
        await flow_hours.mark(writer, written.stored, {sensor})
        assert await asyncio.wait_for(roll_up(sessions, settings), timeout=10) == 0
    assert await roll_up(sessions, settings) == 1

    body = await water_use(client, admin, f"/v1/pumps/{pump['id']}", to="2026-11-10")
    assert body["measured_litres"] == 20.0
