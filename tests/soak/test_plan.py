"""A soak's plan is its seed's: the same seed gives the same fleet, requests and faults."""

from itertools import pairwise

from irrigation.soak.plan import (
    DEVICE_FAULTS,
    PROCESS_FAULTS,
    SoakParams,
    fault_kinds,
    make_plan,
)
from irrigation.soak.runner import replay_command


def test_the_same_seed_gives_the_same_plan_and_another_seed_another() -> None:
    params = SoakParams(seed=42, minutes=2)
    assert make_plan(params) == make_plan(params)
    assert make_plan(params) != make_plan(SoakParams(seed=43, minutes=2))


def test_the_plan_spreads_requests_and_faults_over_the_window() -> None:
    plan = make_plan(SoakParams(seed=5, minutes=2, ops_per_s=2))
    assert len(plan.ops) == 240
    assert {o.action for o in plan.ops} == {"activate", "queue", "stop", "stop_all", "reset"}
    assert all(0 <= o.at_s <= 120 for o in plan.ops)
    assert [o.at_s for o in plan.ops] == sorted(o.at_s for o in plan.ops)
    assert {f.action for f in plan.faults} >= {"device_fault", "worker_kill"}
    assert all(0 <= f.at_s < 120 for f in plan.faults)
    # Some requests ask more than the pump's cap: the API must refuse those.
    caps = {
        (s, p): pump.max_runtime_s
        for s, site in enumerate(plan.sites)
        for p, pump in enumerate(site.pumps)
    }
    over = [o for o in plan.ops if o.duration_s and o.duration_s > caps[(o.site, o.pump)]]
    assert over


def test_shared_hardware_ids_appear_at_several_sites_only_when_asked() -> None:
    shared = make_plan(SoakParams(seed=1))
    assert all(site.pumps[0].hardware_id == "shared-0" for site in shared.sites)
    apart = make_plan(SoakParams(seed=1, shared_hardware_ids=False))
    ids = [p.hardware_id for site in apart.sites for p in site.pumps]
    assert len(ids) == len(set(ids))


def test_one_worker_at_most_is_paused_at_a_time() -> None:
    params = SoakParams(seed=3, minutes=10, process_faults=("worker_pause",), device_faults=())
    faults = make_plan(params).faults
    held = [(f.at_s, f.at_s + (f.hold_s or 0)) for f in faults if f.action == "worker_pause"]
    assert len(held) > 1
    assert all(later[0] >= earlier[1] for earlier, later in pairwise(held))
    # A pause that would fall inside another becomes a kill.
    assert {f.action for f in faults} == {"worker_pause", "worker_kill"}


def test_fault_kinds_are_a_parameter() -> None:
    assert fault_kinds(None) == (DEVICE_FAULTS, PROCESS_FAULTS)
    assert fault_kinds("none") == ((), ())
    assert fault_kinds("stuck_on,worker_kill, drop_ack") == (
        ("stuck_on", "drop_ack"),
        ("worker_kill",),
    )
    plan = make_plan(SoakParams(seed=9, device_faults=("stuck_on",), process_faults=()))
    assert {f.action for f in plan.faults} == {"device_fault"}
    assert all(f.params == {"stuck_on": True} for f in plan.faults)


def test_the_replay_command_names_what_differs_from_the_defaults() -> None:
    assert (
        replay_command(SoakParams(seed=7, minutes=0.5)) == "irrigation soak --seed 7 --minutes 0.5"
    )
    params = SoakParams(seed=7, shared_hardware_ids=False, process_faults=("pg_kill",))
    assert replay_command(params) == (
        "irrigation soak --seed 7 --minutes 1 --no-shared-hardware-ids "
        "--faults latency_ms,error_rate,hang,drop_ack,offline,stuck_off,stuck_on,pg_kill"
    )


def test_over_mqtt_the_broker_restarts_too_and_the_replay_says_which_driver() -> None:
    device, process = fault_kinds(None, "mqtt")
    assert device == DEVICE_FAULTS
    assert process == (*PROCESS_FAULTS, "broker_restart")
    assert fault_kinds("broker_restart,offline", "http") == (("offline",), ("broker_restart",))
    params = SoakParams(seed=2, gateway="mqtt", process_faults=process)
    restarts = [f for f in make_plan(params).faults if f.action == "broker_restart"]
    assert restarts
    assert all(f.target == "broker" and f.hold_s for f in restarts)
    assert replay_command(params) == "irrigation soak --seed 2 --minutes 1 --gateway mqtt"
    # The HTTP driver's plan for a seed is what it was before MQTT existed.
    assert "broker_restart" not in {f.action for f in make_plan(SoakParams(seed=2)).faults}
