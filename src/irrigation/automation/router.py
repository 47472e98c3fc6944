"""HTTP routes of automation: rules, schedules, run queue, decisions, rain delay, pause."""

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response
from pydantic import AwareDatetime

from irrigation.auth.deps import AdminPrincipal, ControlPrincipal, ReadPrincipal
from irrigation.automation import decisions, service
from irrigation.automation.models import Outcome, RunRequest, RunStatus, Schedule, ThresholdRule
from irrigation.automation.runqueue import enqueue
from irrigation.automation.schemas import (
    AutomationState,
    DecisionOut,
    RunRequestOut,
    ScheduleCreate,
    ScheduleOut,
    ScheduleUpdate,
    ThresholdRuleCreate,
    ThresholdRuleOut,
    ThresholdRuleUpdate,
    Until,
)
from irrigation.common import repository as repo
from irrigation.common.deps import SettingsDep
from irrigation.common.http import if_match_version
from irrigation.common.limiter import RateClass, limited_as
from irrigation.common.openapi import problems, quota_409
from irrigation.common.pagination import Page, PageParams, page_params
from irrigation.db import SessionDep
from irrigation.fleet.schemas import ZoneOut
from irrigation.fleet.service import require_version

router = APIRouter(prefix="/v1", tags=["automation"])
IfMatch = Annotated[int | None, Depends(if_match_version)]
Params = Annotated[PageParams, Depends(page_params)]
WRITE = problems(404, 409, 413, 428)
ZoneFilter = Annotated[uuid.UUID | None, Query(description="Only this zone's.")]
UNTIL = {
    422: "`until` missing, without an offset or not in the future (`validation_error`), or "
    "more than 366 days ahead (`until_too_far`)"
}


# Threshold rules -----------------------------------------------------------------------


@router.post(
    "/threshold-rules",
    status_code=201,
    response_model=ThresholdRuleOut,
    responses=problems(409, 413, described={409: quota_409("max_rules", "threshold rules")}),
)
async def create_rule(
    body: ThresholdRuleCreate, session: SessionDep, settings: SettingsDep, who: AdminPrincipal
) -> ThresholdRule:
    return await service.create_rule(session, settings, who.site_id, body)


@router.get("/threshold-rules", response_model=Page[ThresholdRuleOut], responses=problems())
async def list_rules(
    session: SessionDep, who: ReadPrincipal, params: Params, zone_id: ZoneFilter = None
) -> Page[ThresholdRuleOut]:
    filters = [ThresholdRule.zone_id == zone_id] if zone_id else []
    rows, cursor = await repo.list_owned(session, ThresholdRule, who.site_id, params, *filters)
    return Page(items=[ThresholdRuleOut.model_validate(r) for r in rows], next_cursor=cursor)


@router.get("/threshold-rules/{rule_id}", response_model=ThresholdRuleOut, responses=problems(404))
async def get_rule(rule_id: uuid.UUID, session: SessionDep, who: ReadPrincipal) -> ThresholdRule:
    return await repo.get_owned(session, ThresholdRule, who.site_id, rule_id)


@router.patch("/threshold-rules/{rule_id}", response_model=ThresholdRuleOut, responses=WRITE)
async def update_rule(
    rule_id: uuid.UUID,
    body: ThresholdRuleUpdate,
    if_match: IfMatch,
    session: SessionDep,
    who: AdminPrincipal,
) -> ThresholdRule:
    version = require_version(body.version, if_match)
    return await service.update_rule(session, who.site_id, rule_id, version, body)


@router.delete("/threshold-rules/{rule_id}", status_code=204, responses=problems(404, 409))
async def delete_rule(rule_id: uuid.UUID, session: SessionDep, who: AdminPrincipal) -> Response:
    async with session.begin():
        await repo.delete_owned(session, ThresholdRule, who.site_id, rule_id)
    return Response(status_code=204)


# Schedules -----------------------------------------------------------------------------


