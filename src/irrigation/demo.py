"""The demo site that `irrigation up` prepares, so a new user can act at once, and the
feeder (`irrigation demo`) that keeps its soil-moisture sensor talking."""

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from irrigation.auth import service as auth
from irrigation.auth.schemas import Scope
from irrigation.automation import service as automation
from irrigation.automation.models import Schedule, ThresholdRule
from irrigation.automation.schemas import ScheduleCreate, ThresholdRuleCreate
from irrigation.demo_soil import DRY_PER_READING, START_PCT, WET_PER_RUN
from irrigation.fleet import service as fleet
from irrigation.fleet.models import Zone
from irrigation.fleet.schemas import PumpCreate, SensorCreate, SensorKind, ZoneCreate
from irrigation.settings import Settings

DEMO_SITE = "demo"
DEMO_ZONE = "Demo field"
DEMO_PUMP = "Demo pump"
DEMO_HARDWARE_ID = "demo-pump-1"
DEMO_SENSOR = "Demo moisture"
DEMO_LATITUDE, DEMO_LONGITUDE = 52.52, 13.40  # Berlin, for the weather forecast


class DemoSite(NamedTuple):
    key: str
    zone_id: uuid.UUID | None  # None if someone renamed the demo zone


async def ensure_demo(session: AsyncSession, settings: Settings, saved_key: str | None) -> DemoSite:
    """The demo site with a zone, pump and sensor, a threshold rule and a schedule, and an
    admin key for it: the saved key if it still works, else a new one (keys are stored
    hashed, so they cannot be reprinted). Each part is created only when missing."""
    async with session.begin():
        site = await auth.get_or_create_site(session, DEMO_SITE, create=True)
        site_id = site.id
        has_zone = (await session.execute(select(Zone.id).where(Zone.site_id == site_id))).first()
        zone = (
            await session.execute(
                select(Zone)
                .where(Zone.site_id == site_id, Zone.name == DEMO_ZONE)
                .order_by(Zone.created_at)
                .limit(1)
            )
        ).scalar_one_or_none()
        if zone is not None and zone.latitude is None and zone.longitude is None:
            # A demo zone from before the weather settings: give it a place.
            zone.latitude, zone.longitude = DEMO_LATITUDE, DEMO_LONGITUDE
            zone.version += 1
        zone_id = zone.id if zone is not None else None
        has_rule = has_schedule = False
        if zone_id is not None:
            has_rule = (
                await session.execute(
                    select(ThresholdRule.id).where(ThresholdRule.zone_id == zone_id).limit(1)
                )
            ).first() is not None
            has_schedule = (
                await session.execute(
                    select(Schedule.id).where(Schedule.zone_id == zone_id).limit(1)
                )
            ).first() is not None
        if saved_key and await auth.authenticate(session, saved_key) is not None:
            key = saved_key
        else:
            _, key = await auth.create_key(session, site_id, "demo admin (up)", [Scope.admin])
    if not has_zone:
        created = await fleet.create_zone(
            session,
            site_id,
            ZoneCreate(
                name=DEMO_ZONE,
                timezone="Europe/Berlin",
                latitude=DEMO_LATITUDE,
                longitude=DEMO_LONGITUDE,
            ),
        )
        zone_id = created.id
        await fleet.create_pump(
            session,
            settings,
            site_id,
            PumpCreate(zone_id=zone_id, name=DEMO_PUMP, hardware_id=DEMO_HARDWARE_ID),
        )
        await fleet.create_sensor(
            session,
            site_id,
            SensorCreate(
                zone_id=zone_id, name=DEMO_SENSOR, kind=SensorKind.soil_moisture, unit="%"
            ),
        )
    if zone_id is not None and not has_rule:
        await automation.create_rule(
            session,
            settings,
            site_id,
            ThresholdRuleCreate(
                zone_id=zone_id,
                name="Demo: water when dry",
                # A 1-minute mean: one watering (+25 points from the feeder) lifts it above
                # stop_above within a minute, so the rule re-arms and the cycle goes on.
                start_below=30,
                stop_above=40,
                duration_s=20,
                window_s=60,
            ),
        )
    if zone_id is not None and not has_schedule:
        await automation.create_schedule(
            session,
            settings,
            site_id,
            ScheduleCreate(
                zone_id=zone_id,
                name="Demo: every 10 minutes",
                cron="*/10 * * * *",
                duration_s=15,
                skip_if_moisture_above=60,
            ),
        )
    return DemoSite(key, zone_id)


# The feeder ----------------------------------------------------------------------------


class FeederError(Exception):
    """Why the feeder cannot go on, in one line for people."""


def _detail(response: httpx.Response) -> str:
    try:
        return str(response.json()["detail"])
    except (ValueError, KeyError, TypeError):
        return response.text[:200]


def _check(response: httpx.Response, what: str) -> None:
    """A refused key or a missing scope is final; anything else non-2xx is too, here."""
    if response.status_code == 401:
        raise FeederError(f"the API refused the key (401): {_detail(response)}; give --key")
    if response.status_code == 403:
        raise FeederError(f"the key may not {what} (403): {_detail(response)}")
    if response.status_code >= 400:
        raise FeederError(f"cannot {what}: {response.status_code} {_detail(response)}")


async def _get(api: httpx.AsyncClient, path: str, what: str, **params: Any) -> Any:
    try:
        response = await api.get(path, params=params)
    except httpx.HTTPError as exc:
        raise FeederError(
            f"cannot reach the API at {api.base_url}: {type(exc).__name__}: {exc}"
        ) from None
    _check(response, what)
    return response.json()


