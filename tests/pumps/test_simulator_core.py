"""The simulator's transport-agnostic core, as a second transport (MQTT) would drive it:
wire JSON in, acknowledgement JSON out, state changes pushed to a subscriber."""

from typing import Any

from irrigation.simulator.core import DeviceFleet
from irrigation.simulator.faults import Fault
from tests.support.polling import wait_for

SITE, PUMP = "site-a", "pump-a"


def start(command_id: str, sequence: int, duration_s: float = 10) -> dict[str, Any]:
    return {"op": "start", "command_id": command_id, "sequence": sequence, "duration_s": duration_s}


async def test_a_subscriber_sees_start_stop_and_auto_off() -> None:
    fleet = DeviceFleet()
    seen: list[tuple[str, str, dict[str, Any]]] = []
    unsubscribe = fleet.subscribe(lambda site, hw, state: seen.append((site, hw, state)))
    try:
        fleet.handle(SITE, PUMP, start("c-1", 1))
        fleet.handle(SITE, PUMP, {"op": "stop", "command_id": "c-1", "sequence": 2})
        fleet.handle(SITE, PUMP, start("c-3", 3, duration_s=0.1))

        async def auto_off() -> bool:
            return len(seen) == 4 and not seen[-1][2]["running"]

        await wait_for(auto_off, timeout_s=3)
        running = [(s[2]["running"], s[2]["command_id"], s[2]["sequence"]) for s in seen]
        assert running == [(True, "c-1", 1), (False, "c-1", 2), (True, "c-3", 3), (False, "c-3", 3)]
        assert {(site, hw) for site, hw, _ in seen} == {(SITE, PUMP)}
    finally:
        unsubscribe()
        fleet.close()


async def test_every_state_change_is_told_once_and_an_unchanged_state_not_at_all() -> None:
    fleet = DeviceFleet()
    seen: list[dict[str, Any]] = []
    fleet.subscribe(lambda _site, _hw, state: seen.append(state))
    try:
        fleet.handle(SITE, PUMP, start("c-1", 1))
        fleet.handle(SITE, PUMP, start("c-1", 1))  # a duplicate: nothing changes
        fleet.state(SITE, PUMP)
        assert [s["command_id"] for s in seen] == ["c-1"]
    finally:
        fleet.close()


async def test_a_malformed_wire_command_is_answered_with_an_error() -> None:
    fleet = DeviceFleet()

    ack = fleet.handle(SITE, PUMP, {"op": "start", "command_id": "c-1", "sequence": 1})
    unknown = fleet.handle(SITE, PUMP, {"op": "explode", "command_id": "c-2", "sequence": 2})

    assert (ack["command_id"], ack["result"]) == ("c-1", "error")
    assert ack["detail"].startswith("invalid command: ")
    assert ack["state"]["running"] is False
    assert unknown["result"] == "error"
    assert fleet.truth() == []


async def test_physical_faults_hold_whatever_the_transport() -> None:
    fleet = DeviceFleet()
    fleet.faults.set(Fault(site_id=SITE, hardware_id=PUMP, stuck_off=True))
    try:
        ack = fleet.handle(SITE, PUMP, start("c-1", 1))
        assert ack["result"] == "ok"
        assert ack["state"]["running"] is False
        assert fleet.truth() == []
    finally:
        fleet.close()


async def test_a_meter_reads_the_relay_nominal_flow_or_the_devices_flow_faults() -> None:
    fleet = DeviceFleet()
    try:
        assert fleet.flow(SITE, PUMP, 20) == (False, 0.0)  # never commanded: off, dry
        fleet.handle(SITE, PUMP, start("c-1", 1))
        assert fleet.flow(SITE, PUMP, 20) == (True, 20)
        fleet.faults.set(Fault(hardware_id=PUMP, flow_lpm=0, leak_lpm=3))
        assert fleet.flow(SITE, PUMP, 20) == (True, 0)  # runs dry
        fleet.handle(SITE, PUMP, {"op": "stop", "command_id": "c-1", "sequence": 2})
        assert fleet.flow(SITE, PUMP, 20) == (False, 3)  # leaks while off
        # A stuck relay runs on, and so does its water.
        fleet.faults.set(Fault(hardware_id=PUMP, stuck_on=True))
        fleet.handle(SITE, PUMP, start("c-3", 3))
        fleet.handle(SITE, PUMP, {"op": "halt", "command_id": "h-4", "sequence": 4})
        assert fleet.flow(SITE, PUMP, 20) == (True, 20)
    finally:
        fleet.close()
