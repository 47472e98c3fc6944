"""The simulator process (`irrigation simulator`): the pump controllers and the weather API
in one HTTP app, as `irrigation up` and the tests run it; the same controllers also on a
broker when given one (`MqttDevices`)."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any, Literal

import uvicorn
from fastapi import FastAPI

from irrigation.logging import UVICORN_LOG_CONFIG
from irrigation.simulator.core import DeviceFleet
from irrigation.simulator.device import device_router
from irrigation.simulator.flow import FeedRequest, FlowFeeds
from irrigation.simulator.weather import WeatherState, weather_router


@dataclass(frozen=True)
class MqttOptions:
    """Where the simulated controllers meet the service over MQTT."""

    url: str
    root: str = "irrigation"
    client_id: str = "irrigation-simulator"
    protocol: Literal["auto", "5", "3.1.1"] = "auto"


def create_simulator_app(
    mqtt: MqttOptions | None = None, flow_feed: FeedRequest | None = None
) -> FastAPI:
    """A fresh simulator; its state lives in `app.state.fleet` (the devices, their faults
    and the truth), `app.state.weather` and `app.state.flows` (the flow meters' feeds), so
    several can share a process. With `mqtt`, the same fleet is also served on that broker
    (`app.state.mqtt`, once started); with `flow_feed`, that feed runs from the start."""
    fleet = DeviceFleet()
    weather = WeatherState()
    flows = FlowFeeds(fleet)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        serving: asyncio.Task[None] | None = None
        if mqtt is not None:
            from irrigation.mqtt.address import BrokerAddress
            from irrigation.mqtt.client import BrokerLink, SessionOptions
            from irrigation.simulator.mqtt_device import MqttDevices

            # A persistent session: commands sent while the simulator is away wait at the
            # broker and arrive late, as they would at a real controller.
            options = SessionOptions(mqtt.client_id, persistent=True, session_expiry_s=3600)
            link = BrokerLink(BrokerAddress.parse(mqtt.url), options, mqtt.protocol)
            app.state.mqtt = MqttDevices(fleet, link, mqtt.root)
            serving = asyncio.create_task(app.state.mqtt.serve(), name="simulator-mqtt")
        if flow_feed is not None:
            flows.add(flow_feed)
        yield
        await flows.clear()
        if serving is not None:
            serving.cancel()
            with suppress(asyncio.CancelledError):
                await serving
        fleet.close()

    app = FastAPI(title="Irrigation device simulator", lifespan=lifespan)
    app.state.fleet = fleet
    app.state.weather = weather
    app.state.flows = flows
    app.include_router(device_router(fleet))

    @app.delete("/truth")
    async def reset() -> dict[str, Any]:
        """A clean simulator: no runs, faults, sequences or flow feeds, and the default
        weather."""
        await flows.clear()
        fleet.reset()
        weather.reset()
        return {"runs": []}

    @app.post("/flow/feeds", status_code=201)
    async def add_flow_feed(body: FeedRequest) -> dict[str, Any]:
        """Feed the flow meters of the key's site with the devices' flows (simulator/flow.py)."""
        return flows.add(body).to_json()

    @app.get("/flow/feeds")
    async def list_flow_feeds() -> dict[str, Any]:
        return {"feeds": [feed.to_json() for feed in flows.feeds.values()]}

    @app.delete("/flow/feeds")
    async def clear_flow_feeds() -> dict[str, Any]:
        await flows.clear()
        return {"feeds": []}

    app.include_router(weather_router(weather))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def run_simulator(
    host: str, port: int, mqtt: MqttOptions | None = None, flow_feed: FeedRequest | None = None
) -> None:
    uvicorn.run(
        create_simulator_app(mqtt, flow_feed),
        host=host,
        port=port,
        log_level="info",
        log_config=str(UVICORN_LOG_CONFIG),
    )
