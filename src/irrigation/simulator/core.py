"""The simulated pump controllers, whatever the transport: one `DeviceFleet` holding every
device, addressed by `(site_id, hardware_id)`, and the one physical truth (every real on/off
interval) that tests judge safety from.

A transport hands a command in as its wire JSON (`{op, command_id, sequence, duration_s?,
auto_off_at?}`) and sends back the acknowledgement JSON (`{command_id, result, detail?,
state}`); it reads a device's state JSON and subscribes to state changes (start, stop,
auto-off) to publish them. HTTP is `device.py`; an MQTT front end is the same calls on
other wires. Physical faults (stuck relays) are played here; faults about answers are the
transport's. Nothing here awaits: each command is applied whole on the event loop.

The rules a device keeps (docs/device-protocol.md): it remembers the highest sequence seen
in any command (its fence) and refuses a start at or below it, and a halt below it; a stop
stops only the start it names; a repeated `(op, command_id)` gets its first answer again
and does nothing; every run ends by itself at `min(now + duration_s, auto_off_at)`."""

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, Field, TypeAdapter, ValidationError

from irrigation.gateway import AckResult, DeviceState
from irrigation.simulator.faults import FaultBook

StoppedBy = Literal["command", "halt", "auto_off"]
DeviceKey = tuple[str, str]
CommandId = Annotated[str, Field(min_length=1, max_length=100)]
SequenceNumber = Annotated[int, Field(ge=0, le=2**63 - 1)]


class StartCommand(BaseModel):
    op: Literal["start"] = "start"
    command_id: CommandId
    sequence: SequenceNumber
    duration_s: float = Field(gt=0, le=3600)
    auto_off_at: AwareDatetime | None = Field(
        default=None, description="The run ends by this moment at the latest."
    )


class StopCommand(BaseModel):
    op: Literal["stop"] = "stop"
    command_id: CommandId = Field(description="The start command to stop.")
    sequence: SequenceNumber


class HaltCommand(BaseModel):
    op: Literal["halt"] = "halt"
    command_id: CommandId = Field(description="This halt's own id (de-duplication).")
    sequence: SequenceNumber


WireCommand = Annotated[StartCommand | StopCommand | HaltCommand, Field(discriminator="op")]
_COMMAND: TypeAdapter[StartCommand | StopCommand | HaltCommand] = TypeAdapter(WireCommand)

# What a transport is told on every change of a device's reported state; None when the
# device is gone (the simulator was reset).
StateListener = Callable[[str, str, dict[str, Any] | None], None]


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


@dataclass
class Run:
    """One real on/off interval of one device."""

    site_id: str
    hardware_id: str
    command_id: str
    sequence: int
    started_at: datetime
    auto_off_at: datetime
    stopped_at: datetime | None = None
    stopped_by: StoppedBy | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "site_id": self.site_id,
            "hardware_id": self.hardware_id,
            "command_id": self.command_id,
            "sequence": self.sequence,
            "started_at": _iso(self.started_at),
            "stopped_at": _iso(self.stopped_at),
            "stopped_by": self.stopped_by,
        }


@dataclass(frozen=True)
class Received:
    """One command as the device received it, and what it answered (the command log)."""

    site_id: str
    hardware_id: str
    at: datetime
    op: str
    command_id: str
    sequence: int
    result: str
    duplicate: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "site_id": self.site_id,
            "hardware_id": self.hardware_id,
            "at": self.at.isoformat(),
            "op": self.op,
            "command_id": self.command_id,
            "sequence": self.sequence,
            "result": self.result,
            "duplicate": self.duplicate,
        }


@dataclass
class Commanded:
    """The start the firmware believes it runs (the relay may disagree: stuck faults)."""

    command_id: str
    auto_off_at: datetime


@dataclass
class Device:
    site_id: str
    hardware_id: str
    fence: int | None = None
    commanded: Commanded | None = None
    relay: Run | None = None  # on: the run in the truth that it is
    last_run: Run | None = None
    answers: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    timer: asyncio.TimerHandle | None = None
    published: dict[str, Any] | None = None  # the state listeners were last told

    def state(self) -> DeviceState:
        """The relay as sensed, and the fence."""
        if self.relay is not None:
            return DeviceState(
                True,
                self.relay.command_id,
                self.fence,
                self.relay.started_at,
                self.relay.auto_off_at,
            )
        last = self.last_run
        return DeviceState(
            False,
            last.command_id if last else None,
            self.fence,
            last.stopped_at if last else None,
            None,
        )

    @property
    def busy(self) -> bool:
        return self.commanded is not None or self.relay is not None


