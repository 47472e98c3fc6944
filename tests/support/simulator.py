"""The device simulator as the tests use it: its truth (the physical runs of a device),
commands sent to one device `(site_id, hardware_id)` as a controller would receive them,
its reported state, and its faults."""

from datetime import datetime
from typing import Any

import httpx


async def runs(
    device: httpx.AsyncClient, hardware_id: str | None = None, site_id: str | None = None
) -> list[dict[str, Any]]:
    """Every run the simulator saw (of one hardware id, of one site, if given), oldest
    first."""
    params = {
        k: v for k, v in {"hardware_id": hardware_id, "site_id": site_id}.items() if v is not None
    }
    response = await device.get("/truth", params=params)
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["runs"]
    return found


def seconds_on(run: dict[str, Any]) -> float:
    """How long a finished run kept the pump on."""
    started = datetime.fromisoformat(run["started_at"])
    stopped = datetime.fromisoformat(run["stopped_at"])
    return (stopped - started).total_seconds()


async def send(
    device: httpx.AsyncClient,
    site_id: str,
    hardware_id: str,
    op: str,
    body: dict[str, Any],
    *,
    timeout_s: float = 5,
) -> httpx.Response:
    """One command over HTTP, `op` start, stop or halt."""
    return await device.post(f"/devices/{site_id}/{hardware_id}/{op}", json=body, timeout=timeout_s)


async def start_run(
    device: httpx.AsyncClient,
    site_id: str,
    hardware_id: str,
    command_id: str,
    duration_s: float,
    *,
    sequence: int = 1,
) -> dict[str, Any]:
    """A start the device accepts (checked); returns its acknowledgement."""
    body = {"command_id": command_id, "sequence": sequence, "duration_s": duration_s}
    response = await send(device, site_id, hardware_id, "start", body)
    assert response.status_code == 200, response.text
    ack: dict[str, Any] = response.json()
    assert ack["result"] == "ok", ack
    return ack


async def state(device: httpx.AsyncClient, site_id: str, hardware_id: str) -> dict[str, Any]:
    response = await device.get(f"/devices/{site_id}/{hardware_id}")
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


async def set_fault(device: httpx.AsyncClient, **fault: Any) -> None:
    response = await device.post("/faults", json=fault)
    assert response.status_code == 200, response.text


async def commands(
    device: httpx.AsyncClient, hardware_id: str | None = None, site_id: str | None = None
) -> list[dict[str, Any]]:
    """The command log: what the devices received and answered, oldest first."""
    params = {
        k: v for k, v in {"hardware_id": hardware_id, "site_id": site_id}.items() if v is not None
    }
    response = await device.get("/commands", params=params)
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["commands"]
    return found


def most_drawn_at_once(
    found: list[dict[str, Any]], flow_of: dict[str, float]
) -> tuple[float, list[str]]:
    """The largest sum of `flow_of[hardware_id]` over truth runs on at one instant, and the
    command ids of those runs. A stop at the instant of a start is not an overlap; a run
    still on counts until the end of time."""
    edges = []
    for run in found:
        started = datetime.fromisoformat(run["started_at"])
        edges.append((started, 1, run))
        if run["stopped_at"]:
            edges.append((datetime.fromisoformat(run["stopped_at"]), -1, run))
    on: dict[str, dict[str, Any]] = {}
    peak, peak_runs = 0.0, []
    for _, delta, run in sorted(edges, key=lambda e: (e[0], e[1])):
        if delta > 0:
            on[run["command_id"]] = run
        else:
            on.pop(run["command_id"], None)
        drawn = sum(flow_of[r["hardware_id"]] for r in on.values())
        if drawn > peak:
            peak, peak_runs = drawn, sorted(on)
    return peak, peak_runs
