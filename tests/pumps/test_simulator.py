"""The device simulator over real HTTP: the pump's behaviour, its faults and its truth."""

import asyncio
import time
from datetime import datetime
from typing import Any

import httpx
import pytest

from tests.support.polling import wait_for
from tests.support.simulator import runs, seconds_on

PUMP = "pump-a"
OTHER_PUMP = "pump-b"


async def start(
    device: httpx.AsyncClient,
    command_id: str,
    duration_s: float = 10,
    *,
    hardware_id: str = PUMP,
    sequence: int | None = None,
    client_timeout_s: float = 5,
) -> httpx.Response:
    body: dict[str, Any] = {"command_id": command_id, "duration_s": duration_s}
    if sequence is not None:
        body["sequence"] = sequence
    return await device.post(f"/pumps/{hardware_id}/start", json=body, timeout=client_timeout_s)


async def stop(device: httpx.AsyncClient, hardware_id: str = PUMP) -> httpx.Response:
    return await device.post(f"/pumps/{hardware_id}/stop", json={"command_id": "stop-1"})


async def stopped(device: httpx.AsyncClient) -> bool:
    """Every run the simulator saw has ended (and there is one)."""
    found = await runs(device)
    return bool(found) and all(run["stopped_at"] for run in found)


async def set_fault(device: httpx.AsyncClient, **fault: Any) -> None:
    response = await device.post("/faults", json=fault)
    assert response.status_code == 200, response.text


async def test_healthz(device: httpx.AsyncClient) -> None:
    response = await device.get("/healthz")
    assert response.json() == {"status": "ok"}


async def test_pump_turns_itself_off_after_its_duration(device: httpx.AsyncClient) -> None:
    response = await start(device, "cmd-1", duration_s=0.3, sequence=1)

    assert response.status_code == 200
    answer = response.json()
    assert answer["hardware_id"] == PUMP
    assert answer["command_id"] == "cmd-1"
    assert answer["running"] is True
    assert answer["duplicate"] is False
    started_at = datetime.fromisoformat(answer["started_at"])
    auto_off_at = datetime.fromisoformat(answer["auto_off_at"])
    assert started_at.utcoffset() is not None
    assert (auto_off_at - started_at).total_seconds() == pytest.approx(0.3)
    status = (await device.get(f"/pumps/{PUMP}")).json()
    assert status == {
        "hardware_id": PUMP,
        "running": True,
        "command_id": "cmd-1",
        "started_at": answer["started_at"],
        "auto_off_at": answer["auto_off_at"],
        "last_sequence": 1,
    }

    await wait_for(lambda: stopped(device))

    [run] = await runs(device)
    assert run["command_id"] == "cmd-1"
    assert run["sequence"] == 1
    assert run["stopped_by"] == "auto_off"
    assert seconds_on(run) == pytest.approx(0.3, abs=0.2)
    assert (await device.get(f"/pumps/{PUMP}")).json()["running"] is False


async def test_stop_command_turns_the_pump_off_and_a_repeat_is_harmless(
    device: httpx.AsyncClient,
) -> None:
    assert (await start(device, "cmd-1")).status_code == 200

    first = await stop(device)
    again = await stop(device)

    assert first.json() == {"hardware_id": PUMP, "running": False, "stopped": True}
    assert again.json() == {"hardware_id": PUMP, "running": False, "stopped": False}
    [run] = await runs(device)
    assert run["stopped_by"] == "command"
    assert seconds_on(run) < 1
    assert (await device.get(f"/pumps/{PUMP}")).json()["running"] is False


async def test_running_pump_has_no_stop_time_in_the_truth(device: httpx.AsyncClient) -> None:
    await start(device, "cmd-1")

    [run] = await runs(device)

    assert run["stopped_at"] is None
    assert run["stopped_by"] is None


async def test_repeated_command_id_answers_the_same_without_a_new_run(
    device: httpx.AsyncClient,
) -> None:
    first = (await start(device, "cmd-1")).json()
    repeat = await start(device, "cmd-1")
    await stop(device)
    after_stop = await start(device, "cmd-1")

    assert repeat.status_code == 200
    assert repeat.json() == {**first, "duplicate": True}
    assert after_stop.json() == {**first, "duplicate": True}
    assert len(await runs(device)) == 1


async def test_concurrent_starts_turn_the_pump_on_exactly_once(
    device: httpx.AsyncClient,
) -> None:
    responses = await asyncio.gather(*(start(device, f"cmd-{i}") for i in range(50)))

    winners = [r.json()["command_id"] for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 409]
    assert len(winners) == 1
    assert len(refused) == 49
    assert all(r.json() == {"error": "busy", "command_id": winners[0]} for r in refused)
    [run] = await runs(device)
    assert run["command_id"] == winners[0]


async def test_stale_sequence_is_refused(device: httpx.AsyncClient) -> None:
    assert (await start(device, "cmd-5", sequence=5)).status_code == 200
    await stop(device)

    same = await start(device, "cmd-late", sequence=5)
    older = await start(device, "cmd-older", sequence=4)
    newer = await start(device, "cmd-6", sequence=6)

    assert same.status_code == 409
    assert same.json() == {"error": "stale_sequence", "last_sequence": 5}
    assert older.status_code == 409
    assert newer.status_code == 200
    assert [run["command_id"] for run in await runs(device)] == ["cmd-5", "cmd-6"]
    assert (await device.get(f"/pumps/{PUMP}")).json()["last_sequence"] == 6


async def test_sequences_are_fenced_per_pump(device: httpx.AsyncClient) -> None:
    await start(device, "cmd-a", sequence=9)

    response = await start(device, "cmd-b", sequence=1, hardware_id=OTHER_PUMP)

    assert response.status_code == 200


