"""Fleet refusals that need more than a schema: answers (409), not failures."""

from irrigation.common.errors import DomainError

# What a stop must reach (the device) and what capacity counts (the source, the zone's
# runs, the flow the run was admitted with) while a run is active.
RUN_BOUND_FIELDS = ("hardware_id", "water_source_id", "zone_id", "nominal_flow_lpm")


class PumpRunning(DomainError):
    status, code, title = 409, "pump_running", "Pump running"

    def __init__(self, fields: list[str]) -> None:
        super().__init__(
            f"the pump has an active run; {', '.join(fields)} cannot change until it ends "
            "(stop it first)",
            fields=fields,
        )
