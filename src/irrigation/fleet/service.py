"""Fleet use cases. Each write opens and commits its own transaction."""

import uuid
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from irrigation import feed
from irrigation.common import repository as repo
from irrigation.common.clock import utcnow
from irrigation.common.errors import Invalid, VersionRequired
from irrigation.common.pagination import PageParams
from irrigation.common.shaping import columns_of
from irrigation.fleet.errors import RUN_BOUND_FIELDS, PumpRunning
from irrigation.fleet.models import Pump, Sensor, WaterSource, Zone
from irrigation.fleet.schemas import (
    DEFAULT_RANGES,
    PumpCreate,
    PumpOut,
    PumpStatus,
    PumpUpdate,
    SensorCreate,
    SensorKind,
    SensorUpdate,
    WaterSourceCreate,
    WaterSourceUpdate,
    ZoneCreate,
    ZoneUpdate,
)
from irrigation.settings import Settings

DEFAULT_MAX_RUNTIME_S = 30
DEFAULT_COOLDOWN_S = 900


def require_version(body_version: int | None, if_match: int | None) -> int:
    version = body_version if body_version is not None else if_match
    if version is None:
        raise VersionRequired("send the version you read, as `version` or `If-Match`")
    return version


# Zones ---------------------------------------------------------------------------------


async def create_zone(session: AsyncSession, site_id: uuid.UUID, body: ZoneCreate) -> Zone:
    async with session.begin():
        zone = Zone(site_id=site_id, **body.model_dump())
        await repo.flush_new(session, zone)
    return zone


async def update_zone(
    session: AsyncSession, site_id: uuid.UUID, zone_id: uuid.UUID, version: int, body: ZoneUpdate
) -> Zone:
    async with session.begin():
        values = body.changes()
        current = await repo.get_owned(session, Zone, site_id, zone_id, for_update=True)
        if current.version == version:
            low = values.get("et_min_pct", current.et_min_pct)
            if low > values.get("et_max_pct", current.et_max_pct):
                raise Invalid("et_min_pct must not be above et_max_pct", field="body.et_min_pct")
        return await repo.update_versioned(session, Zone, site_id, zone_id, version, values)


# Water sources -------------------------------------------------------------------------


async def create_water_source(
    session: AsyncSession, site_id: uuid.UUID, body: WaterSourceCreate
) -> WaterSource:
    async with session.begin():
        source = WaterSource(site_id=site_id, **body.model_dump())
        await repo.flush_new(session, source)
    return source


async def update_water_source(
    session: AsyncSession,
    site_id: uuid.UUID,
    source_id: uuid.UUID,
    version: int,
    body: WaterSourceUpdate,
) -> WaterSource:
    async with session.begin():
        return await repo.update_versioned(
            session, WaterSource, site_id, source_id, version, body.changes()
        )


async def reset_water_source(
    session: AsyncSession, site_id: uuid.UUID, source_id: uuid.UUID
) -> WaterSource:
    """Clear the source's leak latch and its halt: runs are admitted on it again. Its
    stopped runs are not restarted. The row is locked first, like every admission to it."""
    async with session.begin():
        source = await repo.get_owned(session, WaterSource, site_id, source_id, for_update=True)
        source.leak_detected_at = None
        source.leak_flow_lpm = None
        source.halted_at = None
    return source


# Pumps ---------------------------------------------------------------------------------


def _check_limits(settings: Settings, max_runtime_s: int | None, cooldown_s: int | None) -> None:
    if max_runtime_s is not None and max_runtime_s > settings.max_runtime_cap_s:
        raise Invalid(
            f"max_runtime_s may not exceed the site's hard cap of {settings.max_runtime_cap_s} s",
            field="body.max_runtime_s",
            limit=settings.max_runtime_cap_s,
        )
    if cooldown_s is not None and cooldown_s < settings.min_cooldown_s:
        raise Invalid(
            f"cooldown_s may not be below the site's minimum of {settings.min_cooldown_s} s",
            field="body.cooldown_s",
            limit=settings.min_cooldown_s,
        )


async def _default_water_source(session: AsyncSession, zone: Zone) -> uuid.UUID:
    # The zone row is locked by `_reference`, so two concurrent creates make one default.
    if zone.default_water_source_id is not None:
        return zone.default_water_source_id
    name = f"{zone.name} (default)"[:180]
    taken = await session.execute(
        select(WaterSource.id).where(WaterSource.site_id == zone.site_id, WaterSource.name == name)
    )
    if taken.first() is not None:  # an operator already used the name: keep it unique
        name = f"{name} {zone.id.hex[:8]}"
    source = WaterSource(site_id=zone.site_id, name=name)
    await repo.flush_new(session, source)
    zone.default_water_source_id = source.id
    zone.version += 1
    return source.id


