"""End to end, judged from the simulator's truth: a real API and a real worker water two
dry zones that share a water source of capacity 1, one after the other, never together."""

from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from tests.automation.conftest import post_moisture
from tests.support.polling import wait_for
from tests.support.processes import StartProcess
from tests.support.simulator import runs

# Real API and worker processes: left out of `make test-quick`.
pytestmark = pytest.mark.slow


async def dry_zone(
    api: httpx.AsyncClient, name: str, source_id: str, max_runtime_s: int = 3
) -> dict[str, Any]:
    zone = (await api.post("/v1/zones", json={"name": name, "timezone": "UTC"})).json()
    pump = await api.post(
        "/v1/pumps",
        json={
            "zone_id": zone["id"],
            "water_source_id": source_id,
            "name": name,
            "hardware_id": f"hw-{name}",
            "cooldown_s": 1,
            "max_runtime_s": max_runtime_s,
        },
    )
    assert pump.status_code == 201, pump.text
    sensor = await api.post(
        "/v1/sensors",
        json={"zone_id": zone["id"], "name": name, "kind": "soil_moisture", "unit": "%"},
    )
    rule = await api.post(
        "/v1/threshold-rules",
        json={
            "zone_id": zone["id"],
            "start_below": 30,
            "stop_above": 45,
            "window_s": 60,
            "duration_s": 3,
        },
    )
    assert rule.status_code == 201, rule.text
    return {"zone": zone, "pump": pump.json(), "sensor": sensor.json()}


async def test_two_dry_zones_on_a_capacity_one_source_water_one_after_the_other(
    api: httpx.AsyncClient,
    admin: dict[str, str],
    spawn: StartProcess,
    device: httpx.AsyncClient,
) -> None:
    spawn("worker")
    source = (
        await api.post("/v1/water-sources", json={"name": "main", "max_concurrent_pumps": 1})
    ).json()
    zones = [await dry_zone(api, name, source["id"]) for name in ("east", "west")]
    for z in zones:
        await post_moisture(api, admin, z["sensor"]["id"], [12, 11, 10])

    async def both_ran() -> bool:
        return all(
            len(r) == 1 and r[0]["stopped_at"]
            for r in [await runs(device, z["pump"]["hardware_id"]) for z in zones]
        )

    await wait_for(both_ran, timeout_s=30)
    (a,), (b,) = [await runs(device, z["pump"]["hardware_id"]) for z in zones]
    first, second = sorted((a, b), key=lambda r: r["started_at"])
    assert datetime.fromisoformat(first["stopped_at"]) <= datetime.fromisoformat(
        second["started_at"]
    ), (first, second)

    for z in zones:
        decided = (await api.get(f"/v1/zones/{z['zone']['id']}/decisions")).json()["items"]
        assert "started" in {d["outcome"] for d in decided}
    waited = [
        d
        for z in zones
        for d in (await api.get(f"/v1/zones/{z['zone']['id']}/decisions")).json()["items"]
        if d["outcome"] == "deferred"
    ]
    assert [d["reason"] for d in waited] == ["capacity"]
    assert datetime.now(UTC) > datetime.fromisoformat(second["stopped_at"])


async def test_replace_stops_the_running_pump_on_the_source_then_starts_never_overlapping(
    api: httpx.AsyncClient, spawn: StartProcess, device: httpx.AsyncClient
) -> None:
    spawn("worker")
    source = (
        await api.post("/v1/water-sources", json={"name": "main", "max_concurrent_pumps": 1})
    ).json()
    zones = [await dry_zone(api, name, source["id"], max_runtime_s=10) for name in ("e", "w")]
    running, wanted = (z["pump"] for z in zones)
    # Long enough that only the replace can end it early, however loaded the machine.
    first = await api.post(f"/v1/pumps/{running['id']}/activations", json={"duration_s": 10})
    assert first.status_code == 202

    async def started(hardware_id: str) -> bool:
        return bool(await runs(device, hardware_id))

    await wait_for(lambda: started(running["hardware_id"]))
    replacing = await api.post(
        f"/v1/pumps/{wanted['id']}/activations", json={"duration_s": 2, "queue": "replace"}
    )
    assert replacing.status_code == 202, replacing.text
    assert replacing.json()["kind"] == "run_request"

    async def both_done() -> bool:
        a, b = [await runs(device, p["hardware_id"]) for p in (running, wanted)]
        return len(a) == 1 and len(b) == 1 and bool(a[0]["stopped_at"] and b[0]["stopped_at"])

    await wait_for(both_done, timeout_s=20)
    (stopped,), (replacement,) = [await runs(device, p["hardware_id"]) for p in (running, wanted)]
    assert stopped["stopped_by"] == "command"  # cut short, not its own auto-off
    assert datetime.fromisoformat(stopped["stopped_at"]) <= datetime.fromisoformat(
        replacement["started_at"]
    )
    stopped_activation = (await api.get(f"/v1/activations/{first.json()['id']}")).json()
    assert stopped_activation["stop_cause"] == "replaced"
