"""`POST /v1/pumps/{pump_id}/activations`: a run now, through the pumps' locked admission,
or, with `queue`, a run request in the run queue. It lives here, above both, because only
the automation knows the run queue; `pumps/` answers the rest of the activation routes."""

import uuid
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import Field

from irrigation.auth.deps import ControlPrincipal
from irrigation.automation.models import RunRequest
from irrigation.automation.runqueue import enqueue
from irrigation.automation.schemas import RunRequestOut
from irrigation.common.clock import utcnow
from irrigation.common.deps import RedisDep, SettingsDep
from irrigation.common.errors import Invalid
from irrigation.common.idempotency import (
    IdempotencyKeyHeader,
    IdempotentRequest,
    StoredAnswer,
    post_request,
    respond,
)
from irrigation.common.limiter import RateClass, limited_as
from irrigation.common.openapi import IN_FLIGHT, problems
from irrigation.db import SessionDep
from irrigation.pumps import service as activations
from irrigation.pumps.models import Priority
from irrigation.pumps.schemas import ActivationOut, ActivationRequest, activation_answer

router = APIRouter(prefix="/v1", tags=["activations"])

# A queued run is a wish for water soon, not a calendar entry (that is what schedules are).
MAX_QUEUE_WAIT = timedelta(days=7)
Accepted = Annotated[ActivationOut | RunRequestOut, Field(discriminator="kind")]


@router.post(
    "/pumps/{pump_id}/activations",
    status_code=202,
    response_model=Accepted,
    responses={
        **problems(
            404,
            409,
            413,
            503,
            described={
                409: "Refused (`pump_busy`, `cooldown`, `fault`, `disabled`, `capacity`: "
                "`limit` `pumps` names `max_concurrent_pumps`, `limit` `flow` names "
                "`max_flow_lpm`, `running_flow_lpm` and `requested_flow_lpm`); "
                "`invalid_hardware_id`: the pump's hardware_id predates the address pattern "
                "and cannot be commanded until it is changed; `flow_exceeds_source`: the "
                "pump's `nominal_flow_lpm` alone is above its water source's `max_flow_lpm`, "
                "so it can never run there; `source_halted`: the pump's water source was "
                "halted for a leak until an operator resets it; with `queue`, "
                "`quota_exceeded`: as many run requests already wait for the pump or in the "
                "site as its quota `waiting_run_requests_per_pump` or "
                f"`waiting_run_requests_per_site` allows (`quota` names it); or {IN_FLIGHT}"
            },
        ),
        202: {"description": "Accepted and queued; `Location` names the activation."},
    },
    summary="Ask for a pump run",
    description=(
        "Admitted under a row lock: refused with 409 and a `code` of `pump_busy`, `cooldown`, "
        "`fault`, `disabled` or `capacity` (the water source feeds its `max_concurrent_pumps`, "
        "or its active runs' nominal flows plus this pump's would exceed its `max_flow_lpm`) "
        "(with `Retry-After` where waiting helps), or `source_halted` (the water source was "
        "halted for a leak). "
        "`duration_s` above the pump's `max_runtime_s` is 422. The same `Idempotency-Key` "
        "returns the first answer; with another body it is 422; while the first is still in "
        "flight, 409 `idempotency_in_flight` with `Retry-After`. With `queue`, the answer "
        "is a run request (`kind: run_request`, `Location: /v1/run-queue/{id}`) that starts "
        "now if it can, else waits its turn."
    ),
)
@limited_as(RateClass.control)
async def request_activation(
    pump_id: uuid.UUID,
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
        return respond(await _queued(pump_id, body, session, settings, redis, who, idem))
    run = activations.ActivationParams(
        duration_s=body.duration_s,
        priority=Priority(body.priority.value),
        reason=body.reason,
        origin=f"api_key:{who.key_id}",
    )
    answer = await activations.request_activation(
        session, settings, redis, who.site_id, pump_id, run, idem, activation_answer
    )
    return respond(answer)


def _run_request_answer(request: RunRequest) -> StoredAnswer:
    out = RunRequestOut.model_validate(request).model_dump(mode="json")
    return StoredAnswer(202, out, {"Location": f"/v1/run-queue/{request.id}"})


async def _queued(
    pump_id: uuid.UUID,
    body: ActivationRequest,
    session: SessionDep,
    settings: SettingsDep,
    redis: RedisDep,
    who: ControlPrincipal,
    idem: IdempotentRequest | None,
) -> StoredAnswer:
    now = utcnow()
    deadline = body.deadline or now + timedelta(seconds=settings.queued_run_deadline_s)
    if deadline <= now:
        raise Invalid("deadline must be in the future", field="body.deadline")
    if deadline > now + MAX_QUEUE_WAIT:
        raise Invalid("deadline must be within 7 days", field="body.deadline")
    wish = enqueue.Wish(
        pump_id=pump_id,
        priority=Priority(body.priority.value),
        duration_s=body.duration_s,
        origin=f"api_key:{who.key_id}",
        deadline=deadline,
        reason=body.reason,
        queue=body.queue,
    )
    return await enqueue.request_run(
        session, settings, redis, who.site_id, wish, idem, _run_request_answer
    )
