"""The safety invariants, judged from the simulator's physical truth, with a real uvicorn
API, real arq workers (separate processes), real PostgreSQL and Redis.

Tolerances stated here: a physical run may exceed its requested duration by at most
RUN_TOLERANCE_S (device timer); the watchdog brings an abandoned run to a terminal state
within run_deadline + WATCHDOG_BOUND_S. The watchdog itself needs grace (1 s here) plus one
cron tick (1 s) once a worker is alive; the rest of the bound covers a replacement worker
starting on a loaded 2-core machine."""

import asyncio
import os
import sys
import time
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from irrigation import queue
from irrigation.settings import Settings
from irrigation.stack import plain_url
from irrigation.worker import is_healthy
from tests.support.factories import activate, make_pump
from tests.support.polling import wait_for
from tests.support.processes import StartProcess, free_port, wait_http
from tests.support.simulator import runs, seconds_on

# Real API and worker processes: left out of `make test-quick`.
# The heaviest, most timing-sensitive end-to-end tests: one xdist group, so `make test`'s
# parallel slow phase (`--dist loadgroup`) runs them one after another, never side by side.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("heavy")]

RUN_TOLERANCE_S = 0.25
WATCHDOG_BOUND_S = 10.0
TERMINAL = {"completed", "aborted", "failed", "expired", "rejected"}


async def terminal(api: httpx.AsyncClient, activation_id: str) -> dict[str, Any] | None:
    body: dict[str, Any] = (await api.get(f"/v1/activations/{activation_id}")).json()
    return body if body["status"] in TERMINAL else None


def herd_client(url: str, admin: dict[str, str]) -> httpx.AsyncClient:
    """A client with no connection yet: one kept alive since an earlier request may be
    closed by the server (uvicorn's 5 s keep-alive) just as the herd reuses it."""
    limits = httpx.Limits(max_connections=1000)
    return httpx.AsyncClient(base_url=url, headers=admin, timeout=30, limits=limits)


async def second_api(spawn: StartProcess, admin: dict[str, str]) -> httpx.AsyncClient:
    port = free_port()
    proc = spawn("serve", "--port", str(port))
    await wait_http(f"http://127.0.0.1:{port}/healthz", proc=proc)
    return herd_client(f"http://127.0.0.1:{port}", admin)


# The herd's run: long enough that its start reaches the simulator before its auto-off. The
# simulator answers from this test's event loop, which parses the herd's 500 answers just
# as the start is sent; a 2 s run was refused by the device as expired (`auto_off_at` past)
# once the API answered the herd in about 1 s (issue 20) instead of trickling its answers.
HERD_RUN_S = 6


async def test_herd_of_500_requests_on_two_api_processes_starts_the_pump_exactly_once(
    api: httpx.AsyncClient,
    api_url: str,
    device: httpx.AsyncClient,
    spawn: StartProcess,
    admin: dict[str, str],
) -> None:
    # The simulator answers from this test's own event loop, which the herd's 500 requests
    # keep busy: the suite's 0.5 s gateway timeout then fails the start (a fault, rightly).
    spawn("worker", IRRIGATION_GATEWAY_TIMEOUT_S="3")
    spawn("worker", IRRIGATION_GATEWAY_TIMEOUT_S="3")
    # A long cooldown: however long the herd takes, no second run is legitimate.
    pump = await make_pump(api, {}, "herd-1", cooldown_s=600)
    # The second API's start takes seconds: `api`'s connection idles meanwhile.
    async with await second_api(spawn, admin) as other, herd_client(api_url, admin) as first:
        responses = await asyncio.gather(
            *(activate(first if i % 2 else other, {}, pump["id"], HERD_RUN_S) for i in range(500))
        )
    codes = [r.status_code for r in responses]
    assert codes.count(202) == 1, {c: codes.count(c) for c in set(codes)}
    assert codes.count(409) == 499
    # Late members of the herd may arrive after the run ended: then the cooldown refuses them.
    assert {r.json()["code"] for r in responses if r.status_code == 409} <= {
        "pump_busy",
        "cooldown",
    }
    accepted = next(r.json() for r in responses if r.status_code == 202)

    done = await wait_for(lambda: terminal(api, accepted["id"]))
    assert done["status"] == "completed"
    physical = await runs(device, "herd-1")
    assert len(physical) == 1
    assert physical[0]["command_id"] == accepted["command_id"]
    assert seconds_on(physical[0]) <= HERD_RUN_S + RUN_TOLERANCE_S


