"""API shapes of activations."""

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from irrigation.common.errors import problem_body
from irrigation.common.idempotency import StoredAnswer
from irrigation.common.schemas import NO_NUL
from irrigation.pumps.errors import Refused
from irrigation.pumps.models import ActivationStatus, Priority, PumpActivation


class RequestPriority(StrEnum):
    """What an API key may ask; `scheduled` and `threshold` belong to the automation."""

    manual = "manual"
    emergency = "emergency"


class ActivationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    duration_s: int = Field(
        ge=1, le=3600, description="Run time; at most the pump's max_runtime_s."
    )
    priority: RequestPriority = RequestPriority.manual
    reason: str | None = Field(default=None, max_length=500, json_schema_extra={"pattern": NO_NUL})
    queue: Literal["append", "front", "replace"] | None = Field(
        default=None,
        description="Absent: a busy pump, cooldown or full water source is refused (409). "
        "`append`: wait in the run queue after the others; `front`: wait first; `replace`: "
        "stop the other pumps' runs on this water source, then start. Cooldown and the "
        "runtime cap hold in every case. The answer is then a run request (`kind` "
        "`run_request`), not an activation.",
    )
    deadline: AwareDatetime | None = Field(
        default=None,
        description="With `queue`: skip the run if it cannot start by then (default 1 h). "
        "Must be in the future and at most 7 days ahead (422 otherwise).",
    )


class ActivationOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    kind: Literal["activation"] = "activation"
    id: uuid.UUID
    pump_id: uuid.UUID
    water_source_id: uuid.UUID
    status: ActivationStatus
    priority: Priority
    duration_s: int
    reason: str | None
    origin: str
    command_id: str
    sequence: int = Field(
        description="The fencing number of the start command (the pump's own counter); a "
        "start that waits while a command is sent to the device takes a fresh one."
    )
    requested_at: datetime
    start_deadline: datetime
    started_at: datetime | None
    auto_off_at: datetime | None = Field(
        description="The start command's own auto-off time, sent to the device: the latest "
        "the run can last, whether or not its start was confirmed."
    )
    run_deadline: datetime | None
    stop_requested_at: datetime | None
    stopped_at: datetime | None
    stop_cause: str | None = Field(
        description="What ended the run: `deadline` (it ran its time), `watchdog`, "
        "`operator` (`POST /v1/pumps/{id}/stop`), `stop_all`, `replaced` (a queued "
        "`replace`), `device` (the device ended it early by itself), `low_flow`, `no_flow`, "
        "`high_flow` (flow supervision: the mean flow after `flow_settle_s` was out of the "
        "pump's band), `leak` (its water source was halted for a leak)."
    )
    mean_flow_lpm: float | None = Field(
        description="The mean flow its pump's flow meter read from `flow_settle_s` after its "
        "start to its stop, for a run that ended normally (not stopped for its flow or a "
        "leak); null without a meter or at least two readings. The pump's expected flow is "
        "learned from these."
    )
    error: str | None = Field(
        description="Why the run failed or ended early, as a class: `gateway_unreachable`, "
        "`gateway_refused`, `gateway_bad_answer`, `gateway_no_state`, `gateway_closed`, "
        "`stale_sequence`, `device_error`, `device_not_running`, `not_confirmed`, "
        "`stop_unconfirmed`, `invalid_hardware_id`. The device's or the network's own "
        "words are kept in the service's log, never shown here."
    )


class ActivationEventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    activation_id: uuid.UUID
    at: datetime
    status: ActivationStatus
    cause: str
    detail: dict[str, Any] | None


class StopResult(BaseModel):
    stopped: list[ActivationOut] = Field(description="Activations that this request stopped.")


def activation_answer(outcome: PumpActivation | Refused) -> StoredAnswer:
    """The answer to a request for a run now: 202 with the activation, or the refusal's 409
    (stored alike for an `Idempotency-Key`)."""
    if isinstance(outcome, Refused):
        body = problem_body(
            outcome.status, outcome.code, outcome.title, outcome.detail, **outcome.extra
        )
        return StoredAnswer(outcome.status, body, outcome.headers)
    body = ActivationOut.model_validate(outcome).model_dump(mode="json")
    return StoredAnswer(202, body, {"Location": f"/v1/activations/{outcome.id}"})
