"""Injectable device faults, per device, per site, per hardware id or for every device.

Two kinds, applied in two places. About answers (the transport plays them): `latency_ms`,
`error_rate`, `hang` (no answer, the command not applied), `drop_ack` (the command done, its
answer lost), `offline` (no answer at all, nothing done). Physical (the device core plays
them, whatever the transport): `stuck_off` (a start is acknowledged, the relay stays off)
and `stuck_on` (a stop or halt is acknowledged, the relay stays on until its auto-off).
About the water its flow meter measures (simulator/flow.py): `flow_lpm` while it runs in
place of its nominal flow (0: a dry pump or a blocked line; high: a burst), `leak_lpm`
while it does not."""

import random
from dataclasses import dataclass, field
from typing import Literal

from pydantic import AliasChoices, BaseModel, Field

from irrigation.gateway import HARDWARE_ID_PATTERN

RequestKind = Literal["start", "stop", "halt", "state"]


class Fault(BaseModel):
    site_id: str | None = Field(
        default=None, pattern=HARDWARE_ID_PATTERN, description="Absent: every site."
    )
    hardware_id: str | None = Field(
        default=None, pattern=HARDWARE_ID_PATTERN, description="Absent: every device."
    )
    latency_ms: int = Field(default=0, ge=0)
    error_rate: float = Field(default=0, ge=0, le=1)
    hang: bool = False
    # `drop_response` is its former name.
    drop_ack: bool = Field(
        default=False, validation_alias=AliasChoices("drop_ack", "drop_response")
    )
    offline: bool = False
    stuck_off: bool = False
    stuck_on: bool = False
    flow_lpm: float | None = Field(
        default=None,
        ge=0,
        le=1_000_000,
        description="While it runs, its meter reads this instead of the pump's nominal flow "
        "(0: dry run or a blocked line; above nominal: a burst).",
    )
    leak_lpm: float = Field(
        default=0, ge=0, le=1_000_000, description="While it does not run, its meter reads this."
    )
    ops: list[RequestKind] | None = Field(
        default=None,
        description="The requests whose answers the answer faults play on (e.g. only "
        "`start`, to delay starts and nothing else); absent: every request.",
    )

    def answers(self, request: RequestKind) -> bool:
        """Whether the answer faults play on this request."""
        return self.ops is None or request in self.ops


class FaultRequest(Fault):
    seed: int | None = Field(default=None, description="Seeds the error-rate dice.")


FaultKey = tuple[str | None, str | None]


@dataclass
class FaultBook:
    """The faults in force. The most specific one for a device wins, whole: (site,
    device), then the device on every site, then the site's, then everyone's."""

    faults: dict[FaultKey, Fault] = field(default_factory=dict)
    rng: random.Random = field(default_factory=random.Random)

    def set(self, fault: Fault, seed: int | None = None) -> None:
        self.faults[(fault.site_id, fault.hardware_id)] = fault
        if seed is not None:
            self.rng.seed(seed)

    def clear(self) -> None:
        self.faults.clear()

    def reset(self) -> None:
        self.clear()
        self.rng = random.Random()

    def all(self) -> list[Fault]:
        return list(self.faults.values())

    def for_device(self, site_id: str, hardware_id: str) -> Fault | None:
        for key in ((site_id, hardware_id), (None, hardware_id), (site_id, None), (None, None)):
            found = self.faults.get(key)
            if found is not None:
                return found
        return None

    def fails(self, fault: Fault) -> bool:
        """Roll the error-rate dice once."""
        return self.rng.random() < fault.error_rate