async def test_a_herd_of_clients_that_hang_up_leaves_no_transaction_open(
    api_url: str, api: httpx.AsyncClient, admin: dict[str, str], database_url: str
) -> None:
    pump = await make_pump(api, {}, "gone-1")
    async with httpx.AsyncClient(base_url=api_url, headers=admin, timeout=0.005) as impatient:
        await asyncio.gather(
            *(activate(impatient, {}, pump["id"], 2) for _ in range(200)), return_exceptions=True
        )
    conn = await asyncpg.connect(plain_url(database_url))
    try:

        async def settled() -> bool:
            leaked = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND state LIKE 'idle in transaction%'"
            )
            return bool(leaked == 0)

        await wait_for(settled, timeout_s=5)
    finally:
        await conn.close()
    # The pump still answers: no lock was left behind.
    assert (await activate(api, {}, pump["id"], 2)).status_code in (202, 409)


async def test_requests_for_different_pumps_do_not_wait_on_each_other(
    api: httpx.AsyncClient, database_url: str
) -> None:
    a = await make_pump(api, {}, "free-a")
    b = await make_pump(api, {}, "free-b")
    holder = await asyncpg.connect(plain_url(database_url))
    try:
        tx = holder.transaction()
        await tx.start()
        await holder.execute("SELECT 1 FROM pumps WHERE id = $1::uuid FOR UPDATE", a["id"])
        blocked = asyncio.create_task(activate(api, {}, a["id"]))
        started = time.monotonic()
        free = await activate(api, {}, b["id"])
        elapsed = time.monotonic() - started
        assert free.status_code == 202
        # Pump A waits for its lock (2 s timeout); B answered long before that.
        assert elapsed < 1.0, elapsed
        assert not blocked.done()
        assert (await blocked).status_code == 503
        await tx.rollback()
    finally:
        await holder.close()


async def test_cooldown_refuses_with_retry_after_then_admits(
    api: httpx.AsyncClient, device: httpx.AsyncClient, spawn: StartProcess
) -> None:
    spawn("worker")
    pump = await make_pump(api, {}, "rest-1", cooldown_s=3)
    first = (await activate(api, {}, pump["id"], 1)).json()
    done = await wait_for(lambda: terminal(api, first["id"]))
    assert done["status"] == "completed"

    refused = await activate(api, {}, pump["id"], 1)
    assert refused.status_code == 409
    assert refused.json()["code"] == "cooldown"
    retry_after = int(refused.headers["retry-after"])
    assert 1 <= retry_after <= 3
    shown = (await api.get(f"/v1/pumps/{pump['id']}")).json()
    assert shown["status"] == "cooldown"

    # Not a poll, on purpose: what is checked is Retry-After's promise, that a client who
    # waits as long as it said is admitted.
    await asyncio.sleep(retry_after + 0.1)
    second = await activate(api, {}, pump["id"], 1)
    assert second.status_code == 202, second.text
    await wait_for(lambda: terminal(api, second.json()["id"]))
    physical = await runs(device, "rest-1")
    assert len(physical) == 2
    rest = datetime.fromisoformat(physical[1]["started_at"]) - datetime.fromisoformat(
        physical[0]["stopped_at"]
    )
    assert rest.total_seconds() >= 3


