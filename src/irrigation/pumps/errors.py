"""Why an activation request is refused: answers (409), not failures."""

import uuid
from datetime import datetime

from irrigation.common.errors import DomainError, Invalid
from irrigation.gateway import HARDWARE_ID_PATTERN
from irrigation.pumps.flow import Budget


class Refused(DomainError):
    status = 409


class PumpBusy(Refused):
    code, title = "pump_busy", "Pump busy"

    def __init__(self, activation_id: uuid.UUID, retry_after_s: int | None) -> None:
        super().__init__(
            f"pump is busy with activation {activation_id}",
            active_activation_id=str(activation_id),
            headers={"Retry-After": str(retry_after_s)} if retry_after_s else None,
        )


class InCooldown(Refused):
    code, title = "cooldown", "Pump in cooldown"

    def __init__(self, until: datetime, retry_after_s: int) -> None:
        super().__init__(
            f"pump is resting until {until.isoformat()}",
            cooldown_until=until.isoformat(),
            retry_after_s=retry_after_s,
            headers={"Retry-After": str(retry_after_s)},
        )


class PumpFault(Refused):
    code, title = "fault", "Pump in fault"

    def __init__(self, fault: str) -> None:
        super().__init__(f"pump is latched in fault ({fault}); reset it first", fault=fault)


class PumpDisabled(Refused):
    code, title = "disabled", "Pump disabled"

    def __init__(self) -> None:
        super().__init__("pump is disabled")


class SourceHalted(Refused):
    """The pump's water source was halted for a leak (`halt_on_leak`): nothing runs on it
    until an operator resets it."""

    code, title = "source_halted", "Water source halted"

    def __init__(self, water_source_id: uuid.UUID, halted_at: datetime) -> None:
        super().__init__(
            f"water source {water_source_id} was halted for a leak at {halted_at.isoformat()}; "
            f"reset it (POST /v1/water-sources/{water_source_id}/reset) once it is fixed",
            water_source_id=str(water_source_id),
            halted_at=halted_at.isoformat(),
        )


class CapacityFull(Refused):
    """The source feeds as many pumps as it may (`limit` `pumps`)."""

    code, title = "capacity", "Water source at capacity"
    limit = "pumps"

    def __init__(self, water_source_id: uuid.UUID, limit: int, retry_after_s: int | None) -> None:
        super().__init__(
            f"water source {water_source_id} already feeds {limit} running pump(s)",
            limit=self.limit,
            water_source_id=str(water_source_id),
            max_concurrent_pumps=limit,
            headers={"Retry-After": str(retry_after_s)} if retry_after_s else None,
        )


class FlowFull(CapacityFull):
    """The source's flow budget has no room for this pump's flow (`limit` `flow`): the same
    refusal as a full source, so clients and the run queue treat it alike."""

    limit = "flow"

    def __init__(
        self, water_source_id: uuid.UUID, budget: Budget, retry_after_s: int | None
    ) -> None:
        self.budget = budget
        Refused.__init__(
            self,
            budget.sentence(str(water_source_id)),
            limit=self.limit,
            water_source_id=str(water_source_id),
            max_flow_lpm=budget.max_flow_lpm,
            running_flow_lpm=round(budget.running_flow_lpm, 3),
            requested_flow_lpm=budget.requested_flow_lpm,
            headers={"Retry-After": str(retry_after_s)} if retry_after_s else None,
        )


class FlowAboveSource(Invalid):
    """A pump whose nominal flow alone is above its source's `max_flow_lpm`: it can never
    run there, so waiting does not help (an `Invalid`: the run queue skips it)."""

    status, code, title = 409, "flow_exceeds_source", "Pump draws more than its source gives"

    def __init__(self, water_source_id: uuid.UUID, budget: Budget) -> None:
        super().__init__(
            f"the pump's nominal_flow_lpm ({budget.requested_flow_lpm:g}) is above its water "
            f"source's max_flow_lpm ({budget.max_flow_lpm:g}), so it can never run there; "
            "PATCH one of them first",
            code=self.code,
            water_source_id=str(water_source_id),
            max_flow_lpm=budget.max_flow_lpm,
            requested_flow_lpm=budget.requested_flow_lpm,
        )


class Unaddressable(Invalid):
    """A pump whose hardware_id predates the address pattern (the migration reported it):
    no command can name its device, so no run is admitted until it gets a valid one. An
    `Invalid`, not a `Refused`: waiting does not help, and the run queue skips it."""

    status, code, title = 409, "invalid_hardware_id", "Pump cannot be addressed"

    def __init__(self, hardware_id: str) -> None:
        super().__init__(
            f"the pump's hardware_id {hardware_id!r} does not match {HARDWARE_ID_PATTERN}, so "
            "no device can be addressed; PATCH the pump with a valid hardware_id first",
            code=self.code,
            hardware_id=hardware_id,
        )
