"""A short fault soak against this test's own database: the whole stack as processes
(the API, two workers, the simulator, and a Redis of the soak's own), random requests and
every kind of fault, judged by the offline checker from the simulator's truth.

Pumps of both sites share hardware ids (each site's device is its own: `(site_id,
hardware_id)`). Parameter under which the test fits its time, and why:
- `pause_hold_s=6`: a paused worker is held past the watchdog's limit for a start in
  flight (gateway calls of 3 x 0.5 s + 1 s grace), not past arq's 40 s lease, which a
  one-minute test cannot wait for; `irrigation soak` holds it 45 s."""

from dataclasses import replace
from pathlib import Path

import pytest

from irrigation.settings import Settings
from irrigation.soak import history
from irrigation.soak.plan import SoakParams, fault_kinds, make_plan
from irrigation.soak.runner import soak, soak_many

# The heaviest, most timing-sensitive end-to-end tests: one xdist group, so `make test`'s
# parallel slow phase (`--dist loadgroup`) runs them one after another, never side by side.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("heavy")]

# Seed 83's 24 s: a worker paused, a worker killed, Redis restarted, the database's
# connections killed, and devices failing, dropping their answers, offline, and with
# relays stuck off and stuck on.
PARAMS = SoakParams(
    seed=83,
    minutes=0.4,
    sites=2,
    shared_hardware_ids=True,
    clients=3,
    fault_gap_s=(1.5, 3.5),
    device_fault_s=(1.5, 4.0),
    pause_hold_s=6,
    queue_deadline_s=10,
)


async def test_a_short_soak_under_every_fault_finds_no_violation(
    settings: Settings, tmp_path: Path
) -> None:
    planned = {f.action for f in make_plan(PARAMS).faults}
    assert planned == {"device_fault", "worker_kill", "worker_pause", "redis_restart", "pg_kill"}
    lines: list[str] = []
    result = await soak(
        PARAMS,
        tmp_path,
        database_url=settings.effective_database_url,
        redis_namespace=settings.redis_namespace,
        echo=lines.append,
    )
    report = "\n".join(lines)
    assert result.violations == [], report
    assert "0 violations (seed 83)" in report

    recorded = result.history
    assert recorded.final is not None
    assert recorded.truth is not None
    assert recorded.final.quiescent, report
    # Enough happened to judge: pumps ran, requests were admitted and refused, and every
    # planned kind of fault was applied.
    assert len(recorded.truth.runs) >= 8, report
    statuses = {op.status for op in recorded.operations}
    assert {200, 202, 409, 422} <= statuses, report
    assert {f.action for f in recorded.faults} == planned, report
    assert any("backends terminated" in f.outcome for f in recorded.faults), report
    # What was judged is what the file says.
    assert history.read(result.history_path) == recorded


# Seeds 74 and 75 over MQTT, at once on one stack: between them every fault, the broker's
# restart (SIGKILL: the retained states it had not saved are gone) among them.
MQTT_PARAMS = replace(PARAMS, seed=74, gateway="mqtt", process_faults=fault_kinds(None, "mqtt")[1])


async def test_two_fault_schedules_at_once_over_mqtt_find_no_violation(
    settings: Settings, tmp_path: Path
) -> None:
    schedules = [MQTT_PARAMS, replace(MQTT_PARAMS, seed=75)]
    planned = [{f.action for f in make_plan(p).faults} for p in schedules]
    assert "broker_restart" in planned[0]
    assert planned[0] | planned[1] >= {"worker_pause", "redis_restart", "pg_kill"}
    lines: list[str] = []
    results = await soak_many(
        schedules,
        tmp_path,
        parallel=2,
        database_url=settings.effective_database_url,
        redis_namespace=settings.redis_namespace,
        echo=lines.append,
    )
    report = "\n".join(lines)
    assert [r.seed for r in results] == [74, 75]
    assert all(r.violations == [] for r in results), report
    sites = []
    for result in results:
        recorded = result.history
        assert recorded.final is not None
        assert recorded.final.quiescent, report
        assert recorded.truth is not None
        assert len(recorded.truth.runs) >= 4, report
        # Each schedule is judged on the truth of its own sites alone.
        own = {s.id for s in recorded.config.sites}
        assert {r.site_id for r in recorded.truth.runs} <= own, report
        sites.append(own)
        assert history.read(result.history_path) == recorded
    assert not sites[0] & sites[1]
    restarts = [f for f in results[0].history.faults if f.action == "broker_restart"]
    assert restarts, report
    assert all("started again" in f.outcome for f in restarts), report
    assert any("request to device start" in line for line in lines), report
