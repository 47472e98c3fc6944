"""HTTP routes for zones, water sources, pumps and sensors (thin: parse, authorize, shape)."""

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response

from irrigation.auth.deps import AdminPrincipal, ControlPrincipal, ReadPrincipal
from irrigation.common.deps import SettingsDep
from irrigation.common.http import if_match_version
from irrigation.common.limiter import RateClass, limited_as
from irrigation.common.openapi import problems
from irrigation.common.pagination import Page, PageParams, page_params
from irrigation.common.shaping import columns_of
from irrigation.db import ReadSessionDep, SessionDep
from irrigation.fleet import service
from irrigation.fleet.models import Pump, Sensor, WaterSource, Zone
from irrigation.fleet.schemas import (
    PumpCreate,
    PumpOut,
    PumpUpdate,
    SensorCreate,
    SensorKind,
    SensorOut,
    SensorUpdate,
    WaterSourceCreate,
    WaterSourceOut,
    WaterSourceUpdate,
    ZoneCreate,
    ZoneOut,
    ZoneUpdate,
)
from irrigation.fleet.service import pump_out

IfMatch = Annotated[int | None, Depends(if_match_version)]
Params = Annotated[PageParams, Depends(page_params)]
WRITE = problems(404, 409, 413, 428)
CREATE = problems(409, 413)


def sensor_out(sensor: Sensor) -> SensorOut:
    low, high = service.valid_range(sensor)
    fields = columns_of(sensor, SensorOut, "valid_min", "valid_max")
    return SensorOut.model_validate({**fields, "valid_min": low, "valid_max": high})


# Zones ---------------------------------------------------------------------------------

zones = APIRouter(prefix="/v1", tags=["zones"])


@zones.post("/zones", status_code=201, response_model=ZoneOut, responses=CREATE)
async def create_zone(body: ZoneCreate, session: SessionDep, who: AdminPrincipal) -> Zone:
    return await service.create_zone(session, who.site_id, body)


@zones.get("/zones", response_model=Page[ZoneOut], responses=problems())
async def list_zones(session: ReadSessionDep, who: ReadPrincipal, params: Params) -> Page[ZoneOut]:
    rows, cursor = await service.list_rows(session, Zone, who.site_id, params)
    return Page(items=[ZoneOut.model_validate(r) for r in rows], next_cursor=cursor)


@zones.get("/zones/{zone_id}", response_model=ZoneOut, responses=problems(404))
async def get_zone(zone_id: uuid.UUID, session: ReadSessionDep, who: ReadPrincipal) -> Zone:
    zone: Zone = await service.get(session, Zone, who.site_id, zone_id)
    return zone


@zones.patch("/zones/{zone_id}", response_model=ZoneOut, responses=WRITE)
async def update_zone(
    zone_id: uuid.UUID,
    body: ZoneUpdate,
    if_match: IfMatch,
    session: SessionDep,
    who: AdminPrincipal,
) -> Zone:
    version = service.require_version(body.version, if_match)
    return await service.update_zone(session, who.site_id, zone_id, version, body)


@zones.delete("/zones/{zone_id}", status_code=204, responses=problems(404, 409))
async def delete_zone(zone_id: uuid.UUID, session: SessionDep, who: AdminPrincipal) -> Response:
    await service.delete(session, Zone, who.site_id, zone_id)
    return Response(status_code=204)


# Water sources -------------------------------------------------------------------------

sources = APIRouter(prefix="/v1", tags=["water-sources"])


@sources.post("/water-sources", status_code=201, response_model=WaterSourceOut, responses=CREATE)
async def create_water_source(
    body: WaterSourceCreate, session: SessionDep, who: AdminPrincipal
) -> WaterSource:
    return await service.create_water_source(session, who.site_id, body)


@sources.get("/water-sources", response_model=Page[WaterSourceOut], responses=problems())
async def list_water_sources(
    session: ReadSessionDep, who: ReadPrincipal, params: Params
) -> Page[WaterSourceOut]:
    rows, cursor = await service.list_rows(session, WaterSource, who.site_id, params)
    return Page(items=[WaterSourceOut.model_validate(r) for r in rows], next_cursor=cursor)


@sources.get(
    "/water-sources/{water_source_id}", response_model=WaterSourceOut, responses=problems(404)
)
async def get_water_source(
    water_source_id: uuid.UUID, session: ReadSessionDep, who: ReadPrincipal
) -> WaterSource:
    source: WaterSource = await service.get(session, WaterSource, who.site_id, water_source_id)
    return source


@sources.patch("/water-sources/{water_source_id}", response_model=WaterSourceOut, responses=WRITE)
async def update_water_source(
    water_source_id: uuid.UUID,
    body: WaterSourceUpdate,
    if_match: IfMatch,
    session: SessionDep,
    who: AdminPrincipal,
) -> WaterSource:
    version = service.require_version(body.version, if_match)
    return await service.update_water_source(session, who.site_id, water_source_id, version, body)


@sources.delete("/water-sources/{water_source_id}", status_code=204, responses=problems(404, 409))
async def delete_water_source(
    water_source_id: uuid.UUID, session: SessionDep, who: AdminPrincipal
) -> Response:
    await service.delete(session, WaterSource, who.site_id, water_source_id)
    return Response(status_code=204)


