"""The simulated pump controller: the device protocol over HTTP, injected faults, and the
truth (every real on/off interval) that tests judge safety from."""

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

StoppedBy = Literal["command", "auto_off"]


class StartCommand(BaseModel):
    command_id: str = Field(min_length=1, max_length=100)
    duration_s: float = Field(gt=0, le=3600)
    sequence: int | None = Field(default=None, ge=0)


class StopCommand(BaseModel):
    command_id: str


class Fault(BaseModel):
    hardware_id: str | None = None
    latency_ms: int = Field(default=0, ge=0)
    error_rate: float = Field(default=0, ge=0, le=1)
    hang: bool = False
    drop_response: bool = False


class FaultRequest(Fault):
    seed: int | None = None


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


@dataclass
class Run:
    """One real on/off interval of one pump."""

    hardware_id: str
    command_id: str
    sequence: int | None
    started_at: datetime
    auto_off_at: datetime
    stopped_at: datetime | None = None
    stopped_by: StoppedBy | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "hardware_id": self.hardware_id,
            "command_id": self.command_id,
            "sequence": self.sequence,
            "started_at": _iso(self.started_at),
            "stopped_at": _iso(self.stopped_at),
            "stopped_by": self.stopped_by,
        }


Answer = tuple[int, dict[str, Any]]


