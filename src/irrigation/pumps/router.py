"""HTTP routes for activations: inspect, stop, stop-all, reset. Asking for a run
(`POST /v1/pumps/{pump_id}/activations`) is `automation/activation_router.py`: its queued
answer is the run queue's."""

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends

from irrigation.auth.deps import ControlPrincipal, ReadPrincipal
from irrigation.common.deps import RedisDep
from irrigation.common.limiter import RateClass, limited_as
from irrigation.common.openapi import problems
from irrigation.common.pagination import Page, PageParams, page_params
from irrigation.db import SessionDep
from irrigation.fleet.schemas import PumpOut
from irrigation.fleet.service import pump_out
from irrigation.pumps import service
from irrigation.pumps.models import PumpActivation
from irrigation.pumps.schemas import ActivationEventOut, ActivationOut, StopResult

router = APIRouter(prefix="/v1", tags=["activations"])
Params = Annotated[PageParams, Depends(page_params)]


@router.get("/activations/{activation_id}", response_model=ActivationOut, responses=problems(404))
async def get_activation(
    activation_id: uuid.UUID, session: SessionDep, who: ReadPrincipal
) -> PumpActivation:
    return await service.get_activation(session, who.site_id, activation_id)


@router.get(
    "/activations/{activation_id}/events",
    response_model=Page[ActivationEventOut],
    responses=problems(404),
    summary="The audit trail: every transition with its time and cause",
)
async def list_activation_events(
    activation_id: uuid.UUID, session: SessionDep, who: ReadPrincipal, params: Params
) -> Page[ActivationEventOut]:
    rows, cursor = await service.list_events(session, who.site_id, activation_id, params)
    return Page(items=[ActivationEventOut.model_validate(r) for r in rows], next_cursor=cursor)


@router.get(
    "/pumps/{pump_id}/activations",
    response_model=Page[ActivationOut],
    responses=problems(404),
    summary="A pump's activation history, newest first",
)
async def list_pump_activations(
    pump_id: uuid.UUID, session: SessionDep, who: ReadPrincipal, params: Params
) -> Page[ActivationOut]:
    rows, cursor = await service.list_activations(session, who.site_id, pump_id, params)
    return Page(items=[ActivationOut.model_validate(r) for r in rows], next_cursor=cursor)


@router.post(
    "/pumps/stop-all",
    response_model=StopResult,
    responses=problems(503),
    summary="Stop every queued or running activation of the site",
)
# Stopping is counted but never refused: it must always be possible.
@limited_as(RateClass.control, refuses=False)
async def stop_all(session: SessionDep, redis: RedisDep, who: ControlPrincipal) -> StopResult:
    stopped = await service.stop_pump(session, redis, who.site_id, None, "stop_all")
    return StopResult(stopped=[ActivationOut.model_validate(a) for a in stopped])


@router.post(
    "/pumps/{pump_id}/stop",
    response_model=StopResult,
    responses=problems(404, 503),
    summary="Stop this pump's queued or running activation now (always allowed)",
)
@limited_as(RateClass.control, refuses=False)
async def stop_pump(
    pump_id: uuid.UUID, session: SessionDep, redis: RedisDep, who: ControlPrincipal
) -> StopResult:
    stopped = await service.stop_pump(session, redis, who.site_id, pump_id, "operator")
    return StopResult(stopped=[ActivationOut.model_validate(a) for a in stopped])


@router.post(
    "/pumps/{pump_id}/reset",
    response_model=PumpOut,
    responses=problems(404, 503),
    summary="Clear the pump's fault latch",
)
@limited_as(RateClass.control)
async def reset_pump(pump_id: uuid.UUID, session: SessionDep, who: ControlPrincipal) -> PumpOut:
    return pump_out(await service.reset_fault(session, who.site_id, pump_id))
