"""The simulator process (`irrigation simulator`): the pump controllers and the weather API
in one HTTP app, as `irrigation up` and the tests run it."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI

from irrigation.logging import UVICORN_LOG_CONFIG
from irrigation.simulator.core import DeviceFleet
from irrigation.simulator.device import device_router
from irrigation.simulator.weather import WeatherState, weather_router


def create_simulator_app() -> FastAPI:
    """A fresh simulator; its state lives in `app.state.fleet` (the devices, their faults
    and the truth) and `app.state.weather`, so several can share a process, and another
    transport can serve the same fleet."""
    fleet = DeviceFleet()
    weather = WeatherState()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        fleet.close()

    app = FastAPI(title="Irrigation device simulator", lifespan=lifespan)
    app.state.fleet = fleet
    app.state.weather = weather
    app.include_router(device_router(fleet))

    @app.delete("/truth")
    async def reset() -> dict[str, Any]:
        """A clean simulator: no runs, faults or sequences, and the default weather."""
        fleet.reset()
        weather.reset()
        return {"runs": []}

    app.include_router(weather_router(weather))

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
