"""The simulated flow meters: the water the simulated devices move, sent as readings of
the service's flow sensors through its ingestion API, as a field meter would.

A feed is an API URL and a key (read and ingest scopes). It learns the key's site from the
API itself (`GET /v1/pumps`, `GET /v1/sensors?kind=flow`, every `refresh_s`): which flow
sensor meters which pump (`pump_id`), or which water source (`water_source_id`: the sum
of its pumps), and each pump's device (`hardware_id`) and `nominal_flow_lpm`. Every
`interval_s` it reads the devices' relays from the one truth (`DeviceFleet.flow`) and posts
one batch (`POST /v1/readings`) with a reading per meter whose line carries water (a relay
on, a leak), plus one more when that stops (its value, normally 0, tells the end). Faults
per device (`flow_lpm`, `leak_lpm`) change what the meter reads, not what the relay does."""

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import structlog
from pydantic import BaseModel, Field, model_validator

from irrigation.simulator.core import DeviceFleet

log = structlog.get_logger(__name__)

# What a pump with no `nominal_flow_lpm` draws in the simulator.
DEFAULT_FLOW_LPM = 20.0
PAGE = 500


class FeedRequest(BaseModel):
    api_url: str = Field(
        min_length=1, max_length=2000, description="The service's base URL (http://...)."
    )
    api_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="A key with the read and ingest scopes of the site whose meters to feed.",
    )
    api_key_file: str | None = Field(
        default=None,
        description="A file holding the key (read again at every refresh), instead of `api_key`.",
    )
    interval_s: float = Field(default=1.0, ge=0.1, le=60, description="Seconds per batch.")
    refresh_s: float = Field(
        default=5.0, ge=0.2, le=600, description="Seconds between looks at the fleet."
    )

    @model_validator(mode="after")
    def _one_key(self) -> "FeedRequest":
        if (self.api_key is None) == (self.api_key_file is None):
            raise ValueError("give api_key or api_key_file")
        return self


@dataclass(frozen=True)
class Device:
    site_id: str
    hardware_id: str
    nominal_lpm: float


@dataclass
class Meter:
    sensor_id: str
    devices: list[Device]
    flowing: bool = False
    sent: int = 0
    last_value: float | None = None
    last_at: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "sensor_id": self.sensor_id,
            "hardware_ids": [d.hardware_id for d in self.devices],
            "sent": self.sent,
            "last_value": self.last_value,
            "last_at": self.last_at,
        }


@dataclass
class Feed:
    """One site's meters, fed from one key."""

    id: str
    request: FeedRequest
    fleet: DeviceFleet
    meters: dict[str, Meter] = field(default_factory=dict)
    batches: int = 0
    last_error: str | None = None
    task: asyncio.Task[None] | None = None

    def key(self) -> str:
        if self.request.api_key is not None:
            return self.request.api_key
        if self.request.api_key_file is None:
            raise ValueError("no key")
        return Path(self.request.api_key_file).read_text().strip()

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "api_url": self.request.api_url,
            "interval_s": self.request.interval_s,
            "refresh_s": self.request.refresh_s,
            "batches": self.batches,
            "last_error": self.last_error,
            "meters": [m.to_json() for m in self.meters.values()],
        }

    async def run(self) -> None:
        refreshed = float("-inf")
        while True:
            try:
                async with self._client() as api:
                    while True:
                        if time.monotonic() - refreshed >= self.request.refresh_s:
                            refreshed = time.monotonic()
                            await self._discover(api)
                        await self._send(api)
                        self.last_error = None
                        await asyncio.sleep(self.request.interval_s)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the API may be starting, the key not yet written
                error = f"{type(exc).__name__}: {exc}"[:300]
                if error != self.last_error:  # once per change, not every few seconds
                    log.warning("flow_feed_failed", feed=self.id, error=error)
                self.last_error = error
                refreshed = float("-inf")
                await asyncio.sleep(self.request.refresh_s)

    @contextlib.asynccontextmanager
    async def _client(self) -> AsyncIterator[httpx.AsyncClient]:
        headers = {"Authorization": f"Bearer {self.key()}"}
        async with httpx.AsyncClient(
            base_url=self.request.api_url, headers=headers, timeout=5
        ) as api:
            yield api

    async def _discover(self, api: httpx.AsyncClient) -> None:
        pumps = await _all(api, "/v1/pumps", {})
        sensors = await _all(api, "/v1/sensors", {"kind": "flow"})
        device = {
            p["id"]: Device(
                p["site_id"],
                p["hardware_id"],
                p["nominal_flow_lpm"] if p["nominal_flow_lpm"] is not None else DEFAULT_FLOW_LPM,
            )
            for p in pumps
        }
        of_source: dict[str, list[Device]] = {}
        for p in pumps:
            of_source.setdefault(p["water_source_id"], []).append(device[p["id"]])
        meters: dict[str, Meter] = {}
        for s in sensors:
            if s["pump_id"] is not None and s["pump_id"] in device:
                devices = [device[s["pump_id"]]]
            elif s["water_source_id"] is not None:
                devices = of_source.get(s["water_source_id"], [])
            else:
                continue
            known = self.meters.get(s["id"])
            meters[s["id"]] = Meter(s["id"], devices)
            if known is not None:  # what it sent so far, and whether water was flowing
                meters[s["id"]].flowing = known.flowing
                meters[s["id"]].sent = known.sent
                meters[s["id"]].last_value = known.last_value
                meters[s["id"]].last_at = known.last_at
        self.meters = meters

    async def _send(self, api: httpx.AsyncClient) -> None:
        at = datetime.now(UTC).isoformat()
        readings, sending = [], []
        for meter in self.meters.values():
            on, lpm = False, 0.0
            for d in meter.devices:
                running, flow = self.fleet.flow(d.site_id, d.hardware_id, d.nominal_lpm)
                on, lpm = on or running, lpm + flow
            flowing = on or lpm > 0
            if flowing or meter.flowing:  # and once more when it stops
                value = round(lpm, 3)
                readings.append({"sensor_id": meter.sensor_id, "ts": at, "value": value})
                sending.append((meter, flowing, value))
        if not readings:
            return
        response = await api.post("/v1/readings", json={"readings": readings})
        response.raise_for_status()
        self.batches += 1
        for meter, flowing, value in sending:
            meter.flowing = flowing
            meter.sent += 1
            meter.last_value, meter.last_at = value, at


async def _all(api: httpx.AsyncClient, path: str, params: dict[str, str]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        query = {**params, "limit": str(PAGE), **({"cursor": cursor} if cursor else {})}
        response = await api.get(path, params=query)
        response.raise_for_status()
        page = response.json()
        items += page["items"]
        cursor = page.get("next_cursor")
        if not cursor:
            return items


class FlowFeeds:
    """Every feed of one simulator; each runs as a task on the simulator's loop."""

    def __init__(self, fleet: DeviceFleet) -> None:
        self.fleet = fleet
        self.feeds: dict[str, Feed] = {}

    def add(self, request: FeedRequest) -> Feed:
        feed = Feed(uuid.uuid4().hex[:12], request, self.fleet)
        feed.task = asyncio.get_running_loop().create_task(feed.run(), name=f"flow-{feed.id}")
        self.feeds[feed.id] = feed
        return feed

    async def clear(self) -> None:
        tasks = [f.task for f in self.feeds.values() if f.task is not None]
        self.feeds.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
