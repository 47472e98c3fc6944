"""End to end, judged from the simulator's truth: a real API and a real worker share one
water source's flow budget between two pumps that together would overdraw it."""

from datetime import datetime
from typing import Any

import httpx
import pytest

from tests.support.polling import wait_for
from tests.support.processes import StartProcess
from tests.support.simulator import runs

# Real API and worker processes: left out of `make test-quick`.
pytestmark = pytest.mark.slow


async def test_two_pumps_of_60_l_per_min_on_a_100_l_per_min_source_never_overlap(
    api: httpx.AsyncClient, spawn: StartProcess, device: httpx.AsyncClient
) -> None:
    spawn("worker")
    # Two pumps at once by count: only the flow keeps them apart.
    source = await api.post(
        "/v1/water-sources", json={"name": "main", "max_concurrent_pumps": 2, "max_flow_lpm": 100}
    )
    assert source.status_code == 201, source.text
    pumps: list[dict[str, Any]] = []
    for name in ("east", "west"):
        zone = (await api.post("/v1/zones", json={"name": name, "timezone": "UTC"})).json()
        pump = await api.post(
            "/v1/pumps",
            json={
                "zone_id": zone["id"],
                "water_source_id": source.json()["id"],
                "name": name,
                "hardware_id": f"hw-{name}",
                "nominal_flow_lpm": 60,
                "max_runtime_s": 3,
                "cooldown_s": 1,
            },
        )
        assert pump.status_code == 201, pump.text
        pumps.append(pump.json())
    asked = [
        await api.post(
            f"/v1/pumps/{p['id']}/activations", json={"duration_s": 2, "queue": "append"}
        )
        for p in pumps
    ]
    assert [a.status_code for a in asked] == [202, 202], [a.text for a in asked]
    assert [a.json()["status"] for a in asked] == ["started", "waiting"]

    async def both_ran() -> bool:
        found = [await runs(device, p["hardware_id"]) for p in pumps]
        return all(len(r) == 1 and r[0]["stopped_at"] for r in found)

    await wait_for(both_ran, timeout_s=30)
    (a,), (b,) = [await runs(device, p["hardware_id"]) for p in pumps]
    first, second = sorted((a, b), key=lambda r: r["started_at"])
    assert datetime.fromisoformat(first["stopped_at"]) <= datetime.fromisoformat(
        second["started_at"]
    ), (first, second)

    waited = asked[1].json()
    decided = (await api.get(f"/v1/zones/{pumps[1]['zone_id']}/decisions")).json()["items"]
    deferred = [d for d in decided if d["outcome"] == "deferred"]
    assert [(d["reason"], d["detail"]["limit"]) for d in deferred] == [("capacity", "flow")]
    assert {d["run_request_id"] for d in decided} == {waited["id"]}
    assert "started" in {d["outcome"] for d in decided}