@dataclass
class Simulator:
    """All state of one simulated controller; every change happens under `lock`."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    runs: list[Run] = field(default_factory=list)
    running: dict[str, Run] = field(default_factory=dict)
    first_answers: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    last_sequence: dict[str, int] = field(default_factory=dict)
    faults: dict[str | None, Fault] = field(default_factory=dict)
    rng: random.Random = field(default_factory=random.Random)
    timers: dict[str, asyncio.Task[None]] = field(default_factory=dict)

    def settle(self, now: datetime) -> None:
        """Turn off every run whose auto-off time has passed.

        The device's own timer is exact; the asyncio timer may wake a few ms late, so each
        request settles first and never sees a pump running past its auto_off_at."""
        for run in list(self.running.values()):
            if run.auto_off_at <= now:
                self._turn_off(run, run.auto_off_at, "auto_off")

    def start(self, hardware_id: str, command: StartCommand, now: datetime) -> Answer:
        first = self.first_answers.get((hardware_id, command.command_id))
        if first is not None:
            return 200, {**first, "duplicate": True}
        last = self.last_sequence.get(hardware_id)
        if command.sequence is not None and last is not None and command.sequence <= last:
            return 409, {"error": "stale_sequence", "last_sequence": last}
        current = self.running.get(hardware_id)
        if current is not None:
            return 409, {"error": "busy", "command_id": current.command_id}

        run = Run(
            hardware_id=hardware_id,
            command_id=command.command_id,
            sequence=command.sequence,
            started_at=now,
            auto_off_at=now + timedelta(seconds=command.duration_s),
        )
        self.runs.append(run)
        self.running[hardware_id] = run
        if command.sequence is not None:
            self.last_sequence[hardware_id] = command.sequence
        self.timers[hardware_id] = asyncio.create_task(self._auto_off(run))
        answer = {
            "hardware_id": hardware_id,
            "command_id": run.command_id,
            "running": True,
            "started_at": _iso(run.started_at),
            "auto_off_at": _iso(run.auto_off_at),
            "duplicate": False,
        }
        self.first_answers[(hardware_id, command.command_id)] = answer
        return 200, answer

    def stop(self, hardware_id: str, now: datetime) -> Answer:
        run = self.running.get(hardware_id)
        if run is not None:
            self._turn_off(run, now, "command")
        return 200, {"hardware_id": hardware_id, "running": False, "stopped": run is not None}

    def status(self, hardware_id: str) -> Answer:
        run = self.running.get(hardware_id)
        return 200, {
            "hardware_id": hardware_id,
            "running": run is not None,
            "command_id": run.command_id if run else None,
            "started_at": _iso(run.started_at) if run else None,
            "auto_off_at": _iso(run.auto_off_at) if run else None,
            "last_sequence": self.last_sequence.get(hardware_id),
        }

    def fault_for(self, hardware_id: str) -> Fault | None:
        own = self.faults.get(hardware_id)
        return own if own is not None else self.faults.get(None)

    def reset(self) -> None:
        self.cancel_timers()
        self.runs.clear()
        self.running.clear()
        self.first_answers.clear()
        self.last_sequence.clear()
        self.faults.clear()
        self.rng = random.Random()

    def cancel_timers(self) -> None:
        for timer in self.timers.values():
            timer.cancel()
        self.timers.clear()

    def _turn_off(self, run: Run, at: datetime, stopped_by: StoppedBy) -> None:
        run.stopped_at = at
        run.stopped_by = stopped_by
        del self.running[run.hardware_id]
        timer = self.timers.pop(run.hardware_id, None)
        # The timer may be the caller; cancelling itself would only mark it cancelled.
        if timer is not None and timer is not asyncio.current_task():
            timer.cancel()

    async def _auto_off(self, run: Run) -> None:
        await asyncio.sleep((run.auto_off_at - datetime.now(UTC)).total_seconds())
        async with self.lock:
            if self.running.get(run.hardware_id) is run:
                self._turn_off(run, run.auto_off_at, "auto_off")


async def _until_disconnected(request: Request) -> None:
    # The body is already read, so the server's next message is the client's disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _through_faults(
    sim: Simulator, hardware_id: str, request: Request, apply: Callable[[], Awaitable[Answer]]
) -> JSONResponse:
    """Play the pump's fault (if any) around applying one command.

    Latency is spent even if the client gives up meanwhile: the command was already on the
    wire, so a real device would still act on it."""
    fault = sim.fault_for(hardware_id)
    if fault is not None:
        await asyncio.sleep(fault.latency_ms / 1000)
        if sim.rng.random() < fault.error_rate:
            return JSONResponse({"error": "injected"}, status_code=503)
        if fault.hang:
            await _until_disconnected(request)
            return JSONResponse({"error": "hung"}, status_code=503)
    status_code, body = await apply()
    if fault is not None and fault.drop_response:
        await _until_disconnected(request)
    return JSONResponse(body, status_code=status_code)


def device_router(sim: Simulator) -> APIRouter:
    """The device's routes over `sim`: commands, faults, and the truth to read."""
    router = APIRouter()

    @router.post("/pumps/{hardware_id}/start")
    async def start(hardware_id: str, command: StartCommand, request: Request) -> JSONResponse:
        async def apply() -> Answer:
            async with sim.lock:
                now = datetime.now(UTC)
                sim.settle(now)
                return sim.start(hardware_id, command, now)

        return await _through_faults(sim, hardware_id, request, apply)

    @router.post("/pumps/{hardware_id}/stop")
    async def stop(hardware_id: str, command: StopCommand, request: Request) -> JSONResponse:
        async def apply() -> Answer:
            async with sim.lock:
                now = datetime.now(UTC)
                sim.settle(now)
                return sim.stop(hardware_id, now)

        return await _through_faults(sim, hardware_id, request, apply)

    @router.get("/pumps/{hardware_id}")
    async def status(hardware_id: str, request: Request) -> JSONResponse:
        async def apply() -> Answer:
            async with sim.lock:
                sim.settle(datetime.now(UTC))
                return sim.status(hardware_id)

        return await _through_faults(sim, hardware_id, request, apply)

    @router.post("/faults")
    async def set_fault(body: FaultRequest) -> dict[str, Any]:
        fault = Fault.model_validate(body.model_dump(exclude={"seed"}))
        async with sim.lock:
            sim.faults[fault.hardware_id] = fault
            if body.seed is not None:
                sim.rng.seed(body.seed)
        return fault.model_dump()

    @router.get("/faults")
    async def list_faults() -> dict[str, Any]:
        return {"faults": [fault.model_dump() for fault in sim.faults.values()]}

    @router.delete("/faults")
    async def clear_faults() -> dict[str, Any]:
        async with sim.lock:
            sim.faults.clear()
        return {"faults": []}

    @router.get("/truth")
    async def truth(hardware_id: str | None = None) -> dict[str, Any]:
        async with sim.lock:
            sim.settle(datetime.now(UTC))
            runs = [r for r in sim.runs if hardware_id is None or r.hardware_id == hardware_id]
            return {"runs": [run.to_json() for run in runs]}

    return router