async def test_worker_killed_mid_run_the_device_stops_in_time_and_watchdog_reconciles(
    api: httpx.AsyncClient, device: httpx.AsyncClient, spawn: StartProcess
) -> None:
    victim = spawn("worker")
    pump = await make_pump(api, {}, "kill-1", max_runtime_s=3, cooldown_s=1)
    run = (await activate(api, {}, pump["id"], 3)).json()

    async def running() -> bool:
        return bool(await runs(device, "kill-1"))

    await wait_for(running)
    victim.kill()
    spawn("worker")  # the survivor's watchdog must finish what the victim left

    async def off() -> bool:
        found = await runs(device, "kill-1")
        return found[0]["stopped_at"] is not None

    await wait_for(off, timeout_s=10)
    [physical] = await runs(device, "kill-1")
    assert seconds_on(physical) <= 3 + RUN_TOLERANCE_S

    done = await wait_for(lambda: terminal(api, run["id"]), timeout_s=3 + WATCHDOG_BOUND_S)
    assert done["status"] in ("completed", "aborted")
    # Killed before the start was recorded, a run has no deadline yet: its latest possible
    # end is the request time plus the queue delay allowance plus the duration.
    deadline = (
        datetime.fromisoformat(done["run_deadline"])
        if done["run_deadline"]
        else datetime.fromisoformat(done["start_deadline"]) + timedelta(seconds=3)
    )
    stopped = datetime.fromisoformat(done["stopped_at"])
    assert (stopped - deadline).total_seconds() <= WATCHDOG_BOUND_S
    shown = (await api.get(f"/v1/pumps/{pump['id']}")).json()
    assert shown["active_activation_id"] is None
    assert shown["cooldown_until"] is not None


async def test_job_delivered_twice_and_worker_restarted_mid_job_start_the_pump_once(
    api: httpx.AsyncClient, device: httpx.AsyncClient, spawn: StartProcess, settings: Settings
) -> None:

    pump = await make_pump(api, {}, "dup-1", cooldown_s=1)
    # The device answers slowly (within the gateway timeout): the first worker dies while
    # the start is in flight.
    await device.post("/faults", json={"hardware_id": "dup-1", "latency_ms": 400})
    run = (await activate(api, {}, pump["id"], 2)).json()
    redis = queue.create_redis(settings.effective_redis_url, 1.0, settings.queue_name)
    try:
        # Extra deliveries under other job ids: arq's dedup cannot save us, the state must.
        for i in range(3):
            await redis.enqueue_job(
                queue.START_ACTIVATION,
                run["id"],
                _job_id=f"dup-{i}",
                _queue_name=queue.job_queue_key(redis, queue.START_ACTIVATION),
            )
        first = spawn("worker")

        async def taken() -> bool:
            shown = (await api.get(f"/v1/activations/{run['id']}")).json()
            return bool(shown["status"] != "queued")

        # The worker has taken the job: with the device's latency, its start is in flight.
        await wait_for(taken, interval_s=0.02)
        first.kill()
        spawn("worker")
        spawn("worker")
        done = await wait_for(lambda: terminal(api, run["id"]), timeout_s=20)
    finally:
        await redis.aclose()
    physical = await runs(device, "dup-1")
    assert len(physical) <= 1
    assert {r["command_id"] for r in physical} <= {run["command_id"]}
    # On a loaded machine the workers started again may come past the start deadline: the
    # run then expires, and must not have run at all.
    assert done["status"] in ("completed", "aborted", "expired")
    if done["status"] == "expired":
        assert physical == []
    for r in physical:
        assert seconds_on(r) <= 2 + RUN_TOLERANCE_S


