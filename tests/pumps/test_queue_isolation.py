"""Queue isolation with real processes: a worker serves the queues it is given, and pump
starts keep their idle latency while 50 large imports and a webhook storm load the other
workers. Latency is judged from the simulator's truth: the API's `requested_at` (202 body)
to the device's `started_at` for that `command_id`."""

import asyncio
import os
import signal
import statistics
import sys
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from irrigation.settings import Settings
from irrigation.worker import is_healthy
from tests.support.factories import activate, make_pump, make_sensor, make_zone
from tests.support.polling import wait_for
from tests.support.processes import StartProcess
from tests.support.servers import serve
from tests.support.simulator import runs

# The heaviest, most timing-sensitive end-to-end tests: one xdist group, so `make test`'s
# parallel slow phase (`--dist loadgroup`) runs them one after another, never side by side.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("heavy")]

IMPORTS = 50
BULK_SLOTS = 4  # the bulk worker's max_jobs in this test
# Lines per import (4 chunks of 5,000): each holds a bulk slot for seconds, and together
# they outlast the measurement (checked); the workers stop with the test, unfinished.
IMPORT_LINES = 20_000
HOOKS = 30
ALERTING = 40
RECEIVER_DELAY_S = 3.0  # every webhook delivery waits this long for its answer
SAMPLES = 11
# The idle p50 is floored: a start takes tens of milliseconds when idle, and a 2-core
# machine shared with other work jitters by more than that; twice the floor still tells
# a starved pump queue (seconds, up to expiry) from an isolated one.
IDLE_FLOOR_S = 0.2


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    """This test's data directory, shared by the API (uploads) and the bulk worker."""
    return settings.model_copy(update={"data_dir": str(tmp_path / "data")})


@pytest.fixture
def e2e_env(e2e_env: dict[str, str]) -> dict[str, str]:
    """One site's storm, as the issue tells it: its 50 imports at once (over the default
    quota of concurrent imports and the `expensive` rate limit, which would refuse most of
    them: this test is about the queues), and webhooks to the test's own receiver on
    loopback (allowed as an on-premises receiver is)."""
    return {
        **e2e_env,
        # Few bulk slots, all busy all along: the 50 imports then outlast the measurement
        # even on a machine that imports fast (at 10 slots a quiet machine had them all
        # done before the first webhook arrived).
        "IRRIGATION_WORKER_MAX_JOBS_BULK": str(BULK_SLOTS),
        "IRRIGATION_QUOTA_MAX_CONCURRENT_IMPORTS": str(IMPORTS),
        "IRRIGATION_RATE_LIMIT_EXPENSIVE": "100000/minute",
        "IRRIGATION_WEBHOOK_ALLOW_NETWORKS": "127.0.0.0/8",
    }


async def _health(env: dict[str, str], *queues: str) -> int:
    args = ["--queues", ",".join(queues)] if queues else []
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "irrigation", "worker", *args, "--check", env={**os.environ, **env}
    )
    return await proc.wait()


async def test_a_worker_serves_the_queues_it_is_given_and_stops_on_sigterm(
    spawn: StartProcess, e2e_env: dict[str, str], settings: Settings
) -> None:
    pumps = spawn("worker", "--queues", "pumps")
    # Polled in-process (each `--check` is a Python start-up), then asked of the CLI.
    await wait_for(lambda: is_healthy(settings, ["pumps"]), timeout_s=20)
    assert await _health(e2e_env, "pumps") == 0
    assert await _health(e2e_env, "automation") == 1
    assert await _health(e2e_env, "bulk") == 1
    assert await _health(e2e_env) == 1  # all three: two are missing

    rest = spawn("worker", "--queues", "automation,bulk")
    await wait_for(lambda: is_healthy(settings), timeout_s=20)
    assert await _health(e2e_env) == 0

    # One process, two arq workers: one signal stops both, cleanly.
    rest.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(rest.proc.wait, 10) == 0, rest.output()[-2000:]
    pumps.proc.send_signal(signal.SIGINT)
    assert await asyncio.to_thread(pumps.proc.wait, 10) == 0, pumps.output()[-2000:]


class SlowReceiver:
    """A webhook endpoint that answers 200 after RECEIVER_DELAY_S."""

    def __init__(self) -> None:
        self.received = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        self.received += 1
        await asyncio.sleep(RECEIVER_DELAY_S)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[SlowReceiver, str]]:
    app = SlowReceiver()
    async with serve(app) as url:
        yield app, url


async def _start_latency(api: httpx.AsyncClient, device: httpx.AsyncClient, pump: str) -> float:
    """Seconds from the request (`requested_at`) to the device starting the run."""
    answer = await activate(api, {}, pump, 1)
    assert answer.status_code == 202, answer.text
    run = answer.json()

    async def started() -> dict[str, Any] | None:
        found = [r for r in await runs(device) if r["command_id"] == run["command_id"]]
        return found[0] if found else None

    try:
        physical = await wait_for(started, timeout_s=20, interval_s=0.02)
    except AssertionError:
        shown = (await api.get(f"/v1/activations/{run['id']}")).json()
        events = (await api.get(f"/v1/activations/{run['id']}/events")).json()
        raise AssertionError(f"never started: {shown} {events}") from None
    requested = datetime.fromisoformat(run["requested_at"])
    return (datetime.fromisoformat(physical["started_at"]) - requested).total_seconds()


