"""HTTP routes for activations: request, inspect, stop, stop-all, reset."""

import uuid
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import Field

from irrigation.auth.deps import ControlPrincipal, ReadPrincipal
from irrigation.automation import runqueue
from irrigation.automation.models import RunRequest
from irrigation.automation.schemas import RunRequestOut
from irrigation.common.clock import utcnow
from irrigation.common.deps import RedisDep, SettingsDep
from irrigation.common.errors import PROBLEM_JSON, Invalid, problem_body
from irrigation.common.idempotency import (
    IdempotencyKeyHeader,
    IdempotentRequest,
    StoredAnswer,
    post_request,
)
from irrigation.common.openapi import problems
from irrigation.common.pagination import Page, PageParams, page_params
from irrigation.db import SessionDep
from irrigation.fleet.router import pump_out
from irrigation.fleet.schemas import PumpOut
from irrigation.pumps import service
from irrigation.pumps.errors import Refused
from irrigation.pumps.models import Priority, PumpActivation
from irrigation.pumps.schemas import (
    ActivationEventOut,
    ActivationOut,
    ActivationRequest,
    StopResult,
)

router = APIRouter(prefix="/v1", tags=["activations"])
Params = Annotated[PageParams, Depends(page_params)]


def render(outcome: PumpActivation | Refused) -> StoredAnswer:
    if isinstance(outcome, Refused):
        body = problem_body(
            outcome.status, outcome.code, outcome.title, outcome.detail, **outcome.extra
        )
        return StoredAnswer(outcome.status, body, outcome.headers)
    body = ActivationOut.model_validate(outcome).model_dump(mode="json")
    return StoredAnswer(202, body, {"Location": f"/v1/activations/{outcome.id}"})


def _respond(answer: StoredAnswer) -> JSONResponse:
    media = PROBLEM_JSON if answer.status_code >= 400 else "application/json"
    return JSONResponse(
        answer.body, status_code=answer.status_code, headers=answer.headers, media_type=media
    )


# A queued run is a wish for water soon, not a calendar entry (that is what schedules are).
MAX_QUEUE_WAIT = timedelta(days=7)
Accepted = Annotated[ActivationOut | RunRequestOut, Field(discriminator="kind")]


@router.post(
    "/pumps/{pump_id}/activations",
    status_code=202,
    response_model=Accepted,
    responses={
        **problems(404, 409, 413, 503),
        202: {"description": "Accepted and queued; `Location` names the activation."},
    },
    summary="Ask for a pump run",
    description=(
        "Admitted under a row lock: refused with 409 and a `code` of `pump_busy`, `cooldown`, "
        "`fault`, `disabled` or `capacity` (with `Retry-After` where waiting helps). "
        "`duration_s` above the pump's `max_runtime_s` is 422. The same `Idempotency-Key` "
        "returns the first answer; with another body it is 422. With `queue`, the answer "
        "is a run request (`kind: run_request`, `Location: /v1/run-queue/{id}`) that starts "
        "now if it can, else waits its turn."
    ),
)
async def request_activation(
    pump_id: uuid.UUID,
    request: Request,
    body: ActivationRequest,
    session: SessionDep,
    settings: SettingsDep,
    redis: RedisDep,
    who: ControlPrincipal,
    idempotency_key: IdempotencyKeyHeader = None,
) -> JSONResponse:
    idem = post_request(
        idempotency_key,
        who.site_id,
        "/v1/pumps/{pump_id}/activations",
        str(pump_id),
        body.model_dump_json(),
    )
    if body.queue is not None:
        return await _queued(pump_id, body, session, settings, redis, who, idem)
    run = service.RunRequest(
        duration_s=body.duration_s,
        priority=Priority(body.priority.value),
        reason=body.reason,
        origin=f"api_key:{who.key_id}",
    )
    answer = await service.request_activation(
        session, settings, redis, who.site_id, pump_id, run, idem, render
    )
    return _respond(answer)


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
async def stop_all(session: SessionDep, redis: RedisDep, who: ControlPrincipal) -> StopResult:
    stopped = await service.stop_pump(session, redis, who.site_id, None, "stop_all")
    return StopResult(stopped=[ActivationOut.model_validate(a) for a in stopped])


@router.post(
    "/pumps/{pump_id}/stop",
    response_model=StopResult,
    responses=problems(404, 503),
    summary="Stop this pump's queued or running activation now (always allowed)",
)
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
async def reset_pump(pump_id: uuid.UUID, session: SessionDep, who: ControlPrincipal) -> PumpOut:
    return pump_out(await service.reset_fault(session, who.site_id, pump_id))


async def _queued(
    pump_id: uuid.UUID,
    body: ActivationRequest,
    session: SessionDep,
    settings: SettingsDep,
    redis: RedisDep,
    who: ControlPrincipal,
    idem: IdempotentRequest | None,
) -> JSONResponse:
    now = utcnow()
    deadline = body.deadline or now + timedelta(seconds=settings.queued_run_deadline_s)
    if deadline <= now:
        raise Invalid("deadline must be in the future", field="body.deadline")
    if deadline > now + MAX_QUEUE_WAIT:
        raise Invalid("deadline must be within 7 days", field="body.deadline")
    wish = runqueue.Wish(
        pump_id=pump_id,
        priority=Priority(body.priority.value),
        duration_s=body.duration_s,
        origin=f"api_key:{who.key_id}",
        deadline=deadline,
        reason=body.reason,
        queue=body.queue,
    )

    def render_queued(request: RunRequest) -> StoredAnswer:
        out = RunRequestOut.model_validate(request).model_dump(mode="json")
        return StoredAnswer(202, out, {"Location": f"/v1/run-queue/{request.id}"})

    answer = await runqueue.request_run(
        session, settings, redis, who.site_id, wish, idem, render_queued
    )
    return _respond(answer)