@router.post(
    "/schedules",
    status_code=201,
    response_model=ScheduleOut,
    responses=problems(409, 413, described={409: quota_409("max_schedules", "schedules")}),
    description=(
        "Either `cron` (5 fields) or `start_times` (with optional `weekdays`), in the zone's "
        "time zone. A start inside a spring-forward gap runs once, an hour later on the wall "
        "clock; a start in a fall-back fold runs once, at its first occurrence."
    ),
)
async def create_schedule(
    body: ScheduleCreate, session: SessionDep, settings: SettingsDep, who: AdminPrincipal
) -> Schedule:
    return await service.create_schedule(session, settings, who.site_id, body)


@router.get("/schedules", response_model=Page[ScheduleOut], responses=problems())
async def list_schedules(
    session: SessionDep, who: ReadPrincipal, params: Params, zone_id: ZoneFilter = None
) -> Page[ScheduleOut]:
    filters = [Schedule.zone_id == zone_id] if zone_id else []
    rows, cursor = await repo.list_owned(session, Schedule, who.site_id, params, *filters)
    return Page(items=[ScheduleOut.model_validate(r) for r in rows], next_cursor=cursor)


@router.get("/schedules/{schedule_id}", response_model=ScheduleOut, responses=problems(404))
async def get_schedule(schedule_id: uuid.UUID, session: SessionDep, who: ReadPrincipal) -> Schedule:
    return await repo.get_owned(session, Schedule, who.site_id, schedule_id)


@router.patch("/schedules/{schedule_id}", response_model=ScheduleOut, responses=WRITE)
async def update_schedule(
    schedule_id: uuid.UUID,
    body: ScheduleUpdate,
    if_match: IfMatch,
    session: SessionDep,
    who: AdminPrincipal,
) -> Schedule:
    version = require_version(body.version, if_match)
    return await service.update_schedule(session, who.site_id, schedule_id, version, body)


@router.delete("/schedules/{schedule_id}", status_code=204, responses=problems(404, 409))
async def delete_schedule(
    schedule_id: uuid.UUID, session: SessionDep, who: AdminPrincipal
) -> Response:
    async with session.begin():
        await repo.delete_owned(session, Schedule, who.site_id, schedule_id)
    return Response(status_code=204)


# Run queue -----------------------------------------------------------------------------


@router.get(
    "/run-queue",
    response_model=Page[RunRequestOut],
    responses=problems(),
    summary="Run requests, newest first (filter `status=waiting` for the queue itself)",
)
async def list_run_requests(
    session: SessionDep,
    who: ReadPrincipal,
    params: Params,
    status: RunStatus | None = None,
    pump_id: uuid.UUID | None = None,
    zone_id: ZoneFilter = None,
    watering_id: Annotated[
        uuid.UUID | None, Query(description="The run requests (cycles) of one watering.")
    ] = None,
) -> Page[RunRequestOut]:
    filters = [
        column == value
        for column, value in (
            (RunRequest.status, status),
            (RunRequest.pump_id, pump_id),
            (RunRequest.zone_id, zone_id),
            (RunRequest.watering_id, watering_id),
        )
        if value is not None
    ]
    rows, cursor = await repo.list_owned(session, RunRequest, who.site_id, params, *filters)
    return Page(items=[RunRequestOut.model_validate(r) for r in rows], next_cursor=cursor)


@router.get("/run-queue/{request_id}", response_model=RunRequestOut, responses=problems(404))
async def get_run_request(
    request_id: uuid.UUID, session: SessionDep, who: ReadPrincipal
) -> RunRequest:
    return await enqueue.get(session, who.site_id, request_id)


@router.delete(
    "/run-queue/{request_id}",
    response_model=RunRequestOut,
    responses=problems(404),
    summary="Cancel a waiting run request (a no-op once it started or ended); a cycle's "
    "watering's later cycles are cancelled with it",
)
@limited_as(RateClass.control)
async def cancel_run_request(
    request_id: uuid.UUID, session: SessionDep, who: ControlPrincipal
) -> RunRequest:
    return await enqueue.cancel(session, who.site_id, request_id)


