"""What refuses a run before the source's count: the pump's own state (address, enabled,
fault, busy, cooldown), its source's halt, and limits that no count changes (max runtime,
a flow above the source's). One function for the locked gate and for the unlocked look a
request takes after another request for the same pump (pumps/prefilter.py)."""

import math
import uuid
from datetime import datetime, timedelta
from typing import Protocol

from irrigation.common.errors import Invalid
from irrigation.gateway import is_addressable
from irrigation.pumps import flow
from irrigation.pumps.errors import (
    FlowAboveSource,
    InCooldown,
    PumpBusy,
    PumpDisabled,
    PumpFault,
    SourceHalted,
    Unaddressable,
)


class PumpState(Protocol):
    """The pump's columns the checks read: the ORM row, or a Core row of them."""

    @property
    def hardware_id(self) -> str: ...
    @property
    def enabled(self) -> bool: ...
    @property
    def fault(self) -> str | None: ...
    @property
    def max_runtime_s(self) -> int: ...
    @property
    def cooldown_s(self) -> int: ...
    @property
    def cooldown_until(self) -> datetime | None: ...
    @property
    def nominal_flow_lpm(self) -> float | None: ...
    @property
    def active_activation_id(self) -> uuid.UUID | None: ...


class SourceState(Protocol):
    @property
    def id(self) -> uuid.UUID: ...
    @property
    def halted_at(self) -> datetime | None: ...
    @property
    def max_flow_lpm(self) -> float | None: ...


def seconds_until(moment: datetime, now: datetime) -> int:
    return max(1, math.ceil((moment - now).total_seconds()))


def check_duration(pump: PumpState, duration_s: int) -> None:
    if duration_s > pump.max_runtime_s:
        raise Invalid(
            f"duration_s {duration_s} exceeds this pump's max_runtime_s ({pump.max_runtime_s} s)",
            field="body.duration_s",
            code="duration_exceeds_max_runtime",
            max_runtime_s=pump.max_runtime_s,
        )


def check(
    pump: PumpState,
    source: SourceState,
    now: datetime,
    busy_deadline: datetime | None,
    busy_duration_s: int | None,
    duration_s: int,
) -> None:
    """Raise the first refusal (or the 422 of a duration above max runtime), in the order
    the API documents; `busy_*`: the pump's active run's deadline and duration."""
    if not is_addressable(pump.hardware_id):
        raise Unaddressable(pump.hardware_id)
    if not pump.enabled:
        raise PumpDisabled()
    if pump.fault:
        raise PumpFault(pump.fault)
    if source.halted_at is not None:
        raise SourceHalted(source.id, source.halted_at)
    check_duration(pump, duration_s)
    if source.max_flow_lpm is not None:
        alone = flow.budget_for(pump.nominal_flow_lpm, source.max_flow_lpm, 0.0)
        if alone.exceeds_alone:
            raise FlowAboveSource(source.id, alone)
    if pump.active_activation_id is not None:
        # Waiting helps once the run has ended and the pump has rested.
        run_ends = busy_deadline or now + timedelta(seconds=busy_duration_s or 0)
        ends = run_ends + timedelta(seconds=pump.cooldown_s)
        raise PumpBusy(pump.active_activation_id, seconds_until(ends, now))
    if pump.cooldown_until is not None and pump.cooldown_until > now:
        raise InCooldown(pump.cooldown_until, seconds_until(pump.cooldown_until, now))