async def test_crash_between_commit_and_enqueue_is_delivered_by_the_outbox_relay(
    device: httpx.AsyncClient, spawn: StartProcess, admin: dict[str, str]
) -> None:
    port = free_port()
    # The run waits for a worker that starts only after 1.5 s: on a loaded machine its
    # start-up alone once took the rest of the default 10 s, and the run was `expired`
    # (right by the settings, but the expiry is not what this test is about).
    patient = {"IRRIGATION_MAX_QUEUE_DELAY_S": "60"}
    spawn("serve", "--port", str(port), IRRIGATION_ENQUEUE_FAST_PATH="false", **patient)
    url = f"http://127.0.0.1:{port}"
    await wait_http(f"{url}/healthz")
    async with httpx.AsyncClient(base_url=url, headers=admin, timeout=10) as api:
        pump = await make_pump(api, {}, "relay-1", cooldown_s=1)
        run = (await activate(api, {}, pump["id"], 1)).json()
        # Time passes on purpose: the outbox entry ages past the relay's 1 s, and without a
        # worker (and with the fast path off) nothing may have moved the run meanwhile.
        await asyncio.sleep(1.5)
        assert (await api.get(f"/v1/activations/{run['id']}")).json()["status"] == "queued"
        spawn("worker", **patient)
        done = await wait_for(lambda: terminal(api, run["id"]), timeout_s=15)
    assert done["status"] == "completed"
    assert [r["command_id"] for r in await runs(device, "relay-1")] == [run["command_id"]]


async def test_gateway_errors_fail_the_run_and_latch_the_fault_until_reset(
    api: httpx.AsyncClient, device: httpx.AsyncClient, spawn: StartProcess
) -> None:
    spawn("worker")
    pump = await make_pump(api, {}, "err-1", cooldown_s=1)
    await device.post("/faults", json={"hardware_id": "err-1", "error_rate": 1.0})
    run = (await activate(api, {}, pump["id"], 2)).json()
    done = await wait_for(lambda: terminal(api, run["id"]))
    assert done["status"] == "failed"
    # The class, not the device's answer (its 503 and text are in the worker's log).
    assert done["error"] == "gateway_unreachable"
    events = (await api.get(f"/v1/activations/{run['id']}/events")).json()["items"]
    assert [e["status"] for e in events] == ["queued", "starting", "failed"]
    assert await runs(device, "err-1") == []

    shown = (await api.get(f"/v1/pumps/{pump['id']}")).json()
    assert (shown["status"], shown["fault"]) == ("fault", "gateway: unreachable")
    refused = await activate(api, {}, pump["id"], 2)
    assert refused.status_code == 409
    assert refused.json()["code"] == "fault"

    await device.delete("/faults")
    assert (await api.post(f"/v1/pumps/{pump['id']}/reset")).status_code == 200

    # The cooldown that follows a failure (the device may have run) must end first.
    async def idle() -> bool:
        return bool((await api.get(f"/v1/pumps/{pump['id']}")).json()["status"] == "idle")

    await wait_for(idle, timeout_s=5)
    again = (await activate(api, {}, pump["id"], 1)).json()
    done = await wait_for(lambda: terminal(api, again["id"]))
    assert done["status"] == "completed"
    assert len(await runs(device, "err-1")) == 1


async def test_gateway_timeout_with_a_lost_answer_never_outruns_the_device_auto_off(
    api: httpx.AsyncClient, device: httpx.AsyncClient, spawn: StartProcess
) -> None:
    spawn("worker")
    pump = await make_pump(api, {}, "lost-1", cooldown_s=1)
    # The device obeys but its answers are lost: every attempt times out.
    await device.post("/faults", json={"hardware_id": "lost-1", "drop_response": True})
    run = (await activate(api, {}, pump["id"], 2)).json()
    done = await wait_for(lambda: terminal(api, run["id"]))
    assert done["status"] == "failed"
    await device.delete("/faults")

    async def off() -> list[dict[str, Any]]:
        found = await runs(device, "lost-1")
        return found if found and all(r["stopped_at"] for r in found) else []

    physical = await wait_for(off, timeout_s=5)
    assert len(physical) == 1  # retries carried the same command id: one start
    assert seconds_on(physical[0]) <= 2 + RUN_TOLERANCE_S
    assert (await api.get(f"/v1/pumps/{pump['id']}")).json()["status"] == "fault"


