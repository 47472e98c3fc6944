"""Device simulator: a pump controller over HTTP, with injected faults, that keeps the truth."""

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import uvicorn
from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from irrigation.logging import UVICORN_LOG_CONFIG

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


class Weather(BaseModel):
    """The weather the simulator forecasts (Open-Meteo's shape at GET /v1/forecast): the
    same temperatures and precipitation total every day, and `rain_next_24h_mm` spread
    evenly over the 24 hours that followed the PUT that set it."""

    t_min_c: float = 12.0
    t_max_c: float = 26.0
    precipitation_mm: float = Field(default=0.0, ge=0)
    rain_next_24h_mm: float = Field(default=0.0, ge=0)


OPEN_METEO_DAILY = {
    "temperature_2m_max": "°C",
    "temperature_2m_min": "°C",
    "precipitation_sum": "mm",
}
OPEN_METEO_HOURLY = {"precipitation": "mm"}


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
    weather: Weather = field(default_factory=Weather)
    # Hourly rain falls in the hours ending in (weather_set_at, weather_set_at + 24 h].
    weather_set_at: datetime = field(default_factory=lambda: datetime.now(UTC))

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
        self.weather = Weather()

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


def _open_meteo_forecast(
    weather: Weather,
    set_at: datetime,
    latitude: float,
    longitude: float,
    forecast_days: int,
    daily_vars: list[str],
    hourly_vars: list[str],
) -> dict[str, Any]:
    first = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    days = [first + timedelta(days=i) for i in range(forecast_days)]
    hours = [first + timedelta(hours=h) for h in range(24 * forecast_days)]
    rain_until = set_at + timedelta(hours=24)
    daily_values: dict[str, float] = {
        "temperature_2m_max": weather.t_max_c,
        "temperature_2m_min": weather.t_min_c,
        "precipitation_sum": weather.precipitation_mm,
    }
    answer: dict[str, Any] = {
        "latitude": latitude,
        "longitude": longitude,
        "generationtime_ms": 0.0,
        "utc_offset_seconds": 0,
        "timezone": "GMT",
        "timezone_abbreviation": "GMT",
        "elevation": 0.0,
    }
    if daily_vars:
        answer["daily_units"] = {"time": "iso8601", **{v: OPEN_METEO_DAILY[v] for v in daily_vars}}
        answer["daily"] = {
            "time": [d.date().isoformat() for d in days],
            **{v: [daily_values[v]] * len(days) for v in daily_vars},
        }
    if hourly_vars:
        answer["hourly_units"] = {
            "time": "iso8601",
            **{v: OPEN_METEO_HOURLY[v] for v in hourly_vars},
        }
        answer["hourly"] = {
            "time": [h.strftime("%Y-%m-%dT%H:%M") for h in hours],
            # Each value is the precipitation of the hour ending at its time.
            "precipitation": [
                weather.rain_next_24h_mm / 24 if set_at < h <= rain_until else 0.0 for h in hours
            ],
        }
    return answer


def create_simulator_app() -> FastAPI:
    """A fresh simulator; its state lives in `app.state.sim`, so several can share a process."""
    sim = Simulator()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        sim.cancel_timers()

    app = FastAPI(title="Irrigation device simulator", lifespan=lifespan)
    app.state.sim = sim

    @app.post("/pumps/{hardware_id}/start")
    async def start(hardware_id: str, command: StartCommand, request: Request) -> JSONResponse:
        async def apply() -> Answer:
            async with sim.lock:
                now = datetime.now(UTC)
                sim.settle(now)
                return sim.start(hardware_id, command, now)

        return await _through_faults(sim, hardware_id, request, apply)

    @app.post("/pumps/{hardware_id}/stop")
    async def stop(hardware_id: str, command: StopCommand, request: Request) -> JSONResponse:
        async def apply() -> Answer:
            async with sim.lock:
                now = datetime.now(UTC)
                sim.settle(now)
                return sim.stop(hardware_id, now)

        return await _through_faults(sim, hardware_id, request, apply)

    @app.get("/pumps/{hardware_id}")
    async def status(hardware_id: str, request: Request) -> JSONResponse:
        async def apply() -> Answer:
            async with sim.lock:
                sim.settle(datetime.now(UTC))
                return sim.status(hardware_id)

        return await _through_faults(sim, hardware_id, request, apply)

    @app.post("/faults")
    async def set_fault(body: FaultRequest) -> dict[str, Any]:
        fault = Fault.model_validate(body.model_dump(exclude={"seed"}))
        async with sim.lock:
            sim.faults[fault.hardware_id] = fault
            if body.seed is not None:
                sim.rng.seed(body.seed)
        return fault.model_dump()

    @app.get("/faults")
    async def list_faults() -> dict[str, Any]:
        return {"faults": [fault.model_dump() for fault in sim.faults.values()]}

    @app.delete("/faults")
    async def clear_faults() -> dict[str, Any]:
        async with sim.lock:
            sim.faults.clear()
        return {"faults": []}

    @app.get("/truth")
    async def truth(hardware_id: str | None = None) -> dict[str, Any]:
        async with sim.lock:
            sim.settle(datetime.now(UTC))
            runs = [r for r in sim.runs if hardware_id is None or r.hardware_id == hardware_id]
            return {"runs": [run.to_json() for run in runs]}

    @app.delete("/truth")
    async def reset() -> dict[str, Any]:
        async with sim.lock:
            sim.reset()
        return {"runs": []}

    @app.put("/weather")
    async def set_weather(body: Weather) -> dict[str, Any]:
        async with sim.lock:
            sim.weather = body
            sim.weather_set_at = datetime.now(UTC)
        return {**body.model_dump(), "set_at": _iso(sim.weather_set_at)}

    @app.get("/weather")
    async def get_weather() -> dict[str, Any]:
        return {**sim.weather.model_dump(), "set_at": _iso(sim.weather_set_at)}

    @app.get("/v1/forecast")
    async def forecast(
        latitude: float = Query(ge=-90, le=90),
        longitude: float = Query(ge=-180, le=180),
        daily: str = "",
        hourly: str = "",
        timezone: str = "GMT",
        forecast_days: int = Query(default=3, ge=0, le=16),
    ) -> JSONResponse:
        """Open-Meteo's forecast API (https://open-meteo.com/en/docs), for the variables
        the service asks, in UTC only."""
        daily_vars = [v for v in daily.split(",") if v]
        hourly_vars = [v for v in hourly.split(",") if v]
        unknown = [v for v in daily_vars if v not in OPEN_METEO_DAILY] + [
            v for v in hourly_vars if v not in OPEN_METEO_HOURLY
        ]
        if unknown or timezone.upper() not in ("UTC", "GMT"):
            reason = f"unsupported: {unknown or timezone}"
            return JSONResponse({"error": True, "reason": reason}, status_code=400)
        return JSONResponse(
            _open_meteo_forecast(
                sim.weather,
                sim.weather_set_at,
                latitude,
                longitude,
                forecast_days,
                daily_vars,
                hourly_vars,
            )
        )

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def run_simulator(host: str, port: int) -> None:
    uvicorn.run(
        create_simulator_app(),
        host=host,
        port=port,
        log_level="info",
        log_config=str(UVICORN_LOG_CONFIG),
    )
