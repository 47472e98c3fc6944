"""The hardware gateway, the client of the pump controllers: the device address, the wire
shapes (command, acknowledgement, state), one `Gateway` protocol every transport driver
implements, and its HTTP driver (httpx, timeouts, bounded retries). It knows no domain:
site ids come in as strings or UUIDs, and the worker makes one gateway and hands it to the
pump jobs in the worker context.

A device is `(site_id, hardware_id)`. Every command carries a `command_id` the device
de-duplicates, so a retry after a lost answer is never a second start, and a `sequence`
(the pump's fencing counter): the device refuses a start at or below the highest sequence
it has seen. An acknowledgement is not the truth: callers confirm with the device's own
state (`await_state`). The contract a device keeps is docs/device-protocol.md."""

import asyncio
import re
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from irrigation.settings import Settings

if TYPE_CHECKING:
    # Imported where a driver runs (the worker): the API loads this module for the worker
    # context's types alone, and httpx would cost each API worker 6 MB of memory.
    import httpx

# One path segment or topic level: no `/`, no `..` alone, no MQTT wildcards (`+`, `#`).
HARDWARE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_ADDRESS_PART = re.compile(HARDWARE_ID_PATTERN)


class GatewayError(Exception):
    """The device could not be reached, or refused the request itself, after the bounded
    retries. An answered command (any `AckResult`) is not an error."""


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


class _Refused(Exception):
    pass


# How often `await_state` asks an HTTP device: soon at first (a relay answers in
# milliseconds), then less often.
_POLL_FIRST_S = 0.02
_POLL_MAX_S = 0.25
# Devices asked at once by `states` (the reconciliation's sweep).
_STATES_CONCURRENCY = 16


class HttpGateway:
    """The HTTP driver: `POST /devices/{site}/{hw}/{start|stop|halt}`, `GET
    /devices/{site}/{hw}`. Timeouts and 5xx are retried with back-off (every command is
    de-duplicated by the device); a 4xx is the device refusing the request and is not."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 2.0,
        retries: int = 2,
        backoff_s: float = 0.1,
        transport: "httpx.AsyncBaseTransport | None" = None,
    ) -> None:
        import httpx

        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self._client = httpx.AsyncClient(base_url=base_url, timeout=timeout_s, transport=transport)

    @staticmethod
    def max_call_s(timeout_s: float, retries: int, backoff_s: float = 0.1) -> float:
        """The longest one gateway call can take, retries included."""
        backoff: float = sum(backoff_s * 2**i for i in range(retries))
        return (retries + 1) * timeout_s + backoff

    @property
    def call_budget_s(self) -> float:
        return self.max_call_s(self.timeout_s, self.retries, self.backoff_s)

    async def send(self, device: DeviceAddress, command: Command) -> Ack:
        body = command.to_json()
        del body["op"]  # the path says it
        return Ack.from_json(await self._call(f"/devices/{device}/{command.op}", body))

    async def state(self, device: DeviceAddress) -> DeviceState:
        return DeviceState.from_json(await self._call(f"/devices/{device}", None))

    async def await_state(
        self, device: DeviceAddress, until: StatePredicate, timeout_s: float
    ) -> DeviceState | None:
        deadline = time.monotonic() + timeout_s
        pause = _POLL_FIRST_S
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            try:
                # One attempt per poll: the loop is the retry, and the deadline holds.
                found = await self._once(f"/devices/{device}", min(self.timeout_s, remaining))
                state = DeviceState.from_json(found)
            except (GatewayError, KeyError, TypeError, ValueError):
                state = None
            if state is not None and until(state):
                return state
            await asyncio.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 2, _POLL_MAX_S)

    async def states(
        self, devices: Sequence[DeviceAddress]
    ) -> dict[DeviceAddress, DeviceState | None]:
        limit = asyncio.Semaphore(_STATES_CONCURRENCY)

        async def one(device: DeviceAddress) -> DeviceState | None:
            async with limit:
                try:
                    return DeviceState.from_json(
                        await self._once(f"/devices/{device}", self.timeout_s)
                    )
                except (GatewayError, KeyError, TypeError, ValueError):
                    return None

        found = await asyncio.gather(*(one(d) for d in devices))
        return dict(zip(devices, found, strict=True))

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _once(self, path: str, timeout_s: float) -> dict[str, Any]:
        import httpx

        try:
            response = await self._client.get(path, timeout=timeout_s)
            response.raise_for_status()
            data: dict[str, Any] = response.json()
            return data
        except (httpx.HTTPError, ValueError) as exc:
            raise GatewayError(f"{path}: {type(exc).__name__}: {exc}"[:300]) from None

    async def _call(self, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
        import httpx

        last: str = ""
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                if body is None:
                    response = await self._client.get(path)
                else:
                    response = await self._client.post(path, json=body)
                if 400 <= response.status_code < 500:
                    raise _Refused(f"{response.status_code} {response.text[:200]}")
                response.raise_for_status()
                data: dict[str, Any] = response.json()
                return data
            except _Refused as exc:
                # The device refused the request itself (malformed, unknown path): a retry
                # would be refused alike.
                raise GatewayError(f"device refused {path}: {exc}") from None
            except (httpx.HTTPError, ValueError) as exc:
                last = f"{type(exc).__name__}: {exc}"[:300]
        raise GatewayError(f"{path} failed after {self.retries + 1} attempts: {last}")


def create_gateway(settings: Settings) -> Gateway:
    """The driver the settings name (HTTP, at `IRRIGATION_GATEWAY_URL`)."""
    return HttpGateway(
        settings.gateway_url,
        timeout_s=settings.gateway_timeout_s,
        retries=settings.gateway_retries,
    )
