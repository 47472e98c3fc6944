"""HTTP routes for water use (scope read): JSON, or CSV with `Accept: text/csv`."""

import csv
import io
import uuid
from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query
from fastapi.responses import Response

from irrigation.auth.deps import ReadPrincipal
from irrigation.common.openapi import problems
from irrigation.db import SessionDep
from irrigation.wateruse import service
from irrigation.wateruse.schemas import (
    MAX_DAYS,
    MAX_MONTHS,
    WaterUse,
    WaterUsePeriod,
    WaterUseScope,
)

router = APIRouter(prefix="/v1", tags=["water-use"])

PeriodQ = Annotated[
    WaterUsePeriod,
    Query(description="`day` or `month` buckets, of local days (months summed from days)."),
]
From = Annotated[
    date | None,
    Query(
        alias="from",
        description="The first local day counted (1900-01-01 to 2200-12-31). Default: 29 days "
        f"before `to` (day buckets) or the first day of the 11th month before it (month "
        f"buckets). At most {MAX_DAYS} days or {MAX_MONTHS} months from `from` to `to` "
        "(`too_many_buckets` otherwise).",
    ),
]
To = Annotated[
    date | None,
    Query(
        description="The last local day counted, not before `from`. Default: today, in the "
        "zone's time zone (a pump's: its zone's; a source's or the site's: UTC)."
    ),
]
Accept = Annotated[str | None, Header()]


class Asked:
    """What every water-use route reads besides its subject: the buckets, the period and
    the representation (JSON, or CSV by `Accept`)."""

    def __init__(
        self,
        bucket: PeriodQ = WaterUsePeriod.day,
        from_: From = None,
        to: To = None,
        accept: Accept = None,
    ) -> None:
        self.bucket, self.first, self.last, self.accept = bucket, from_, to, accept


AskedQ = Annotated[Asked, Depends()]

_CSV_COLUMNS = [
    "start",
    "litres",
    "measured_litres",
    "estimated_litres",
    "estimated",
    "runtime_without_flow_s",
]
RESPONSES: dict[int | str, dict[str, Any]] = {
    **problems(404),
    200: {
        "description": "Litres per bucket; with `Accept: text/csv`, the buckets as CSV (columns "
        + ", ".join(f"`{c}`" for c in _CSV_COLUMNS)
        + ").",
        "content": {"text/csv": {"schema": {"type": "string"}}},
    },
}
_DESCRIPTION = (
    "Litres per local day or month: integrated from an attached flow meter's readings "
    "(`measured_litres`), else runtime x the pump's `nominal_flow_lpm` (`estimated_litres`, "
    "`estimated` true). Read from the water-use rollup, which follows run ends and flow "
    "readings within about ten seconds."
)


async def _answer(
    session: SessionDep,
    site_id: uuid.UUID,
    scope: WaterUseScope,
    subject_id: uuid.UUID,
    asked: Asked,
) -> WaterUse | Response:
    use = await service.water_use(
        session, site_id, scope, subject_id, asked.bucket, asked.first, asked.last
    )
    if asked.accept and "text/csv" in asked.accept:
        return Response(
            _csv(use),
            media_type="text/csv",
            headers={
                "Content-Disposition": f'attachment; filename="water-use-{scope.value}-'
                f'{use.from_}-{use.to}.csv"'
            },
        )
    return use


def _csv(use: WaterUse) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(_CSV_COLUMNS)
    for b in use.buckets:
        writer.writerow(
            [
                b.start.isoformat(),
                repr(b.litres),
                repr(b.measured_litres),
                repr(b.estimated_litres),
                "true" if b.estimated else "false",
                repr(b.runtime_without_flow_s),
            ]
        )
    return buffer.getvalue()


@router.get(
    "/zones/{zone_id}/water-use",
    response_model=WaterUse,
    responses=RESPONSES,
    summary="A zone's water use per day or month, in its time zone",
    description=f"{_DESCRIPTION} A zone's: its pumps' runs and meters.",
)
async def get_zone_water_use(
    zone_id: uuid.UUID,
    session: SessionDep,
    who: ReadPrincipal,
    asked: AskedQ,
) -> WaterUse | Response:
    return await _answer(session, who.site_id, WaterUseScope.zone, zone_id, asked)


@router.get(
    "/pumps/{pump_id}/water-use",
    response_model=WaterUse,
    responses=RESPONSES,
    summary="A pump's water use per day or month, in its zone's time zone",
    description=_DESCRIPTION,
)
async def get_pump_water_use(
    pump_id: uuid.UUID,
    session: SessionDep,
    who: ReadPrincipal,
    asked: AskedQ,
) -> WaterUse | Response:
    return await _answer(session, who.site_id, WaterUseScope.pump, pump_id, asked)


@router.get(
    "/water-sources/{water_source_id}/water-use",
    response_model=WaterUse,
    responses=RESPONSES,
    summary="A water source's water use per day or month",
    description=f"{_DESCRIPTION} A source with a meter of its own is counted by that meter "
    "alone; otherwise by its pumps' meters and runs. Each part counts in the local days of "
    "its own zone, summed by date.",
)
async def get_water_source_water_use(
    water_source_id: uuid.UUID,
    session: SessionDep,
    who: ReadPrincipal,
    asked: AskedQ,
) -> WaterUse | Response:
    return await _answer(session, who.site_id, WaterUseScope.water_source, water_source_id, asked)


@router.get(
    "/sites/current/water-use",
    response_model=WaterUse,
    responses={**problems(), 200: RESPONSES[200]},
    summary="The site's water use per day or month: all its water sources",
    description=f"{_DESCRIPTION} Every water source counted as by its own route; each part "
    "counts in the local days of its own zone, summed by date.",
)
async def get_site_water_use(
    session: SessionDep,
    who: ReadPrincipal,
    asked: AskedQ,
) -> WaterUse | Response:
    return await _answer(session, who.site_id, WaterUseScope.site, who.site_id, asked)
