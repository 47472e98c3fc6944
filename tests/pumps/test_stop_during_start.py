"""A stop asked for while the device is still being started: the start job finds the
request when the device answers, turns the device off, and the run ends with the cause
that was asked for (stop-all, a replace...), not a generic one. The worker's start job runs
in-process against the real simulator, slowed by an injected latency."""

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from irrigation import queue
from irrigation.common.worker_context import WorkerContext
from irrigation.db import create_engine, create_sessionmaker
from irrigation.gateway import HttpGateway
from irrigation.pumps import jobs
from irrigation.settings import Settings
from tests.support.factories import activate, make_pump
from tests.support.polling import wait_for
from tests.support.simulator import runs


@pytest.fixture
async def job_ctx(settings: Settings, simulator_url: str) -> AsyncIterator[dict[str, Any]]:
    engine = create_engine(settings)
    redis = queue.create_redis(settings.effective_redis_url, 2.0, settings.queue_name)
    gateway = HttpGateway(simulator_url, timeout_s=5, retries=0)
    context = WorkerContext(
        settings=settings, sessions=create_sessionmaker(engine), gateway=gateway, redis=redis
    )
    yield {"irrigation": context}
    await gateway.aclose()
    await redis.aclose()
    await engine.dispose()


async def test_a_stop_during_the_start_ends_the_run_with_the_cause_asked_for(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    device: httpx.AsyncClient,
    job_ctx: dict[str, Any],
) -> None:
    pump = await make_pump(client, admin, "hw-slow")
    # The device takes 1.5 s to answer the start: long enough to ask for a stop meanwhile.
    fault = await device.post("/faults", json={"hardware_id": "hw-slow", "latency_ms": 1500})
    fault.raise_for_status()
    admitted = await activate(client, admin, pump["id"], 5)
    assert admitted.status_code == 202, admitted.text
    activation_url = f"/v1/activations/{admitted.json()['id']}"
    starting = asyncio.create_task(jobs.start_activation(job_ctx, admitted.json()["id"]))

    async def is_starting() -> bool:
        return bool(
            (await client.get(activation_url, headers=admin)).json()["status"] == "starting"
        )

    await wait_for(is_starting, timeout_s=5)
    stopped = await client.post("/v1/pumps/stop-all", headers=admin)
    assert stopped.status_code == 200, stopped.text
    assert await starting == "stopped"

    activation = (await client.get(activation_url, headers=admin)).json()
    assert activation["status"] == "aborted"
    assert activation["stop_cause"] == "stop_all"
    (run,) = await runs(device, "hw-slow")
    assert run["stopped_by"] == "command"
