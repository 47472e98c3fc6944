"""The device simulator over real HTTP: a device's behaviour at its address `(site_id,
hardware_id)`, its fencing, its faults and its truth."""

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.support.polling import wait_for
from tests.support.simulator import commands, runs, seconds_on, send, set_fault, state

SITE = "site-a"
OTHER_SITE = "site-b"
PUMP = "pump-a"
OTHER_PUMP = "pump-b"


async def start(
    device: httpx.AsyncClient,
    command_id: str,
    duration_s: float = 10,
    *,
    sequence: int = 1,
    site_id: str = SITE,
    hardware_id: str = PUMP,
    client_timeout_s: float = 5,
    **extra: Any,
) -> httpx.Response:
    body = {"command_id": command_id, "sequence": sequence, "duration_s": duration_s, **extra}
    return await send(device, site_id, hardware_id, "start", body, timeout_s=client_timeout_s)


async def stop(
    device: httpx.AsyncClient,
    command_id: str,
    sequence: int,
    *,
    site_id: str = SITE,
    hardware_id: str = PUMP,
) -> httpx.Response:
    body = {"command_id": command_id, "sequence": sequence}
    return await send(device, site_id, hardware_id, "stop", body)


async def halt(
    device: httpx.AsyncClient, command_id: str, sequence: int, *, site_id: str = SITE
) -> httpx.Response:
    body = {"command_id": command_id, "sequence": sequence}
    return await send(device, site_id, PUMP, "halt", body)


async def stopped(device: httpx.AsyncClient) -> bool:
    """Every run the simulator saw has ended (and there is one)."""
    found = await runs(device)
    return bool(found) and all(run["stopped_at"] for run in found)


