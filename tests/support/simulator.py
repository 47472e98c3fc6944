"""The device simulator's truth as the tests read it: the physical runs of a pump."""

from datetime import datetime
from typing import Any

import httpx


async def runs(device: httpx.AsyncClient, hardware_id: str | None = None) -> list[dict[str, Any]]:
    """Every run the simulator saw (of one pump, if given), oldest first."""
    params = {"hardware_id": hardware_id} if hardware_id else {}
    response = await device.get("/truth", params=params)
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["runs"]
    return found


def seconds_on(run: dict[str, Any]) -> float:
    """How long a finished run kept the pump on."""
    started = datetime.fromisoformat(run["started_at"])
    stopped = datetime.fromisoformat(run["stopped_at"])
    return (stopped - started).total_seconds()
