"""HTTP routes for a sensor's calibration history and its backfills (thin)."""

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse

from irrigation.auth.deps import AdminPrincipal, ReadPrincipal
from irrigation.common.deps import RedisDep, SettingsDep
from irrigation.common.idempotency import IdempotencyKeyHeader, post_request, respond
from irrigation.common.limiter import RateClass, limited_as
from irrigation.common.openapi import IN_FLIGHT, problems
from irrigation.common.pagination import Page, PageParams, page_params
from irrigation.db import SessionDep
from irrigation.fleet.models import SensorCalibration
from irrigation.readings import backfill, calibrations
from irrigation.readings.calibration_schemas import (
    BackfillCreate,
    BackfillOut,
    CalibrationCreate,
    CalibrationOut,
)
from irrigation.readings.models import CalibrationBackfill

router = APIRouter(prefix="/v1", tags=["sensors"])
Params = Annotated[PageParams, Depends(page_params)]
PATH = "/sensors/{sensor_id}/calibrations"


@router.post(
    PATH,
    status_code=201,
    response_model=CalibrationOut,
    responses=problems(
        404,
        409,
        413,
        described={
            409: "`duplicate`: the sensor has a calibration from this instant already; "
            f"`too_many_calibrations`: it has {calibrations.MAX_CALIBRATIONS} already "
            "(`limit`)",
            422: "Invalid body (`validation_error`): neither or both of the forms (`gain` "
            "[+ `offset`], or `raw_dry` + `raw_wet`), a gain of 0, two points less than "
            "0.0001 apart, `effective_from` without an offset, before 1900 or more than 366 "
            "days ahead",
        },
    ),
    summary="Add a step to the sensor's calibration history",
    description=(
        "From `effective_from` on (until the next step), a reading's stored `value` is "
        "`gain x raw + offset`, its `raw_value` what the sensor sent; the sensor's valid "
        "range judges the calibrated value. Readings ingested from now on get the step of "
        "their own time, however late they arrive; readings stored already keep their "
        "values until `POST .../calibrations/backfill`."
    ),
)
async def create_calibration(
    sensor_id: uuid.UUID, body: CalibrationCreate, session: SessionDep, who: AdminPrincipal
) -> SensorCalibration:
    return await calibrations.create(session, who.site_id, sensor_id, body)


@router.get(
    PATH,
    response_model=Page[CalibrationOut],
    responses=problems(404),
    summary="The sensor's calibration history, oldest `effective_from` first",
)
async def list_calibrations(
    sensor_id: uuid.UUID, session: SessionDep, who: ReadPrincipal, params: Params
) -> Page[CalibrationOut]:
    rows, cursor = await calibrations.list_steps(session, who.site_id, sensor_id, params)
    return Page(items=[CalibrationOut.model_validate(r) for r in rows], next_cursor=cursor)


@router.delete(
    PATH + "/{calibration_id}",
    status_code=204,
    responses=problems(
        404,
        409,
        described={
            409: "`calibration_in_effect`: it starts before the newest time a reading may "
            "carry (now + 5 minutes), so readings may have been calibrated with it"
        },
    ),
    summary="Delete a calibration step not yet in effect",
)
async def delete_calibration(
    sensor_id: uuid.UUID, calibration_id: uuid.UUID, session: SessionDep, who: AdminPrincipal
) -> Response:
    await calibrations.delete_step(session, who.site_id, sensor_id, calibration_id)
    return Response(status_code=204)


@router.post(
    PATH + "/backfill",
    status_code=202,
    response_model=BackfillOut,
    responses={
        **problems(
            404,
            409,
            413,
            described={
                409: "`backfill_in_progress`: the sensor's last backfill is not finished "
                f"(`backfill_id` names it); or {IN_FLIGHT}",
                422: "Invalid body (`validation_error`): `from`/`to` without an offset, "
                "`from` not before `to` (or in the future), more than 366 days apart; "
                "`beyond_raw_retention`: `from` is older than the raw retention",
            },
        ),
        202: {
            "description": "Queued; `Location` names the backfill, whose `status` and "
            "`done_until` follow its progress",
            "headers": {"Location": {"description": "The backfill", "schema": {"type": "string"}}},
        },
    },
    summary="Derive the values of a period again with the calibrations in effect",
    description=(
        "A background job on the bulk queue: every reading of the sensor in [`from`, `to`) "
        "gets `value` derived again from its `raw_value` with the calibration of its time, "
        "and the hourly rollups of those hours (so hour and day aggregates) are rebuilt. "
        "Idempotent: running it twice gives the same values. One unfinished backfill per "
        "sensor. The same `Idempotency-Key` returns the first answer."
    ),
)
@limited_as(RateClass.expensive)
async def request_backfill(
    sensor_id: uuid.UUID,
    body: BackfillCreate,
    session: SessionDep,
    settings: SettingsDep,
    redis: RedisDep,
    who: AdminPrincipal,
    idempotency_key: IdempotencyKeyHeader = None,
) -> JSONResponse:
    route = "/v1" + PATH + "/backfill"
    idem = post_request(
        idempotency_key, who.site_id, route, str(sensor_id), body.model_dump_json(by_alias=True)
    )
    answer = await backfill.request_backfill(
        session, settings, redis, who.site_id, sensor_id, body, idem
    )
    return respond(answer)


@router.get(
    PATH + "/backfills/{backfill_id}",
    response_model=BackfillOut,
    responses=problems(404),
    summary="A backfill's status and progress",
)
async def get_backfill(
    sensor_id: uuid.UUID, backfill_id: uuid.UUID, session: SessionDep, who: ReadPrincipal
) -> CalibrationBackfill:
    return await backfill.get_backfill(session, who.site_id, sensor_id, backfill_id)