def result(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    found: str = response.json()["result"]
    return found


async def test_healthz(device: httpx.AsyncClient) -> None:
    response = await device.get("/healthz")
    assert response.json() == {"status": "ok"}


async def test_device_turns_itself_off_after_its_duration(device: httpx.AsyncClient) -> None:
    response = await start(device, "cmd-1", duration_s=0.3, sequence=1)

    assert response.status_code == 200
    ack = response.json()
    assert (ack["command_id"], ack["result"]) == ("cmd-1", "ok")
    assert "detail" not in ack
    since = datetime.fromisoformat(ack["state"]["since"])
    auto_off_at = datetime.fromisoformat(ack["state"]["auto_off_at"])
    assert since.utcoffset() is not None
    assert (auto_off_at - since).total_seconds() == pytest.approx(0.3)
    assert ack["state"] == {
        "running": True,
        "command_id": "cmd-1",
        "sequence": 1,
        "since": ack["state"]["since"],
        "auto_off_at": ack["state"]["auto_off_at"],
    }
    assert await state(device, SITE, PUMP) == ack["state"]

    await wait_for(lambda: stopped(device))

    [run] = await runs(device)
    assert run["site_id"] == SITE
    assert run["hardware_id"] == PUMP
    assert run["command_id"] == "cmd-1"
    assert run["sequence"] == 1
    assert run["stopped_by"] == "auto_off"
    assert seconds_on(run) == pytest.approx(0.3, abs=0.2)
    # Idle, the state names the last run and when it ended.
    assert await state(device, SITE, PUMP) == {
        "running": False,
        "command_id": "cmd-1",
        "sequence": 1,
        "since": run["stopped_at"],
        "auto_off_at": None,
    }


async def test_auto_off_at_ends_the_run_before_its_duration(device: httpx.AsyncClient) -> None:
    off = datetime.now(UTC) + timedelta(seconds=0.3)

    ack = (await start(device, "cmd-1", duration_s=30, auto_off_at=off.isoformat())).json()

    assert datetime.fromisoformat(ack["state"]["auto_off_at"]) == off
    await wait_for(lambda: stopped(device))
    [run] = await runs(device)
    assert datetime.fromisoformat(run["stopped_at"]) == off


async def test_a_start_whose_auto_off_time_has_passed_never_runs(
    device: httpx.AsyncClient,
) -> None:
    past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()

    ack = (await start(device, "late", auto_off_at=past)).json()

    assert (ack["result"], ack["detail"]) == ("error", "expired: auto_off_at is past")
    assert await runs(device) == []


async def test_stop_ends_only_the_command_it_names(device: httpx.AsyncClient) -> None:
    await start(device, "cmd-1", sequence=1)

    other = await stop(device, "cmd-0", sequence=2)
    assert result(other) == "not_running"
    assert (await state(device, SITE, PUMP))["running"] is True

    first = await stop(device, "cmd-1", sequence=3)
    again = await stop(device, "cmd-1", sequence=4)

    assert result(first) == "ok"
    assert first.json()["state"]["running"] is False
    # De-duplicated: the first answer, nothing done again (the fence still rises).
    assert result(again) == "ok"
    assert {**again.json()["state"], "sequence": 3} == first.json()["state"]
    [run] = await runs(device)
    assert run["stopped_by"] == "command"
    assert seconds_on(run) < 1
    assert (await state(device, SITE, PUMP))["sequence"] == 4


async def test_halt_stops_whatever_runs_unless_a_newer_command_was_seen(
    device: httpx.AsyncClient,
) -> None:
    await start(device, "cmd-1", sequence=5)

    stale = await halt(device, "halt-old", sequence=4)
    assert result(stale) == "stale_sequence"
    assert stale.json()["state"]["running"] is True

    assert result(await halt(device, "halt-1", sequence=6)) == "ok"
    [run] = await runs(device)
    assert run["stopped_by"] == "halt"
    assert result(await halt(device, "halt-2", sequence=7)) == "ok"  # idle: nothing to do


async def test_a_start_arriving_after_its_own_stop_is_refused_and_never_runs(
    device: httpx.AsyncClient,
) -> None:
    # The worker's start (sequence 5) was delayed; the stop that aborted it (6) came first.
    assert result(await stop(device, "cmd-5", sequence=6)) == "not_running"

    late = await start(device, "cmd-5", sequence=5)

    assert result(late) == "stale_sequence"
    assert late.json()["detail"] == "sequence 5 is not above 6"
    assert await runs(device) == []


async def test_repeated_start_answers_the_same_without_a_new_run(
    device: httpx.AsyncClient,
) -> None:
    first = (await start(device, "cmd-1", sequence=1)).json()
    repeat = (await start(device, "cmd-1", sequence=1)).json()
    await stop(device, "cmd-1", sequence=2)
    after_stop = (await start(device, "cmd-1", sequence=1)).json()

    assert repeat == first
    assert after_stop["result"] == "ok"
    assert after_stop["state"]["running"] is False
    assert len(await runs(device)) == 1


async def test_concurrent_starts_turn_the_device_on_exactly_once(
    device: httpx.AsyncClient,
) -> None:
    responses = await asyncio.gather(
        *(start(device, f"cmd-{i}", sequence=i + 1) for i in range(50))
    )

    answers = [r.json() for r in responses]
    winners = [a["command_id"] for a in answers if a["result"] == "ok"]
    assert len(winners) == 1
    # The rest arrived either below the fence or while the winner ran.
    assert {a["result"] for a in answers if a["result"] != "ok"} <= {"stale_sequence", "error"}
    [run] = await runs(device)
    assert run["command_id"] == winners[0]


async def test_the_fence_counts_every_command(device: httpx.AsyncClient) -> None:
    assert result(await start(device, "cmd-5", sequence=5)) == "ok"
    assert result(await stop(device, "cmd-5", sequence=6)) == "ok"

    same = await start(device, "cmd-late", sequence=6)
    older = await start(device, "cmd-older", sequence=4)
    newer = await start(device, "cmd-7", sequence=7)

    assert result(same) == "stale_sequence"
    assert result(older) == "stale_sequence"
    assert result(newer) == "ok"
    assert [run["command_id"] for run in await runs(device)] == ["cmd-5", "cmd-7"]
    assert (await state(device, SITE, PUMP))["sequence"] == 7


async def test_two_sites_share_a_hardware_id_and_never_touch_each_others_device(
    device: httpx.AsyncClient,
) -> None:
    await start(device, "a-1", sequence=9, site_id=SITE)

    b_start = await start(device, "b-1", sequence=1, site_id=OTHER_SITE)
    b_stop_of_a = await stop(device, "a-1", sequence=2, site_id=OTHER_SITE)

    assert result(b_start) == "ok"  # site A's fence is not site B's
    assert result(b_stop_of_a) == "not_running"
    assert (await state(device, SITE, PUMP))["command_id"] == "a-1"
    assert (await state(device, SITE, PUMP))["running"] is True
    assert [r["command_id"] for r in await runs(device, PUMP, site_id=SITE)] == ["a-1"]
    assert [r["command_id"] for r in await runs(device, site_id=OTHER_SITE)] == ["b-1"]
    assert len(await runs(device, PUMP)) == 2


async def test_unknown_device_is_idle(device: httpx.AsyncClient) -> None:
    assert await state(device, SITE, "never-seen") == {
        "running": False,
        "command_id": None,
        "sequence": None,
        "since": None,
        "auto_off_at": None,
    }


async def test_injected_errors_refuse_without_applying(device: httpx.AsyncClient) -> None:
    await set_fault(device, hardware_id=PUMP, error_rate=1)

    response = await start(device, "cmd-1")
    status = await device.get(f"/devices/{SITE}/{PUMP}")

    assert response.status_code == 503
    assert response.json() == {"error": "injected"}
    assert status.status_code == 503
    assert await runs(device) == []


@pytest.mark.parametrize("name", ["drop_ack", "drop_response"])
async def test_a_dropped_ack_still_starts_the_device(device: httpx.AsyncClient, name: str) -> None:
    await set_fault(device, hardware_id=PUMP, **{name: True})

    with pytest.raises(httpx.ReadTimeout):
        await start(device, "cmd-1", duration_s=0.5, client_timeout_s=0.3)

    [run] = await runs(device)
    assert run["command_id"] == "cmd-1"
    assert run["stopped_by"] is None
    assert (await state(device, SITE, PUMP))["running"] is True  # the state still answers
    await wait_for(lambda: stopped(device))
    [run] = await runs(device)
    assert run["stopped_by"] == "auto_off"
    assert seconds_on(run) == pytest.approx(0.5, abs=0.2)


@pytest.mark.parametrize("name", ["hang", "offline"])
async def test_a_hanging_or_offline_device_does_nothing(
    device: httpx.AsyncClient, name: str
) -> None:
    await set_fault(device, hardware_id=PUMP, **{name: True})

    with pytest.raises(httpx.ReadTimeout):
        await start(device, "cmd-1", client_timeout_s=0.3)
    with pytest.raises(httpx.ReadTimeout):
        await device.get(f"/devices/{SITE}/{PUMP}", timeout=0.3)

    assert await runs(device) == []


async def test_stuck_off_acknowledges_a_start_but_the_relay_stays_off(
    device: httpx.AsyncClient,
) -> None:
    await set_fault(device, site_id=SITE, hardware_id=PUMP, stuck_off=True)

    ack = (await start(device, "cmd-1")).json()

    assert ack["result"] == "ok"
    assert ack["state"]["running"] is False
    assert (await state(device, SITE, PUMP))["running"] is False
    assert await runs(device) == []
    assert result(await stop(device, "cmd-1", sequence=2)) == "ok"  # the firmware obeys


async def test_stuck_on_acknowledges_a_stop_but_runs_until_its_auto_off(
    device: httpx.AsyncClient,
) -> None:
    await start(device, "cmd-1", duration_s=0.6)
    await set_fault(device, hardware_id=PUMP, stuck_on=True)

    assert result(await stop(device, "cmd-1", sequence=2)) == "ok"
    assert result(await halt(device, "halt-1", sequence=3)) == "ok"

    assert (await state(device, SITE, PUMP))["running"] is True
    await wait_for(lambda: stopped(device))
    [run] = await runs(device)
    assert run["stopped_by"] == "auto_off"
    assert seconds_on(run) == pytest.approx(0.6, abs=0.2)


async def test_latency_delays_the_answer(device: httpx.AsyncClient) -> None:
    await set_fault(device, hardware_id=PUMP, latency_ms=200)

    began = time.monotonic()
    response = await device.get(f"/devices/{SITE}/{PUMP}")

    assert response.status_code == 200
    assert time.monotonic() - began >= 0.2


async def test_device_fault_leaves_other_devices_alone(device: httpx.AsyncClient) -> None:
    await set_fault(device, site_id=SITE, hardware_id=PUMP, error_rate=1)

    faulty = await start(device, "cmd-a")
    other_site = await start(device, "cmd-b", site_id=OTHER_SITE)
    other_pump = await start(device, "cmd-c", hardware_id=OTHER_PUMP)

    assert faulty.status_code == 503
    assert result(other_site) == "ok"
    assert result(other_pump) == "ok"
    assert {(r["site_id"], r["hardware_id"]) for r in await runs(device)} == {
        (OTHER_SITE, PUMP),
        (SITE, OTHER_PUMP),
    }


async def test_the_most_specific_fault_wins(device: httpx.AsyncClient) -> None:
    await set_fault(device, error_rate=1)
    await set_fault(device, site_id=OTHER_SITE, latency_ms=0)
    await set_fault(device, hardware_id=OTHER_PUMP, latency_ms=0)

    assert (await start(device, "cmd-a")).status_code == 503
    assert result(await start(device, "cmd-b", site_id=OTHER_SITE)) == "ok"
    assert result(await start(device, "cmd-c", hardware_id=OTHER_PUMP)) == "ok"
    faults = (await device.get("/faults")).json()["faults"]
    assert {(f["site_id"], f["hardware_id"]) for f in faults} == {
        (None, None),
        (OTHER_SITE, None),
        (None, OTHER_PUMP),
    }


async def test_seeded_error_rate_is_reproducible(device: httpx.AsyncClient) -> None:
    async def status_codes() -> list[int]:
        await set_fault(device, hardware_id=PUMP, error_rate=0.5, seed=42)
        return [(await device.get(f"/devices/{SITE}/{PUMP}")).status_code for _ in range(20)]

    first = await status_codes()

    assert first == await status_codes()
    assert set(first) == {200, 503}


async def test_clearing_faults_restores_the_device(device: httpx.AsyncClient) -> None:
    await set_fault(device, error_rate=1)

    cleared = await device.delete("/faults")

    assert cleared.status_code == 200
    assert (await device.get("/faults")).json() == {"faults": []}
    assert result(await start(device, "cmd-1")) == "ok"


async def test_deleting_the_truth_resets_everything(device: httpx.AsyncClient) -> None:
    await start(device, "cmd-1", sequence=3)
    await set_fault(device, hardware_id=OTHER_PUMP, error_rate=1)

    assert (await device.delete("/truth")).status_code == 200

    assert await runs(device) == []
    assert (await device.get("/faults")).json() == {"faults": []}
    assert (await state(device, SITE, PUMP))["sequence"] is None
    again = (await start(device, "cmd-1", sequence=1)).json()
    assert again["result"] == "ok"
    assert again["state"]["running"] is True
    assert result(await start(device, "cmd-b", hardware_id=OTHER_PUMP)) == "ok"


@pytest.mark.parametrize(
    "body",
    [
        {"command_id": "cmd", "sequence": 1, "duration_s": 0},
        {"command_id": "cmd", "sequence": 1, "duration_s": 3601},
        {"command_id": "", "sequence": 1, "duration_s": 1},
        {"command_id": "x" * 101, "sequence": 1, "duration_s": 1},
        {"command_id": "cmd", "duration_s": 1, "sequence": -1},
        {"command_id": "cmd", "duration_s": 1},
        {"command_id": "cmd", "sequence": 1, "duration_s": 1, "auto_off_at": "2030-01-01T00:00"},
        {"sequence": 1, "duration_s": 1},
    ],
)
async def test_bad_start_is_unprocessable(device: httpx.AsyncClient, body: dict[str, Any]) -> None:
    response = await send(device, SITE, PUMP, "start", body)

    assert response.status_code == 422
    assert await runs(device) == []


@pytest.mark.parametrize("hardware_id", ["-lead", "a:b", "a+b", "x" * 65])
async def test_an_address_outside_the_pattern_is_unprocessable(
    device: httpx.AsyncClient, hardware_id: str
) -> None:
    body = {"command_id": "cmd", "sequence": 1, "duration_s": 1}
    assert (await send(device, SITE, hardware_id, "start", body)).status_code == 422
    assert (await device.get(f"/devices/{SITE}/{hardware_id}")).status_code == 422


async def test_bad_fault_is_unprocessable(device: httpx.AsyncClient) -> None:
    response = await device.post("/faults", json={"error_rate": 1.5})

    assert response.status_code == 422


async def test_the_command_log_keeps_what_each_device_received_and_answered(
    device: httpx.AsyncClient,
) -> None:
    await start(device, "cmd-1", sequence=1)
    await start(device, "cmd-1", sequence=1)
    await stop(device, "cmd-1", sequence=2)
    await start(device, "b-1", sequence=1, site_id=OTHER_SITE)

    log = await commands(device, PUMP, site_id=SITE)

    assert [
        (c["op"], c["command_id"], c["sequence"], c["result"], c["duplicate"]) for c in log
    ] == [
        ("start", "cmd-1", 1, "ok", False),
        ("start", "cmd-1", 1, "ok", True),
        ("stop", "cmd-1", 2, "ok", False),
    ]
    assert len(await commands(device)) == 4
    await device.delete("/truth")
    assert await commands(device) == []


async def test_answer_faults_can_be_kept_to_some_requests(device: httpx.AsyncClient) -> None:
    await set_fault(device, hardware_id=PUMP, error_rate=1, ops=["start"])

    assert (await start(device, "cmd-1")).status_code == 503
    assert (await device.get(f"/devices/{SITE}/{PUMP}")).status_code == 200
    assert result(await stop(device, "cmd-1", sequence=2)) == "not_running"


async def test_a_flow_feed_takes_one_key_says_what_fails_and_goes_with_a_reset(
    device: httpx.AsyncClient,
) -> None:
    nowhere = "http://127.0.0.1:9"  # discard: nothing answers
    for keys in ({}, {"api_key": "k", "api_key_file": "/nonexistent"}):
        refused = await device.post("/flow/feeds", json={"api_url": nowhere, **keys})
        assert refused.status_code == 422, refused.text
    added = await device.post(
        "/flow/feeds", json={"api_url": nowhere, "api_key": "k", "refresh_s": 0.2}
    )
    assert added.status_code == 201, added.text

    async def failing() -> Any:
        [feed] = (await device.get("/flow/feeds")).json()["feeds"]
        return feed["last_error"]

    assert (await wait_for(failing)).startswith("ConnectError")
    assert (await device.delete("/truth")).status_code == 200
    assert (await device.get("/flow/feeds")).json() == {"feeds": []}
