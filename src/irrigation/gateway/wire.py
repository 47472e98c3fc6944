"""The device boundary's wire: the device address, the shapes every transport carries
(command, acknowledgement, state) and the one `Gateway` protocol each driver implements.

A device is `(site_id, hardware_id)`. Every command carries a `command_id` the device
de-duplicates, so a retry after a lost answer is never a second start, and a `sequence`
(the pump's fencing counter): the device refuses a start at or below the highest sequence
it has seen. An acknowledgement is not the truth: callers confirm with the device's own
state (`await_state`). The contract a device keeps is docs/device-protocol.md."""

import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

# One path segment or topic level: no `/`, no `..` alone, no MQTT wildcards (`+`, `#`).
HARDWARE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_ADDRESS_PART = re.compile(HARDWARE_ID_PATTERN)


class GatewayFailure(StrEnum):
    """What went wrong, as tenants may be told it: the message itself (paths, topics, the
    device's or the network's own text) is for our logs only."""

    unreachable = "unreachable"
    """No (usable) answer after the bounded retries: timeouts, connection errors, 5xx."""
    refused = "refused"
    """The device refused the request itself (malformed, unknown path)."""
    bad_answer = "bad_answer"
    """An answer that was not the JSON the wire contract says."""
    no_state = "no_state"
    """The device has reported no state on this connection."""
    closed = "closed"
    """The gateway is shutting down."""


class GatewayError(Exception):
    """The device could not be reached, or refused the request itself, after the bounded
    retries. An answered command (any `AckResult`) is not an error. `failure` is what a
    tenant may see; the message is for the logs."""

    def __init__(self, message: str, failure: GatewayFailure = GatewayFailure.unreachable):
        super().__init__(message)
        self.failure = failure


class InvalidAddress(ValueError):
    """A site or hardware id that cannot be a device address (see HARDWARE_ID_PATTERN)."""


def is_addressable(hardware_id: str) -> bool:
    return _ADDRESS_PART.fullmatch(hardware_id) is not None


@dataclass(frozen=True)
class DeviceAddress:
    """One device: `irrigation/{site_id}/devices/{hardware_id}/...` over MQTT,
    `/devices/{site_id}/{hardware_id}/...` over HTTP."""

    site_id: str
    hardware_id: str

    def __post_init__(self) -> None:
        for part in (self.site_id, self.hardware_id):
            if not isinstance(part, str) or _ADDRESS_PART.fullmatch(part) is None:
                raise InvalidAddress(f"{part!r} does not match {HARDWARE_ID_PATTERN}")

    @classmethod
    def of(cls, site_id: uuid.UUID | str, hardware_id: str) -> "DeviceAddress":
        return cls(str(site_id), hardware_id)

    def __str__(self) -> str:
        return f"{self.site_id}/{self.hardware_id}"


class Op(StrEnum):
    start = "start"
    stop = "stop"
    halt = "halt"


class AckResult(StrEnum):
    ok = "ok"
    stale_sequence = "stale_sequence"
    not_running = "not_running"
    error = "error"


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def _moment(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


@dataclass(frozen=True)
class DeviceState:
    """What a device reports: whether its relay is on, and which start command turned it
    on (while running) or last ran (while idle); `since` is when the relay went on, or off;
    `sequence` is the highest sequence the device has seen in any command (its fence)."""

    running: bool
    command_id: str | None = None
    sequence: int | None = None
    since: datetime | None = None
    auto_off_at: datetime | None = None

    def is_running(self, command_id: str) -> bool:
        return self.running and self.command_id == command_id

    def to_json(self) -> dict[str, Any]:
        return {
            "running": self.running,
            "command_id": self.command_id,
            "sequence": self.sequence,
            "since": _iso(self.since),
            "auto_off_at": _iso(self.auto_off_at),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "DeviceState":
        sequence = data.get("sequence")
        return cls(
            running=bool(data["running"]),
            command_id=data.get("command_id"),
            sequence=int(sequence) if sequence is not None else None,
            since=_moment(data.get("since")),
            auto_off_at=_moment(data.get("auto_off_at")),
        )


@dataclass(frozen=True)
class Command:
    """One command on the wire: `{op, command_id, sequence, duration_s?, auto_off_at?}`.

    A start names itself; a stop names the start it stops; a halt (stop whatever runs) has
    its own id, for de-duplication only."""

    op: Op
    command_id: str
    sequence: int
    duration_s: float | None = None
    auto_off_at: datetime | None = None

    @classmethod
    def start(
        cls, command_id: str, sequence: int, duration_s: float, auto_off_at: datetime
    ) -> "Command":
        return cls(Op.start, command_id, sequence, duration_s, auto_off_at)

    @classmethod
    def stop(cls, command_id: str, sequence: int) -> "Command":
        return cls(Op.stop, command_id, sequence)

    @classmethod
    def halt(cls, sequence: int, command_id: str | None = None) -> "Command":
        return cls(Op.halt, command_id or f"halt-{uuid.uuid4()}", sequence)

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "op": self.op.value,
            "command_id": self.command_id,
            "sequence": self.sequence,
        }
        if self.duration_s is not None:
            body["duration_s"] = self.duration_s
        if self.auto_off_at is not None:
            body["auto_off_at"] = self.auto_off_at.isoformat()
        return body


@dataclass(frozen=True)
class Ack:
    """A device's answer to one command: `{command_id, result, detail?, state}`."""

    command_id: str
    result: AckResult
    state: DeviceState
    detail: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Ack":
        return cls(
            command_id=str(data["command_id"]),
            result=AckResult(data["result"]),
            state=DeviceState.from_json(data["state"]),
            detail=data.get("detail"),
        )


StatePredicate = Callable[[DeviceState], bool]


class Gateway(Protocol):
    """What the pump jobs need of the devices, whatever the transport."""

    @property
    def call_budget_s(self) -> float:
        """The longest one `send` or `state` can take, retries included (for the watchdog
        and the stop job's time budget)."""
        ...

    async def send(self, device: DeviceAddress, command: Command) -> Ack:
        """Deliver one command and return the device's answer; GatewayError when no
        answer came after the bounded retries (the command may or may not have acted)."""
        ...

    async def state(self, device: DeviceAddress) -> DeviceState:
        """The device's reported state now; GatewayError when it does not answer."""
        ...

    async def await_state(
        self, device: DeviceAddress, until: StatePredicate, timeout_s: float
    ) -> DeviceState | None:
        """The first reported state that satisfies `until`, or None after `timeout_s`."""
        ...

    async def states(
        self, devices: Sequence[DeviceAddress]
    ) -> dict[DeviceAddress, DeviceState | None]:
        """Each device's reported state, None for one that did not answer."""
        ...

    async def aclose(self) -> None: ...


def max_call_s(timeout_s: float, retries: int, backoff_s: float) -> float:
    """The longest one call with bounded retries can take: every attempt times out, with
    back-off `backoff_s * 2**n` before the n-th retry."""
    backoff: float = sum(backoff_s * 2**i for i in range(retries))
    return (retries + 1) * timeout_s + backoff