# Decisions -----------------------------------------------------------------------------


@router.get(
    "/zones/{zone_id}/decisions",
    response_model=Page[DecisionOut],
    responses=problems(404),
    summary="Why the zone did or did not water: starts, deferrals, skips, supersedes",
)
async def list_decisions(
    zone_id: uuid.UUID,
    session: SessionDep,
    who: ReadPrincipal,
    params: Params,
    outcome: Outcome | None = None,
    reason: Annotated[str | None, Query(max_length=64)] = None,
    pump_id: uuid.UUID | None = None,
    rule_id: uuid.UUID | None = None,
    schedule_id: uuid.UUID | None = None,
    watering_id: Annotated[
        uuid.UUID | None, Query(description="The decisions about one watering's runs.")
    ] = None,
    since: Annotated[AwareDatetime | None, Query(description="From (with an offset).")] = None,
    until: Annotated[AwareDatetime | None, Query(description="Before (with an offset).")] = None,
) -> Page[DecisionOut]:
    filters = decisions.DecisionFilter(
        outcome, reason, pump_id, rule_id, schedule_id, watering_id, since, until
    )
    rows, cursor = await decisions.list_decisions(session, who.site_id, zone_id, filters, params)
    return Page(items=[DecisionOut.model_validate(r) for r in rows], next_cursor=cursor)


# Rain delay and pause ------------------------------------------------------------------


@router.post(
    "/zones/{zone_id}/rain-delay",
    response_model=ZoneOut,
    responses=problems(404, 413, described=UNTIL),
)
@limited_as(RateClass.control)
async def start_zone_rain_delay(
    zone_id: uuid.UUID, body: Until, session: SessionDep, who: ControlPrincipal
) -> ZoneOut:
    return ZoneOut.model_validate(
        await service.set_zone_rain_delay(session, who.site_id, zone_id, body.until)
    )


@router.delete("/zones/{zone_id}/rain-delay", response_model=ZoneOut, responses=problems(404))
@limited_as(RateClass.control)
async def end_zone_rain_delay(
    zone_id: uuid.UUID, session: SessionDep, who: ControlPrincipal
) -> ZoneOut:
    return ZoneOut.model_validate(
        await service.set_zone_rain_delay(session, who.site_id, zone_id, None)
    )


def _state(site: object) -> AutomationState:
    return AutomationState.model_validate(site, from_attributes=True)


@router.post(
    "/sites/current/rain-delay",
    response_model=AutomationState,
    responses=problems(413, described=UNTIL),
    summary="Rain delay for every zone of the site",
)
@limited_as(RateClass.control)
async def start_site_rain_delay(
    body: Until, session: SessionDep, who: ControlPrincipal
) -> AutomationState:
    return _state(
        await service.set_site_state(session, who.site_id, "rain_delay_until", body.until)
    )


@router.delete("/sites/current/rain-delay", response_model=AutomationState, responses=problems())
@limited_as(RateClass.control)
async def end_site_rain_delay(session: SessionDep, who: ControlPrincipal) -> AutomationState:
    return _state(await service.set_site_state(session, who.site_id, "rain_delay_until", None))


@router.post(
    "/sites/current/pause",
    response_model=AutomationState,
    responses=problems(413, described=UNTIL),
    summary="Pause all automation (thresholds, schedules) of the site until a time",
    description="People can still start pumps; waiting automatic runs wait (or expire).",
)
@limited_as(RateClass.control)
async def pause(body: Until, session: SessionDep, who: ControlPrincipal) -> AutomationState:
    return _state(await service.set_site_state(session, who.site_id, "paused_until", body.until))


@router.delete("/sites/current/pause", response_model=AutomationState, responses=problems())
@limited_as(RateClass.control)
async def resume(session: SessionDep, who: ControlPrincipal) -> AutomationState:
    return _state(await service.set_site_state(session, who.site_id, "paused_until", None))