class DeviceFleet:
    """Every simulated device and the truth; `faults` is shared with the transports."""

    def __init__(
        self,
        faults: FaultBook | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.faults = faults if faults is not None else FaultBook()
        self.clock = clock
        self.devices: dict[DeviceKey, Device] = {}
        self.runs: list[Run] = []
        self.received: list[Received] = []
        self._listeners: list[StateListener] = []

    # What a transport calls --------------------------------------------------------------

    def handle(self, site_id: str, hardware_id: str, command: Mapping[str, Any]) -> dict[str, Any]:
        """Apply one wire command to one device; returns the acknowledgement JSON."""
        device = self._device(site_id, hardware_id)
        now = self.clock()
        self._settle(device, now)
        try:
            parsed = _COMMAND.validate_python(command)
        except ValidationError as exc:
            command_id = command.get("command_id")
            return {
                "command_id": command_id if isinstance(command_id, str) else None,
                "result": AckResult.error.value,
                "detail": f"invalid command: {exc.errors()[0]['msg']}",
                "state": self._publish(device),
            }
        answer = device.answers.get((parsed.op, parsed.command_id))
        duplicate = answer is not None
        if answer is None:
            answer = self._apply(device, parsed, now)
            device.answers[(parsed.op, parsed.command_id)] = answer
        device.fence = max(device.fence if device.fence is not None else -1, parsed.sequence)
        self.received.append(
            Received(
                site_id,
                hardware_id,
                now,
                parsed.op,
                parsed.command_id,
                parsed.sequence,
                answer["result"],
                duplicate,
            )
        )
        return {**answer, "state": self._publish(device)}

    def state(self, site_id: str, hardware_id: str) -> dict[str, Any]:
        """The device's reported state JSON (an unknown device is idle and has no fence)."""
        device = self._device(site_id, hardware_id)
        self._settle(device, self.clock())
        return self._publish(device)

    def subscribe(self, listener: StateListener) -> Callable[[], None]:
        """Call `listener(site_id, hardware_id, state)` on every change of a device's state
        (start, stop, halt, auto-off, a higher fence); returns the unsubscribe."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def truth(self, site_id: str | None = None, hardware_id: str | None = None) -> list[Run]:
        self.settle_all()
        return [
            r
            for r in self.runs
            if (site_id is None or r.site_id == site_id)
            and (hardware_id is None or r.hardware_id == hardware_id)
        ]

    def commands(
        self, site_id: str | None = None, hardware_id: str | None = None
    ) -> list[Received]:
        """Every well-formed command the devices received, oldest first."""
        return [
            c
            for c in self.received
            if (site_id is None or c.site_id == site_id)
            and (hardware_id is None or c.hardware_id == hardware_id)
        ]

    def flow(self, site_id: str, hardware_id: str, nominal_lpm: float) -> tuple[bool, float]:
        """Whether the device's relay is on, and the water its line carries, L/min: its
        nominal flow while on (or the fault's `flow_lpm`), the fault's `leak_lpm` while
        off. A device that never got a command is off."""
        device = self.devices.get((site_id, hardware_id))
        if device is not None:
            self._settle(device, self.clock())
        on = device is not None and device.relay is not None
        fault = self.faults.for_device(site_id, hardware_id)
        if on:
            if fault is not None and fault.flow_lpm is not None:
                return True, fault.flow_lpm
            return True, nominal_lpm
        return False, fault.leak_lpm if fault is not None else 0.0

    def settle_all(self) -> None:
        now = self.clock()
        for device in self.devices.values():
            self._settle(device, now)
            self._publish(device)

    def reset(self) -> None:
        """No devices, runs, commands or faults (listeners stay, told each device is gone)."""
        self.close()
        for site_id, hardware_id in self.devices:
            for listener in list(self._listeners):
                listener(site_id, hardware_id, None)
        self.devices.clear()
        self.runs.clear()
        self.received.clear()
        self.faults.reset()

    def close(self) -> None:
        for device in self.devices.values():
            if device.timer is not None:
                device.timer.cancel()
                device.timer = None

    # The device's rules ------------------------------------------------------------------

    def _apply(
        self, device: Device, command: StartCommand | StopCommand | HaltCommand, now: datetime
    ) -> dict[str, Any]:
        fence = device.fence
        if isinstance(command, StartCommand):
            if fence is not None and command.sequence <= fence:
                return _answer(
                    command.command_id,
                    AckResult.stale_sequence,
                    f"sequence {command.sequence} is not above {fence}",
                )
            if device.busy:
                running = device.relay or device.commanded
                assert running is not None
                return _answer(
                    command.command_id, AckResult.error, f"busy: running {running.command_id}"
                )
            off = now + timedelta(seconds=command.duration_s)
            if command.auto_off_at is not None:
                off = min(off, command.auto_off_at)
            if off <= now:
                return _answer(command.command_id, AckResult.error, "expired: auto_off_at is past")
            self._turn_on(device, command, now, off)
            return _answer(command.command_id, AckResult.ok)
        if isinstance(command, StopCommand):
            commanded = device.commanded
            if commanded is None or commanded.command_id != command.command_id:
                return _answer(command.command_id, AckResult.not_running)
            self._turn_off(device, now, "command")
            return _answer(command.command_id, AckResult.ok)
        if fence is not None and command.sequence < fence:
            # A command decided after this halt has reached the device: leave its run alone.
            return _answer(
                command.command_id,
                AckResult.stale_sequence,
                f"sequence {command.sequence} is below {fence}",
            )
        self._turn_off(device, now, "halt")
        return _answer(command.command_id, AckResult.ok)

    def _turn_on(self, device: Device, command: StartCommand, now: datetime, off: datetime) -> None:
        device.commanded = Commanded(command.command_id, off)
        fault = self.faults.for_device(device.site_id, device.hardware_id)
        if fault is None or not fault.stuck_off:
            run = Run(
                device.site_id,
                device.hardware_id,
                command.command_id,
                command.sequence,
                started_at=now,
                auto_off_at=off,
            )
            self.runs.append(run)
            device.relay = run
        self._arm(device, off)

    def _turn_off(self, device: Device, now: datetime, by: StoppedBy) -> None:
        device.commanded = None
        fault = self.faults.for_device(device.site_id, device.hardware_id)
        if device.relay is not None and (fault is None or not fault.stuck_on):
            self._relay_off(device, now, by)

    def _relay_off(self, device: Device, at: datetime, by: StoppedBy) -> None:
        run = device.relay
        assert run is not None
        run.stopped_at, run.stopped_by = at, by
        device.relay, device.last_run = None, run

    def _settle(self, device: Device, now: datetime) -> None:
        """End whatever passed its auto-off time.

        The device's own timer is exact; the event loop's may wake a few ms late, so every
        access settles first and never sees a relay on past its auto_off_at."""
        if device.relay is not None and device.relay.auto_off_at <= now:
            self._relay_off(device, device.relay.auto_off_at, "auto_off")
        if device.commanded is not None and device.commanded.auto_off_at <= now:
            device.commanded = None

    def _arm(self, device: Device, at: datetime) -> None:
        if device.timer is not None:
            device.timer.cancel()
        delay = max(0.0, (at - self.clock()).total_seconds())
        device.timer = asyncio.get_running_loop().call_later(delay, self._auto_off, device)

    def _auto_off(self, device: Device) -> None:
        device.timer = None
        self._settle(device, self.clock())
        self._publish(device)
        # Woken a hair early (timer resolution): look again at the auto-off time itself.
        pending = device.relay or device.commanded
        if pending is not None:
            self._arm(device, pending.auto_off_at)

    def _publish(self, device: Device) -> dict[str, Any]:
        """The state JSON, told to the listeners if it changed since they were last told."""
        state = device.state().to_json()
        if state != device.published:
            device.published = state
            for listener in list(self._listeners):
                listener(device.site_id, device.hardware_id, state)
        return state

    def _device(self, site_id: str, hardware_id: str) -> Device:
        key = (site_id, hardware_id)
        device = self.devices.get(key)
        if device is None:
            device = self.devices[key] = Device(site_id, hardware_id)
        return device


def _answer(command_id: str, result: AckResult, detail: str | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = {"command_id": command_id, "result": result.value}
    if detail is not None:
        answer["detail"] = detail
    return answer