async def find_sensor(
    api: httpx.AsyncClient, sensor_id: uuid.UUID | None = None
) -> tuple[uuid.UUID, uuid.UUID, list[str]]:
    """The sensor to feed (by id, else the demo site's "Demo moisture"), its site, and the
    hardware ids of the pumps of its zone, whose runs wet the soil."""
    if sensor_id is None:
        page = await _get(
            api, "/v1/sensors", "list sensors", kind=SensorKind.soil_moisture.value, limit=500
        )
        found = [s for s in page["items"] if s["name"] == DEMO_SENSOR]
        if not found:
            raise FeederError(f'no sensor named "{DEMO_SENSOR}" for this key: give --sensor ID')
        sensor = found[0]
    else:
        sensor = await _get(api, f"/v1/sensors/{sensor_id}", f"read sensor {sensor_id}")
    pumps = await _get(api, "/v1/pumps", "list pumps", zone_id=sensor["zone_id"], limit=500)
    hardware_ids = sorted({p["hardware_id"] for p in pumps["items"]})
    return uuid.UUID(sensor["id"]), uuid.UUID(sensor["site_id"]), hardware_ids


RunKey = tuple[str, str, str]


@dataclass
class Tick:
    """One reading: the value sent, the new pump runs that wetted the soil before it, and
    what went wrong on the way (the feeder goes on)."""

    value: float
    new_runs: int = 0
    problems: list[str] = field(default_factory=list)

    def line(self, now: datetime | None = None) -> str:
        at = (now or datetime.now()).strftime("%H:%M:%S")
        text = f"{at}  moisture {self.value:5.1f} %"
        if self.new_runs:
            runs = "run" if self.new_runs == 1 else "runs"
            text += f"  watered (+{WET_PER_RUN:g} after {self.new_runs} new pump {runs})"
        for problem in self.problems:
            text += f"  [{problem}]"
        return text


@dataclass
class Feeder:
    """Soil that dries by DRY_PER_READING points per reading and is wetted by WET_PER_RUN
    (up to 100) for each new run of its pumps (its site's devices) in the simulator's
    truth."""

    api: httpx.AsyncClient
    simulator: httpx.AsyncClient
    sensor_id: uuid.UUID
    site_id: uuid.UUID
    hardware_ids: list[str]
    value: float = START_PCT
    readings: int = 0
    seen: set[RunKey] | None = None
    publish: Callable[[dict[str, Any]], Awaitable[None]] | None = None
    """Sends each reading over MQTT instead of `POST /v1/readings` (`demo --mqtt`)."""

    async def _runs(self) -> set[RunKey]:
        response = await self.simulator.get("/truth", params={"site_id": str(self.site_id)})
        response.raise_for_status()
        return {
            (run["hardware_id"], run["command_id"], run["started_at"])
            for run in response.json()["runs"]
            if run["hardware_id"] in self.hardware_ids
        }

    async def _new_runs(self, problems: list[str]) -> int:
        """Runs since the last look; the first look only learns what ran before."""
        try:
            runs = await self._runs()
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            problems.append(f"simulator: {type(exc).__name__}")
            return 0
        if self.seen is None:
            self.seen = runs
            return 0
        new = runs - self.seen
        self.seen |= runs
        return len(new)

    async def prime(self) -> None:
        """Learn the runs that happened before the feeder started."""
        await self._new_runs([])

    async def step(self) -> Tick:
        tick = Tick(self.value)
        tick.new_runs = await self._new_runs(tick.problems)
        if tick.new_runs:
            self.value = min(100.0, self.value + WET_PER_RUN * tick.new_runs)
        elif self.readings:  # the first reading is the start value
            self.value = max(0.0, self.value - DRY_PER_READING)
        tick.value = self.value
        reading = {
            "sensor_id": str(self.sensor_id),
            "ts": datetime.now(UTC).isoformat(),
            "value": self.value,
        }
        if self.publish is not None:
            try:
                await self.publish(reading)
            except Exception as exc:  # the feeder goes on; the broker may come back
                tick.problems.append(f"not published: {type(exc).__name__}: {exc}")
            self.readings += 1
            return tick
        try:
            response = await self.api.post("/v1/readings", json={"readings": [reading]})
        except httpx.HTTPError as exc:
            tick.problems.append(f"not sent: {type(exc).__name__}")
        else:
            if response.status_code in (401, 403):
                _check(response, "send readings")
            if response.status_code != 200:
                tick.problems.append(f"not sent: {response.status_code} {_detail(response)}")
            elif response.json().get("quarantined"):
                reason = response.json()["quarantine"][0]["reason"]
                tick.problems.append(f"quarantined: {reason}")
        self.readings += 1
        return tick


async def run_feeder(
    feeder: Feeder,
    *,
    interval_s: float,
    count: int | None = None,
    echo: Callable[[str], None] = print,
    quiet: bool = False,
) -> None:
    """A reading at once, then one every `interval_s`, `count` times (None: for ever).
    Quiet: only the lines with a watering or a problem."""
    if feeder.seen is None:
        await feeder.prime()
    sent = 0
    while count is None or sent < count:
        if sent:
            await asyncio.sleep(interval_s)
        tick = await feeder.step()
        sent += 1
        if not quiet or tick.new_runs or tick.problems:
            echo(tick.line())