async def create_pump(
    session: AsyncSession, settings: Settings, site_id: uuid.UUID, body: PumpCreate
) -> Pump:
    _check_limits(settings, body.max_runtime_s, body.cooldown_s)
    async with session.begin():
        zone: Zone = await repo.get_referenced(session, Zone, site_id, body.zone_id, "zone_id")
        if body.water_source_id is None:
            source_id = await _default_water_source(session, zone)
        else:
            await repo.get_referenced(
                session, WaterSource, site_id, body.water_source_id, "water_source_id"
            )
            source_id = body.water_source_id
        pump = Pump(
            site_id=site_id,
            zone_id=zone.id,
            water_source_id=source_id,
            name=body.name,
            hardware_id=body.hardware_id,
            max_runtime_s=body.max_runtime_s
            or min(DEFAULT_MAX_RUNTIME_S, settings.max_runtime_cap_s),
            cooldown_s=body.cooldown_s
            if body.cooldown_s is not None
            else max(DEFAULT_COOLDOWN_S, settings.min_cooldown_s),
            nominal_flow_lpm=body.nominal_flow_lpm,
            flow_settle_s=body.flow_settle_s,
            flow_check_s=body.flow_check_s,
            low_flow_pct=body.low_flow_pct,
            high_flow_pct=body.high_flow_pct,
            enabled=body.enabled,
        )
        await repo.flush_new(session, pump)
    return pump


async def update_pump(
    session: AsyncSession,
    settings: Settings,
    site_id: uuid.UUID,
    pump_id: uuid.UUID,
    version: int,
    body: PumpUpdate,
) -> Pump:
    _check_limits(settings, body.max_runtime_s, body.cooldown_s)
    values = body.changes()
    async with session.begin():
        if body.zone_id is not None:
            await repo.get_referenced(session, Zone, site_id, body.zone_id, "zone_id")
        if body.water_source_id is not None:
            await repo.get_referenced(
                session, WaterSource, site_id, body.water_source_id, "water_source_id"
            )
        # On the locked row: an admission holds the same lock until its run is on the row.
        current = await repo.get_owned(session, Pump, site_id, pump_id, for_update=True)
        if current.version == version and current.active_activation_id is not None:
            moved = [
                f for f in RUN_BOUND_FIELDS if f in values and values[f] != getattr(current, f)
            ]
            if moved:
                raise PumpRunning(moved)
        was_enabled = current.enabled
        pump = await repo.update_versioned(session, Pump, site_id, pump_id, version, values)
        if pump.enabled != was_enabled:  # its status: disabled, or back from it
            emit_pump(session, pump)
    return pump


def pump_status(pump: Pump, now: datetime) -> PumpStatus:
    """Derived on read, so no timer has to flip a stored state. `running` covers a run that
    is queued or starting too: the pump is taken from the moment a run is admitted."""
    if pump.fault:
        return PumpStatus.fault
    if pump.active_activation_id is not None:
        return PumpStatus.running
    if not pump.enabled:
        return PumpStatus.disabled
    if pump.cooldown_until is not None and pump.cooldown_until > now:
        return PumpStatus.cooldown
    return PumpStatus.idle


def pump_out(pump: Pump, now: datetime | None = None) -> PumpOut:
    """The pump as the API shows it (and its live event carries it), its status as of `now`."""
    status = pump_status(pump, now or utcnow())
    return PumpOut.model_validate({**columns_of(pump, PumpOut, "status"), "status": status})


def emit_pump(session: AsyncSession, pump: Pump, now: datetime | None = None) -> None:
    """The pump's live event (PumpOut), published if the transaction commits: for every
    change of its status, fault, cooldown or active run (pumps/live.py, and `enabled`
    here)."""
    now = now or utcnow()
    data = pump_out(pump, now).model_dump(mode="json")
    feed.emit(session, feed.EventType.pump, pump.site_id, data, now)


# Sensors -------------------------------------------------------------------------------


def valid_range(sensor: Sensor) -> tuple[float, float]:
    return range_of(sensor.kind, sensor.min_value, sensor.max_value)


def range_of(kind: str, min_value: float | None, max_value: float | None) -> tuple[float, float]:
    low, high = DEFAULT_RANGES.get(SensorKind(kind), (-1e9, 1e9))
    return (
        min_value if min_value is not None else low,
        max_value if max_value is not None else high,
    )