@sources.post(
    "/water-sources/{water_source_id}/reset",
    response_model=WaterSourceOut,
    responses=problems(404, 503),
    summary="Clear the source's leak latch and halt: runs are admitted on it again",
)
@limited_as(RateClass.control)
async def reset_water_source(
    water_source_id: uuid.UUID, session: SessionDep, who: ControlPrincipal
) -> WaterSource:
    return await service.reset_water_source(session, who.site_id, water_source_id)


# Pumps ---------------------------------------------------------------------------------

pumps = APIRouter(prefix="/v1", tags=["pumps"])


@pumps.post("/pumps", status_code=201, response_model=PumpOut, responses=CREATE)
async def create_pump(
    body: PumpCreate, session: SessionDep, settings: SettingsDep, who: AdminPrincipal
) -> PumpOut:
    return pump_out(await service.create_pump(session, settings, who.site_id, body))


@pumps.get("/pumps", response_model=Page[PumpOut], responses=problems())
async def list_pumps(
    session: ReadSessionDep,
    who: ReadPrincipal,
    params: Params,
    zone_id: Annotated[uuid.UUID | None, Query()] = None,
    water_source_id: Annotated[uuid.UUID | None, Query()] = None,
) -> Page[PumpOut]:
    rows, cursor = await service.list_rows(
        session, Pump, who.site_id, params, zone_id=zone_id, water_source_id=water_source_id
    )
    return Page(items=[pump_out(r) for r in rows], next_cursor=cursor)


@pumps.get("/pumps/{pump_id}", response_model=PumpOut, responses=problems(404))
async def get_pump(pump_id: uuid.UUID, session: ReadSessionDep, who: ReadPrincipal) -> PumpOut:
    return pump_out(await service.get(session, Pump, who.site_id, pump_id))


PUMP_CONFLICTS = (
    "`stale_version`; `duplicate` (the hardware_id is taken in this site); `pump_running`: "
    "`hardware_id`, `water_source_id`, `zone_id` or `nominal_flow_lpm` changed while the "
    "pump has an active run"
)


@pumps.patch(
    "/pumps/{pump_id}",
    response_model=PumpOut,
    responses=problems(404, 409, 413, 428, described={409: PUMP_CONFLICTS}),
)
async def update_pump(
    pump_id: uuid.UUID,
    body: PumpUpdate,
    if_match: IfMatch,
    session: SessionDep,
    settings: SettingsDep,
    who: AdminPrincipal,
) -> PumpOut:
    version = service.require_version(body.version, if_match)
    pump = await service.update_pump(session, settings, who.site_id, pump_id, version, body)
    return pump_out(pump)


@pumps.delete("/pumps/{pump_id}", status_code=204, responses=problems(404, 409))
async def delete_pump(pump_id: uuid.UUID, session: SessionDep, who: AdminPrincipal) -> Response:
    await service.delete(session, Pump, who.site_id, pump_id)
    return Response(status_code=204)


# Sensors -------------------------------------------------------------------------------

sensors = APIRouter(prefix="/v1", tags=["sensors"])


@sensors.post("/sensors", status_code=201, response_model=SensorOut, responses=CREATE)
async def create_sensor(body: SensorCreate, session: SessionDep, who: AdminPrincipal) -> SensorOut:
    return sensor_out(await service.create_sensor(session, who.site_id, body))


@sensors.get("/sensors", response_model=Page[SensorOut], responses=problems())
async def list_sensors(
    session: ReadSessionDep,
    who: ReadPrincipal,
    params: Params,
    zone_id: Annotated[uuid.UUID | None, Query()] = None,
    kind: Annotated[SensorKind | None, Query()] = None,
    pump_id: Annotated[uuid.UUID | None, Query(description="Flow meters on this pump.")] = None,
    water_source_id: Annotated[
        uuid.UUID | None, Query(description="Flow meters on this water source.")
    ] = None,
) -> Page[SensorOut]:
    rows, cursor = await service.list_rows(
        session,
        Sensor,
        who.site_id,
        params,
        zone_id=zone_id,
        kind=kind,
        pump_id=pump_id,
        water_source_id=water_source_id,
    )
    return Page(items=[sensor_out(r) for r in rows], next_cursor=cursor)


@sensors.get("/sensors/{sensor_id}", response_model=SensorOut, responses=problems(404))
async def get_sensor(
    sensor_id: uuid.UUID, session: ReadSessionDep, who: ReadPrincipal
) -> SensorOut:
    return sensor_out(await service.get(session, Sensor, who.site_id, sensor_id))


@sensors.patch("/sensors/{sensor_id}", response_model=SensorOut, responses=WRITE)
async def update_sensor(
    sensor_id: uuid.UUID,
    body: SensorUpdate,
    if_match: IfMatch,
    session: SessionDep,
    who: AdminPrincipal,
) -> SensorOut:
    version = service.require_version(body.version, if_match)
    return sensor_out(await service.update_sensor(session, who.site_id, sensor_id, version, body))


@sensors.delete("/sensors/{sensor_id}", status_code=204, responses=problems(404, 409))
async def delete_sensor(sensor_id: uuid.UUID, session: SessionDep, who: AdminPrincipal) -> Response:
    await service.delete(session, Sensor, who.site_id, sensor_id)
    return Response(status_code=204)


# Included into the app one by one: a prefix added by a nesting router would hide the full
# path template from the metrics middleware.
routers = (zones, sources, pumps, sensors)
