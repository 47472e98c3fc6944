"""A water source's flow budget: what its active runs draw, what one more run would, and
whether that fits under `max_flow_lpm`.

A run draws its pump's `nominal_flow_lpm`; a pump whose flow is unknown (null) counts as
the source's whole budget, so it runs alone there: counting it as nothing would let the
source be overdrawn, and refusing it would stop every pump of a source the moment its
limit is set. What the active runs draw is read from the pumps' current nominal flows,
which cannot change while a pump has an active run (`fleet.errors.RUN_BOUND_FIELDS`), so it
is what each run was admitted with."""

from dataclasses import dataclass

from sqlalchemy import ColumnElement, Float, func, literal, select
from sqlalchemy.orm import aliased

from irrigation.fleet.models import Pump, WaterSource
from irrigation.pumps.models import ACTIVE, PumpActivation

# Flows are floats: 0.1 + 0.2 must not be refused against a budget of 0.3.
TOLERANCE_LPM = 1e-6


def counted(nominal_flow_lpm: float | None, max_flow_lpm: float) -> float:
    """What one pump's run counts against a budget of `max_flow_lpm`."""
    return max_flow_lpm if nominal_flow_lpm is None else nominal_flow_lpm


def fits(running_lpm: float, requested_lpm: float, max_flow_lpm: float) -> bool:
    return running_lpm + requested_lpm <= max_flow_lpm + TOLERANCE_LPM


def exceeds_alone(requested_lpm: float, max_flow_lpm: float) -> bool:
    """A pump that alone draws more than its source may give can never run there."""
    return not fits(0.0, requested_lpm, max_flow_lpm)


def drawn(max_flow_lpm: float | ColumnElement[float]) -> ColumnElement[float]:
    """The sum, over the rows of a query joining active activations to their pumps, of what
    each counts against a budget of `max_flow_lpm` (a value, or a bound parameter)."""
    limit = (
        max_flow_lpm if isinstance(max_flow_lpm, ColumnElement) else literal(max_flow_lpm, Float)
    )
    each = func.coalesce(Pump.nominal_flow_lpm, limit)
    return func.coalesce(func.sum(each), 0.0)


_RUNNING = aliased(PumpActivation)
_THEIR_PUMP = aliased(Pump)

# What a water source's active runs draw now, as a column of a query over `WaterSource`
# (read without a lock: the run queue's hint; admission counts under the source's lock).
IN_USE_LPM = (
    select(
        func.coalesce(
            func.sum(func.coalesce(_THEIR_PUMP.nominal_flow_lpm, WaterSource.max_flow_lpm)), 0.0
        )
    )
    .select_from(_RUNNING)
    .join(_THEIR_PUMP, _THEIR_PUMP.id == _RUNNING.pump_id)
    .where(_RUNNING.water_source_id == WaterSource.id, _RUNNING.status.in_(ACTIVE))
    .correlate(WaterSource)
    .scalar_subquery()
)


@dataclass(frozen=True)
class Budget:
    """A source's flow budget as one admission or dispatch sees it, in L/min."""

    max_flow_lpm: float
    running_flow_lpm: float
    requested_flow_lpm: float
    # The pump has no nominal flow: it asks for the whole budget.
    unknown: bool = False

    @property
    def fits(self) -> bool:
        return fits(self.running_flow_lpm, self.requested_flow_lpm, self.max_flow_lpm)

    @property
    def exceeds_alone(self) -> bool:
        return exceeds_alone(self.requested_flow_lpm, self.max_flow_lpm)

    def detail(self) -> dict[str, str | float]:
        return {
            "limit": "flow",
            "max_flow_lpm": self.max_flow_lpm,
            "running_flow_lpm": round(self.running_flow_lpm, 3),
            "requested_flow_lpm": self.requested_flow_lpm,
        }

    def sentence(self, source: str, pump: str = "this pump") -> str:
        """`source` and `pump` as they should read (a name in quotes, or an id)."""
        unknown = " (it has no nominal_flow_lpm, so it counts as the whole budget)"
        return (
            f"water source {source} has {_lpm(self.running_flow_lpm)} of its "
            f"{_lpm(self.max_flow_lpm)} L/min in use; {pump} needs "
            f"{_lpm(self.requested_flow_lpm)} L/min{unknown if self.unknown else ''}"
        )


def budget_for(
    nominal_flow_lpm: float | None, max_flow_lpm: float, running_flow_lpm: float
) -> Budget:
    return Budget(
        max_flow_lpm,
        running_flow_lpm,
        counted(nominal_flow_lpm, max_flow_lpm),
        unknown=nominal_flow_lpm is None,
    )


def _lpm(value: float) -> str:
    return f"{round(value, 3):g}"