async def _latencies(
    api: httpx.AsyncClient, device: httpx.AsyncClient, pumps: list[str]
) -> list[float]:
    found = []
    for pump in pumps:
        found.append(await _start_latency(api, device, pump))
        await asyncio.sleep(0.2)  # spread over the storm
    return found


def _history(sensor: str, offset: int) -> bytes:
    """IMPORT_LINES readings a minute apart, none shared with another file."""
    end = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=1)
    return "".join(
        f'{{"sensor_id":"{sensor}","ts":"{(end - timedelta(minutes=offset + i)).isoformat()}",'
        f'"value":{(i % 900) / 10}}}\n'
        for i in range(IMPORT_LINES)
    ).encode()


async def _upload(api: httpx.AsyncClient, body: bytes) -> str:
    response = await api.post(
        "/v1/ingest/jobs",
        content=body,
        headers={"Content-Type": "application/x-ndjson"},
    )
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


async def _import_statuses(api: httpx.AsyncClient) -> Counter[str]:
    response = await api.get("/v1/ingest/jobs", params={"source": "import", "limit": 100})
    assert response.status_code == 200, response.text
    return Counter(job["status"] for job in response.json()["items"])


async def test_imports_and_a_webhook_storm_leave_the_pump_start_latency_as_it_was_idle(
    api: httpx.AsyncClient,
    device: httpx.AsyncClient,
    spawn: StartProcess,
    settings: Settings,
    receiver: tuple[SlowReceiver, str],
) -> None:
    """As `irrigation up` runs them: one worker for `pumps`, one for `automation,bulk` (started
    for the storm, so that the idle figure is the pumps' own)."""
    spawn("worker", "--queues", "pumps")
    # Started (slow on a loaded machine): a start queued meanwhile would expire.
    await wait_for(lambda: is_healthy(settings, ["pumps"]), timeout_s=60, interval_s=0.2)
    pumps = [(await make_pump(api, {}, cooldown_s=1))["id"] for _ in range(2 * SAMPLES + 1)]
    await _start_latency(api, device, pumps.pop())  # warm-up: connections, caches
    idle = await _latencies(api, device, pumps[:SAMPLES])

    # The storm's makings: subscriptions that hear every alert, at a receiver that takes
    # RECEIVER_DELAY_S per delivery; sensors that alert below 10; 50 large history files.
    app, url = receiver
    for _ in range(HOOKS):
        hook = await api.post("/v1/webhooks", json={"url": f"{url}/slow"})
        assert hook.status_code == 201, hook.text
    zone = (await make_zone(api, {}))["id"]
    alerting = [(await make_sensor(api, {}, zone, alert_min=10))["id"] for _ in range(ALERTING)]
    sensors = [(await make_sensor(api, {}, zone))["id"] for _ in range(10)]
    files = [_history(sensors[i % 10], (i // 10) * IMPORT_LINES) for i in range(IMPORTS)]

    # The webhook storm first (it lasts a minute: 1,200 deliveries at 3 s each), then the
    # imports, whose length depends on how fast this machine imports: each sample below
    # is taken while more imports are unfinished than the bulk worker runs at once.
    now = datetime.now(UTC).isoformat()
    readings = [{"sensor_id": s, "ts": now, "value": 2} for s in alerting]
    sent = await api.post("/v1/readings", json={"readings": readings})
    assert sent.status_code == 200, sent.text
    spawn("worker", "--queues", "automation,bulk")

    async def delivering() -> bool:
        return app.received > 0

    await wait_for(delivering, timeout_s=60, interval_s=0.2)
    received = app.received
    await asyncio.gather(*(_upload(api, f) for f in files))

    loaded: list[float] = []
    for pump in pumps[SAMPLES:]:
        statuses = await _import_statuses(api)
        unfinished = statuses["queued"] + statuses["running"]
        assert unfinished > BULK_SLOTS, f"the imports ended after {len(loaded)} samples"
        loaded.append(await _start_latency(api, device, pump))
    statuses = await _import_statuses(api)
    unfinished = statuses["queued"] + statuses["running"]
    # Webhooks were still being delivered all along.
    assert app.received - received >= HOOKS, (received, app.received)

    idle_p50, loaded_p50 = statistics.median(idle), statistics.median(loaded)
    print(
        f"\npump start latency p50: idle {idle_p50 * 1000:.0f} ms; with {IMPORTS} imports "
        f"({unfinished} unfinished after) and a webhook storm ({app.received - received} "
        f"deliveries while measuring) {loaded_p50 * 1000:.0f} ms (max {max(loaded) * 1000:.0f} ms)"
    )
    assert loaded_p50 <= 2 * max(idle_p50, IDLE_FLOOR_S), (idle, loaded)