async def test_operator_stop_turns_the_device_off_and_starts_the_cooldown(
    api: httpx.AsyncClient, device: httpx.AsyncClient, spawn: StartProcess
) -> None:
    spawn("worker")
    pump = await make_pump(api, {}, "stop-1", cooldown_s=5)
    run = (await activate(api, {}, pump["id"], 20)).json()

    async def started() -> bool:
        return (await api.get(f"/v1/activations/{run['id']}")).json()["status"] == "running"

    await wait_for(started)
    stop = await api.post(f"/v1/pumps/{pump['id']}/stop")
    assert stop.status_code == 200
    assert [a["id"] for a in stop.json()["stopped"]] == [run["id"]]
    done = await wait_for(lambda: terminal(api, run["id"]), timeout_s=5)
    assert done["status"] == "aborted"
    assert done["stop_cause"] == "operator"
    [physical] = await runs(device, "stop-1")
    assert physical["stopped_by"] == "command"
    assert seconds_on(physical) < 5
    refused = await activate(api, {}, pump["id"], 1)
    assert refused.json()["code"] == "cooldown"
    events = (await api.get(f"/v1/activations/{run['id']}/events")).json()["items"]
    assert [e["cause"] for e in events] == [
        "requested",
        "worker",
        "device_started",
        "stop_requested",
        "operator",
    ]


async def test_worker_health_check_sees_a_live_worker_only(
    spawn: StartProcess, e2e_env: dict[str, str], settings: Settings
) -> None:
    async def check() -> int:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "irrigation", "worker", "--check", env={**os.environ, **e2e_env}
        )
        return await proc.wait()

    assert await check() == 1
    spawn("worker")
    # Polled in-process (each `--check` is a Python start-up), then asked of the CLI.
    await wait_for(lambda: is_healthy(settings), timeout_s=20)
    assert await check() == 0


async def _lock_waiters(conn: asyncpg.Connection) -> int:
    """Backends of this database waiting for a lock (not this connection)."""
    found = await conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
    )
    return int(found)


async def test_stop_all_stops_a_run_admitted_while_it_was_running(
    api: httpx.AsyncClient, device: httpx.AsyncClient, spawn: StartProcess, database_url: str
) -> None:
    spawn("worker")
    pumps = [await make_pump(api, {}, f"race-{i}", cooldown_s=1) for i in range(3)]
    running = (await activate(api, {}, pumps[0]["id"], 20)).json()
    await wait_for(lambda: runs(device, "race-0"))

    conn = await asyncpg.connect(plain_url(database_url))
    try:
        tx = conn.transaction()
        await tx.start()
        # An admission writes its outbox row last: with the table held, the admission of
        # race-1 is in flight, holding race-1's row lock, its run not yet committed.
        await conn.execute("LOCK TABLE outbox IN SHARE MODE")
        admitting = asyncio.create_task(activate(api, {}, pumps[1]["id"], 20))
        await wait_for(lambda: _lock_waiters(conn), interval_s=0.02)
        stopping = asyncio.create_task(api.post("/v1/pumps/stop-all"))

        async def stop_all_waits_or_answered() -> bool:
            return stopping.done() or await _lock_waiters(conn) >= 2

        await wait_for(stop_all_waits_or_answered, timeout_s=15, interval_s=0.02)
        await tx.rollback()  # the admission commits; stop-all goes on
    finally:
        await conn.close()
    admitted = await admitting
    assert admitted.status_code == 202, admitted.text
    stop = await stopping
    assert stop.status_code == 200, stop.text
    stopped = {a["id"] for a in stop.json()["stopped"]}
    assert stopped == {running["id"], admitted.json()["id"]}

    done = await wait_for(lambda: terminal(api, admitted.json()["id"]))
    assert (done["status"], done["stop_cause"]) == ("aborted", "stop_all")
    await wait_for(lambda: terminal(api, running["id"]))
    # Judged from the truth: the running one was stopped, the admitted one never ran.
    [first] = await runs(device, "race-0")
    assert first["stopped_by"] == "halt"  # stop-all stops whatever runs
    assert seconds_on(first) < 20
    events = (await api.get(f"/v1/activations/{done['id']}/events")).json()["items"]
    assert [e["cause"] for e in events] == ["requested", "stop_all"]
    assert await runs(device, "race-1") == []
