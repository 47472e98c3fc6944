"""HTTP routes for aggregates and raw readings (scope read)."""

import base64
import binascii
import csv
import io
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse
from pydantic.config import JsonDict
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from irrigation.auth.deps import ReadPrincipal
from irrigation.common.deps import SettingsDep
from irrigation.common.errors import Invalid
from irrigation.common.limiter import RateClass, charge, limited_as
from irrigation.common.openapi import problems
from irrigation.common.pagination import MAX_LIMIT, CursorQuery, Page
from irrigation.db import SessionDep
from irrigation.fleet.schemas import SensorKind
from irrigation.readings import service
from irrigation.readings.schemas import Bucket, ReadingOut, SensorAggregates, ZoneAggregates
from irrigation.settings import Settings

router = APIRouter(prefix="/v1", tags=["readings"])

# Both must lie within 1900-2200 in UTC; any offset keeps years 1901-2198 inside.
_YEARS: JsonDict = {"pattern": "^(190[1-9]|19[1-9][0-9]|20[0-9]{2}|21[0-8][0-9]|219[0-8])-"}
Start = Annotated[
    datetime | None,
    Query(
        description="Inclusive, with a time zone; must be before `end`, and both within "
        "1900-2200. Default: `end` - 1 day (hour buckets) or 30 days (day buckets, raw "
        "readings). Aggregates: at most 10,000 buckets from `start` to `end` "
        "(`too_many_buckets` otherwise).",
        json_schema_extra=_YEARS,
    ),
]
End = Annotated[
    datetime | None,
    Query(
        description="Exclusive, with a time zone; after `start`. Default: now.",
        json_schema_extra=_YEARS,
    ),
]
BucketQ = Annotated[Bucket, Query(description="`hour` or `day`, in the zone's time zone.")]
Fill = Annotated[
    str | None,
    Query(pattern="^null$", description="`null`: return empty buckets too, as nulls."),
]
_LONG = (
    "A range longer than `IRRIGATION_RATE_LIMIT_LONG_RANGE_DAYS` (31 by default) is also "
    "counted in the `expensive` rate-limit class."
)


async def _range(
    request: Request,
    settings: Settings,
    bucket: Bucket,
    start: datetime | None,
    end: datetime | None,
) -> tuple[datetime, datetime]:
    """The query's [start, end), charged as expensive too when it spans a long range."""
    start, end = service.window(start, end, service.DEFAULT_SPAN[bucket])
    if end - start > timedelta(days=settings.rate_limit_long_range_days):
        await charge(request, RateClass.expensive)
    return start, end


@router.get(
    "/sensors/{sensor_id}/aggregates",
    response_model=SensorAggregates,
    responses=problems(404),
    summary="Hourly or daily avg/min/max/count of one sensor",
    description=_LONG,
)
@limited_as(RateClass.read, also=RateClass.expensive)
async def get_sensor_aggregates(
    sensor_id: uuid.UUID,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    who: ReadPrincipal,
    bucket: BucketQ = Bucket.hour,
    start: Start = None,
    end: End = None,
    fill: Fill = None,
) -> SensorAggregates:
    start, end = await _range(request, settings, bucket, start, end)
    return await service.sensor_aggregates(
        session,
        who.site_id,
        sensor_id,
        bucket,
        start,
        end,
        fill=fill == "null",
        retention_days=settings.raw_retention_days,
    )


@router.get(
    "/zones/{zone_id}/aggregates",
    response_model=ZoneAggregates,
    responses=problems(404),
    summary="A zone's sensors of one kind: combined (a true average over readings) or per sensor",
    description=_LONG,
)
@limited_as(RateClass.read, also=RateClass.expensive)
async def get_zone_aggregates(
    zone_id: uuid.UUID,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    who: ReadPrincipal,
    kind: Annotated[SensorKind, Query()] = SensorKind.soil_moisture,
    bucket: BucketQ = Bucket.hour,
    start: Start = None,
    end: End = None,
    fill: Fill = None,
    per_sensor: Annotated[bool, Query()] = False,
) -> ZoneAggregates:
    start, end = await _range(request, settings, bucket, start, end)
    return await service.zone_aggregates(
        session,
        who.site_id,
        zone_id,
        kind.value,
        bucket,
        start,
        end,
        fill=fill == "null",
        per_sensor=per_sensor,
        retention_days=settings.raw_retention_days,
    )


def _cursor(ts: datetime) -> str:
    return base64.urlsafe_b64encode(ts.isoformat().encode()).decode().rstrip("=")


def _after(cursor: str | None) -> datetime | None:
    if cursor is None:
        return None
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        moment = datetime.fromisoformat(base64.urlsafe_b64decode(padded).decode())
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise Invalid("cursor is not valid", field="query.cursor", code="invalid_cursor") from None
    if moment.tzinfo is None:
        raise Invalid("cursor is not valid", field="query.cursor", code="invalid_cursor")
    return moment


@router.get(
    "/sensors/{sensor_id}/readings",
    response_model=Page[ReadingOut],
    responses={
        **problems(404),
        200: {
            "description": "A page of readings; with `Accept: text/csv`, all of them as CSV.",
            "content": {"text/csv": {"schema": {"type": "string"}}},
        },
    },
    summary="Raw readings, oldest first; `Accept: text/csv` streams them all as CSV",
    description="A CSV export is also counted in the `expensive` rate-limit class.",
)
@limited_as(RateClass.read, also=RateClass.expensive)
async def list_raw_readings(
    sensor_id: uuid.UUID,
    request: Request,
    session: SessionDep,
    who: ReadPrincipal,
    start: Start = None,
    end: End = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
    cursor: CursorQuery = None,
    accept: Annotated[str | None, Header()] = None,
) -> Page[ReadingOut] | StreamingResponse:
    start, end = service.window(start, end, service.RAW_DEFAULT_SPAN)
    await service.sensor_timezone(session, who.site_id, sensor_id)  # 404 if not the site's
    if accept and "text/csv" in accept:
        await charge(request, RateClass.expensive)
        # The export streams from a session of its own, for as long as it takes: end the
        # request's read now, so its connection never idles in a transaction meanwhile.
        await session.close()
        return StreamingResponse(
            _csv(request.app.state.sessionmaker, sensor_id, start, end),
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{sensor_id}.csv"'},
        )
    rows = await service.raw_page(session, sensor_id, start, end, _after(cursor), limit)
    items = [
        ReadingOut(
            ts=r.ts,
            value=r.value,
            quality=r.quality,
            raw_value=r.value if r.raw_value is None else r.raw_value,
        )
        for r in rows[:limit]
    ]
    next_cursor = _cursor(items[-1].ts) if len(rows) > limit else None
    return Page(items=items, next_cursor=next_cursor)


async def _csv(
    sessions: async_sessionmaker[AsyncSession],
    sensor_id: uuid.UUID,
    start: datetime,
    end: datetime,
) -> AsyncIterator[str]:
    # Its own session: the request's may be closed before the last row is streamed.
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    # raw_value last: columns added at the end leave existing readers of the file alone.
    writer.writerow(["ts", "value", "quality", "raw_value"])
    count = 0
    async with sessions() as session:
        async for ts, value, quality, raw in service.stream_raw(session, sensor_id, start, end):
            writer.writerow([ts.isoformat(), repr(value), quality, repr(raw)])
            count += 1
            if count % 5000 == 0:
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
    yield buffer.getvalue()