async def create_sensor(session: AsyncSession, site_id: uuid.UUID, body: SensorCreate) -> Sensor:
    async with session.begin():
        await repo.get_referenced(session, Zone, site_id, body.zone_id, "zone_id")
        await _check_attachment(session, site_id, body.pump_id, body.water_source_id)
        _check_range(body.kind, body.min_value, body.max_value, body.model_fields_set)
        sensor = Sensor(site_id=site_id, **body.model_dump())
        await repo.flush_new(session, sensor)
    return sensor


async def update_sensor(
    session: AsyncSession,
    site_id: uuid.UUID,
    sensor_id: uuid.UUID,
    version: int,
    body: SensorUpdate,
) -> Sensor:
    async with session.begin():
        if body.zone_id is not None:
            await repo.get_referenced(session, Zone, site_id, body.zone_id, "zone_id")
        await _check_attachment(session, site_id, body.pump_id, body.water_source_id)
        values = body.changes()  # min/max and the alert band may be cleared with a null
        # Checked on the locked row before the UPDATE, whose CHECK (min < max) would otherwise
        # fail as a 500. A stale version is left for `update_versioned` to refuse with 409.
        current = await repo.get_owned(session, Sensor, site_id, sensor_id, for_update=True)
        if current.version == version:
            merged = {"min_value": current.min_value, "max_value": current.max_value, **values}
            _check_range(current.kind, merged["min_value"], merged["max_value"], set(values))
            band = {"alert_min": current.alert_min, "alert_max": current.alert_max, **values}
            low, high = band["alert_min"], band["alert_max"]
            if low is not None and high is not None and low >= high:
                raise Invalid("alert_min must be below alert_max", field="body.alert_min")
            _check_attached_kind(current, values)
        return await repo.update_versioned(session, Sensor, site_id, sensor_id, version, values)


async def _check_attachment(
    session: AsyncSession,
    site_id: uuid.UUID,
    pump_id: uuid.UUID | None,
    water_source_id: uuid.UUID | None,
) -> None:
    """The pump or source a flow meter is attached to is the site's own (422 otherwise)."""
    if pump_id is not None:
        await repo.get_referenced(session, Pump, site_id, pump_id, "pump_id")
    if water_source_id is not None:
        await repo.get_referenced(session, WaterSource, site_id, water_source_id, "water_source_id")


def _check_attached_kind(current: Sensor, values: dict[str, Any]) -> None:
    """A PATCH leaves at most one attachment, and only on a flow sensor: checked against the
    stored row, whose CHECKs would otherwise fail as a 500."""
    pump_id = values.get("pump_id", current.pump_id)
    source_id = values.get("water_source_id", current.water_source_id)
    if pump_id is not None and source_id is not None:
        sent = "pump_id" if "pump_id" in values else "water_source_id"
        raise Invalid("a sensor meters a pump or a water source, not both", field=f"body.{sent}")
    if (pump_id is not None or source_id is not None) and current.kind != SensorKind.flow:
        sent = "pump_id" if pump_id is not None else "water_source_id"
        raise Invalid(
            "only a flow sensor can be attached to a pump or a water source", field=f"body.{sent}"
        )


def _check_range(
    kind: str, min_value: float | None, max_value: float | None, sent: set[str]
) -> None:
    low, high = range_of(kind, min_value, max_value)
    if low >= high:
        field = "max_value" if sent & {"min_value", "max_value"} == {"max_value"} else "min_value"
        raise Invalid(f"the valid range would be empty ({low} >= {high})", field=f"body.{field}")


# The four fleet tables, each owned by a site: what the generic helpers below serve.
FleetRow = TypeVar("FleetRow", Zone, WaterSource, Pump, Sensor)


async def get(
    session: AsyncSession, model: type[FleetRow], site_id: uuid.UUID, row_id: uuid.UUID
) -> FleetRow:
    return await repo.get_owned(session, model, site_id, row_id)


async def list_rows(
    session: AsyncSession,
    model: type[FleetRow],
    site_id: uuid.UUID,
    params: PageParams,
    **filters: uuid.UUID | str | None,
) -> tuple[list[FleetRow], str | None]:
    """A page of the site's rows; each filter names a column that must equal its value."""
    columns = model.__table__.columns
    clauses = [columns[name] == value for name, value in filters.items() if value is not None]
    return await repo.list_owned(session, model, site_id, params, *clauses)


async def delete(
    session: AsyncSession, model: type[FleetRow], site_id: uuid.UUID, row_id: uuid.UUID
) -> None:
    async with session.begin():
        await repo.delete_owned(session, model, site_id, row_id)
