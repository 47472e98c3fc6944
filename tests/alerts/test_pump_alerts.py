"""Pump fault and gateway failure alerts, from a real failed start: the worker's start job
against a gateway that does not answer latches the pump in fault and fails the run."""

from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from irrigation import queue
from irrigation.common import clock
from irrigation.common.worker_context import WorkerContext
from irrigation.gateway import HttpGateway
from irrigation.pumps import jobs
from irrigation.settings import Settings
from tests.alerts.helpers import evaluate, open_alerts
from tests.support.api import Headers
from tests.support.factories import activate, make_pump
from tests.support.processes import free_port

Sessions = async_sessionmaker[AsyncSession]


@pytest.fixture
async def dead_gateway_ctx(
    settings: Settings, sessions: Sessions
) -> AsyncIterator[dict[str, WorkerContext]]:
    gateway = HttpGateway(f"http://127.0.0.1:{free_port()}", timeout_s=0.2, retries=0)
    redis = queue.create_redis(settings.effective_redis_url, 1.0, settings.queue_name)
    yield {
        "irrigation": WorkerContext(
            settings=settings, sessions=sessions, gateway=gateway, redis=redis
        )
    }
    await gateway.aclose()
    await redis.aclose()


async def fail_a_start(
    client: httpx.AsyncClient, admin: Headers, ctx: dict[str, WorkerContext], pump_id: str
) -> None:
    accepted = await activate(client, admin, pump_id, 5)
    assert accepted.status_code == 202, accepted.text
    assert await jobs.start_activation(ctx, accepted.json()["id"]) == "failed"


async def test_a_failed_start_raises_pump_fault_and_gateway_failure_which_clear_separately(
    client: httpx.AsyncClient,
    admin: Headers,
    sessions: Sessions,
    settings: Settings,
    dead_gateway_ctx: dict[str, WorkerContext],
) -> None:
    pump = await make_pump(client, admin, "hw-main", name="Main")
    await fail_a_start(client, admin, dead_gateway_ctx, pump["id"])

    assert len((await evaluate(sessions, settings)).raised) == 2
    assert (await evaluate(sessions, settings)).raised == []
    (fault,) = await open_alerts(client, admin, "pump_fault")
    (gateway,) = await open_alerts(client, admin, "gateway_failure")
    assert (fault["severity"], fault["subject_type"]) == ("critical", "pump")
    assert fault["subject_id"] == pump["id"]
    assert fault["message"].startswith("Pump 'Main' is in fault: gateway: ")
    assert (gateway["severity"], gateway["subject_type"]) == ("critical", "site")
    assert gateway["subject_id"] == gateway["site_id"]
    assert gateway["message"].startswith(
        "1 pump activation failed at the gateway in the last 10 minutes (latest: pump 'Main': "
    )
    assert gateway["detail"]["failures"] == 1

    reset = await client.post(f"/v1/pumps/{pump['id']}/reset", headers=admin)
    assert reset.status_code == 200, reset.text
    assert [str(i) for i in (await evaluate(sessions, settings)).cleared] == [fault["id"]]
    assert await open_alerts(client, admin, "gateway_failure")  # still inside its window

    clock.move(timedelta(minutes=11))
    assert [str(i) for i in (await evaluate(sessions, settings)).cleared] == [gateway["id"]]


async def test_gateway_failure_counts_every_failure_of_the_site_in_its_window(
    client: httpx.AsyncClient,
    admin: Headers,
    sessions: Sessions,
    settings: Settings,
    dead_gateway_ctx: dict[str, WorkerContext],
) -> None:
    for name in ("East", "West"):
        pump = await make_pump(client, admin, f"hw-{name}", name=name)
        await fail_a_start(client, admin, dead_gateway_ctx, pump["id"])

    await evaluate(sessions, settings)

    (gateway,) = await open_alerts(client, admin, "gateway_failure")
    assert gateway["detail"]["failures"] == 2
    assert gateway["message"].startswith("2 pump activations failed at the gateway")
    assert len(await open_alerts(client, admin, "pump_fault")) == 2
