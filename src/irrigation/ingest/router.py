"""HTTP routes for readings in: the batch endpoint and the latest value of a sensor."""

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from irrigation.auth.deps import IngestPrincipal, ReadPrincipal
from irrigation.common.balance import WorkerLoad
from irrigation.common.deps import SettingsDep
from irrigation.common.idempotency import IdempotencyKeyHeader, post_request
from irrigation.common.limiter import RateClass, charge, limited_as
from irrigation.common.openapi import IN_FLIGHT, body_schema, problems
from irrigation.db import SessionDep
from irrigation.ingest import service
from irrigation.ingest.cache import HotCache
from irrigation.ingest.schemas import IngestResult, LatestReading, ReadingsBatch
from irrigation.ingest.validation import parse_batch

router = APIRouter(prefix="/v1", tags=["readings"])


async def _cache(request: Request) -> HotCache:
    cache: HotCache = request.app.state.hot_cache
    return cache


CacheDep = Annotated[HotCache, Depends(_cache)]


async def _load(request: Request) -> WorkerLoad:
    load: WorkerLoad = request.app.state.worker_load
    return load


LoadDep = Annotated[WorkerLoad, Depends(_load)]


@router.post(
    "/readings",
    response_model=IngestResult,
    responses=problems(409, 413, 503, described={409: IN_FLIGHT}),
    summary="Send a batch of readings",
    description=(
        "1 to 10,000 readings. Each bad item is quarantined with a `reason` (parse_error, "
        "unknown_sensor, invalid_unit, out_of_range, invalid_timestamp, low_quality) and the "
        "rest are stored; duplicates are counted, not errors. The answer comes after the "
        "commit. A broken envelope is 422. `Idempotency-Key` replays the first answer; with "
        "another body it is 422; while the first is still in flight, 409 "
        "`idempotency_in_flight` with `Retry-After`."
    ),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": body_schema(ReadingsBatch)},
        }
    },
)
@limited_as(RateClass.ingest)
async def send_readings(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    cache: CacheDep,
    load: LoadDep,
    who: IngestPrincipal,
    idempotency_key: IdempotencyKeyHeader = None,
) -> JSONResponse:
    with load.batch():
        raw = await request.body()
        try:
            # Straight from the bytes: no intermediate dict for a clean batch.
            parsed = parse_batch(raw)
        except ValidationError as exc:
            raise RequestValidationError(
                [{**e, "loc": ("body", *e.get("loc", ()))} for e in exc.errors()]
            ) from None
        # Readings are counted as well as requests: one batch of 10,000 is no cheap call.
        await charge(request, cost=len(parsed))
        idem = post_request(idempotency_key, who.site_id, "/v1/readings", raw)
        answer = await service.ingest_batch(session, settings, cache, who.site_id, parsed, idem)
        headers = answer.headers
        if load.crowded():
            headers = {**headers, "connection": "close"}
    return JSONResponse(answer.body, status_code=answer.status_code, headers=headers)


@router.get(
    "/sensors/{sensor_id}/latest",
    response_model=LatestReading,
    responses=problems(404),
    summary="The sensor's newest value and its last 60, from the hot cache",
)
async def get_latest_reading(
    sensor_id: uuid.UUID, session: SessionDep, cache: CacheDep, who: ReadPrincipal
) -> LatestReading:
    recent, source = await service.latest(session, cache, who.site_id, sensor_id)
    newest = recent[0] if recent else {}
    return LatestReading(
        sensor_id=sensor_id,
        ts=newest.get("ts"),
        value=newest.get("value"),
        quality=newest.get("quality"),
        recent=[{"ts": r["ts"], "value": r["value"]} for r in recent],
        source=source,
    )