async def test_injected_errors_refuse_without_applying(device: httpx.AsyncClient) -> None:
    await set_fault(device, hardware_id=PUMP, error_rate=1)

    response = await start(device, "cmd-1")
    status = await device.get(f"/pumps/{PUMP}")

    assert response.status_code == 503
    assert response.json() == {"error": "injected"}
    assert status.status_code == 503
    assert await runs(device) == []


async def test_dropped_response_still_starts_the_pump(device: httpx.AsyncClient) -> None:
    await set_fault(device, hardware_id=PUMP, drop_response=True)

    with pytest.raises(httpx.ReadTimeout):
        await start(device, "cmd-1", duration_s=0.5, client_timeout_s=0.3)

    [run] = await runs(device)
    assert run["command_id"] == "cmd-1"
    assert run["stopped_by"] is None
    await wait_for(lambda: stopped(device))
    [run] = await runs(device)
    assert run["stopped_by"] == "auto_off"
    assert seconds_on(run) == pytest.approx(0.5, abs=0.2)


async def test_hanging_device_does_not_start_the_pump(device: httpx.AsyncClient) -> None:
    await set_fault(device, hardware_id=PUMP, hang=True)

    with pytest.raises(httpx.ReadTimeout):
        await start(device, "cmd-1", client_timeout_s=0.3)

    assert await runs(device) == []


async def test_latency_delays_the_answer(device: httpx.AsyncClient) -> None:
    await set_fault(device, hardware_id=PUMP, latency_ms=200)

    began = time.monotonic()
    response = await device.get(f"/pumps/{PUMP}")

    assert response.status_code == 200
    assert time.monotonic() - began >= 0.2


async def test_pump_fault_leaves_other_pumps_alone(device: httpx.AsyncClient) -> None:
    await set_fault(device, hardware_id=PUMP, error_rate=1)

    faulty = await start(device, "cmd-a")
    healthy = await start(device, "cmd-b", hardware_id=OTHER_PUMP)

    assert faulty.status_code == 503
    assert healthy.status_code == 200
    assert [run["hardware_id"] for run in await runs(device)] == [OTHER_PUMP]


async def test_pump_fault_overrides_the_global_one(device: httpx.AsyncClient) -> None:
    await set_fault(device, hardware_id=None, error_rate=1)
    await set_fault(device, hardware_id=OTHER_PUMP, latency_ms=0)

    assert (await start(device, "cmd-a")).status_code == 503
    assert (await start(device, "cmd-b", hardware_id=OTHER_PUMP)).status_code == 200
    faults = (await device.get("/faults")).json()["faults"]
    assert {fault["hardware_id"] for fault in faults} == {None, OTHER_PUMP}


async def test_seeded_error_rate_is_reproducible(device: httpx.AsyncClient) -> None:
    async def status_codes() -> list[int]:
        await set_fault(device, hardware_id=PUMP, error_rate=0.5, seed=42)
        return [(await device.get(f"/pumps/{PUMP}")).status_code for _ in range(20)]

    first = await status_codes()

    assert first == await status_codes()
    assert set(first) == {200, 503}


async def test_clearing_faults_restores_the_pump(device: httpx.AsyncClient) -> None:
    await set_fault(device, error_rate=1)

    cleared = await device.delete("/faults")

    assert cleared.status_code == 200
    assert (await device.get("/faults")).json() == {"faults": []}
    assert (await start(device, "cmd-1")).status_code == 200


async def test_truth_can_be_filtered_by_pump(device: httpx.AsyncClient) -> None:
    await start(device, "cmd-a")
    await start(device, "cmd-b", hardware_id=OTHER_PUMP)

    found = await runs(device, hardware_id=OTHER_PUMP)

    assert [run["command_id"] for run in found] == ["cmd-b"]


async def test_deleting_the_truth_resets_everything(device: httpx.AsyncClient) -> None:
    await start(device, "cmd-1", sequence=3)
    await set_fault(device, hardware_id=OTHER_PUMP, error_rate=1)

    assert (await device.delete("/truth")).status_code == 200

    assert await runs(device) == []
    assert (await device.get("/faults")).json() == {"faults": []}
    status = (await device.get(f"/pumps/{PUMP}")).json()
    assert status["running"] is False
    assert status["last_sequence"] is None
    again = await start(device, "cmd-1", sequence=1)
    assert again.status_code == 200
    assert again.json()["duplicate"] is False
    assert (await start(device, "cmd-b", hardware_id=OTHER_PUMP)).status_code == 200


async def test_unknown_pump_is_idle(device: httpx.AsyncClient) -> None:
    response = await device.get("/pumps/never-seen")

    assert response.json() == {
        "hardware_id": "never-seen",
        "running": False,
        "command_id": None,
        "started_at": None,
        "auto_off_at": None,
        "last_sequence": None,
    }


@pytest.mark.parametrize(
    "body",
    [
        {"command_id": "cmd", "duration_s": 0},
        {"command_id": "cmd", "duration_s": 3601},
        {"command_id": "", "duration_s": 1},
        {"command_id": "x" * 101, "duration_s": 1},
        {"command_id": "cmd", "duration_s": 1, "sequence": -1},
        {"duration_s": 1},
    ],
)
async def test_bad_start_is_unprocessable(device: httpx.AsyncClient, body: dict[str, Any]) -> None:
    response = await device.post(f"/pumps/{PUMP}/start", json=body)

    assert response.status_code == 422
    assert await runs(device) == []


async def test_bad_fault_is_unprocessable(device: httpx.AsyncClient) -> None:
    response = await device.post("/faults", json={"error_rate": 1.5})

    assert response.status_code == 422
