"""Several API workers: a batch answered while another is in flight in the same worker
closes its connection, so that the client's next one can land on a free worker."""

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import psutil
import pytest
from fastapi import FastAPI

from irrigation.app import create_app
from irrigation.common.balance import WorkerLoad
from irrigation.settings import Settings
from tests.support.api import bearer
from tests.support.factories import MakeKey, make_sensor
from tests.support.processes import StartProcess, free_port, wait_http


def test_only_a_worker_with_siblings_and_another_batch_in_flight_is_crowded() -> None:
    alone, shared = WorkerLoad(1), WorkerLoad(2)
    with alone.batch(), alone.batch():
        assert not alone.crowded()
    with shared.batch():
        assert not shared.crowded()
        with shared.batch():
            assert shared.crowded()
        assert not shared.crowded()
    assert shared.in_flight == 0


@pytest.fixture(params=[1, 2], ids=["one worker", "two workers"])
async def app(request: pytest.FixtureRequest, settings: Settings) -> AsyncIterator[FastAPI]:
    """The app as one of `request.param` worker processes."""
    application = create_app(settings.model_copy(update={"web_concurrency": request.param}))
    yield application
    await application.state.redis.aclose()
    await application.state.engine.dispose()


async def test_of_two_batches_in_flight_the_first_answered_closes_its_connection(
    app: FastAPI, client: httpx.AsyncClient, make_key: MakeKey, database_url: str
) -> None:
    load: WorkerLoad = app.state.worker_load
    headers = bearer(await make_key("admin"))
    sensor = (await make_sensor(client, headers, kind="soil_moisture", unit="%"))["id"]
    start = datetime.now(UTC) - timedelta(hours=1)

    def post(first: int) -> "asyncio.Task[httpx.Response]":
        items = [
            {"sensor_id": sensor, "ts": (start + timedelta(seconds=s)).isoformat(), "value": 30}
            for s in range(first, first + 500)
        ]
        body = {"readings": items}
        return asyncio.ensure_future(client.post("/v1/readings", json=body, headers=headers))

    lone = await post(0)
    assert lone.status_code == 200
    assert "connection" not in lone.headers

    # Both batches wait on the sensor's row (their last_seen_at update) until it is let go.
    holder = await asyncpg.connect(database_url)
    try:
        async with holder.transaction():
            await holder.execute(
                "SELECT 1 FROM sensors WHERE id = $1 FOR UPDATE", uuid.UUID(sensor)
            )
            batches = [post(500), post(1000)]
            async with asyncio.timeout(1.5):  # within the lock timeout (2 s)
                while load.in_flight < 2:  # noqa: ASYNC110 (the app's counter, no event)
                    await asyncio.sleep(0.01)
        answers = await asyncio.gather(*batches)
    finally:
        await holder.close()
    assert [a.status_code for a in answers] == [200, 200]
    assert sum(a.json()["inserted"] for a in answers) == 1000
    closed = sorted(a.headers.get("connection") == "close" for a in answers)
    # The first answered had the other batch in flight, the second none; one worker alone
    # has nowhere else to send a client.
    assert closed == ([False, True] if load.workers > 1 else [False, False])
    assert load.in_flight == 0


HEALTHZ_SERIES = 'irrigation_http_requests_total{method="GET",route="/healthz",status="200"}'


async def _healthz_count(client: httpx.AsyncClient) -> float:
    text = (await client.get("/metrics")).text
    line = next(
        (row for row in text.splitlines() if row.startswith(HEALTHZ_SERIES)),
        f"{HEALTHZ_SERIES} 0",
    )
    return float(line.rsplit(" ", 1)[1])


@pytest.mark.slow
async def test_every_served_worker_counts_into_the_metrics_any_of_them_answers(
    spawn: StartProcess,
) -> None:
    port = free_port()
    server = spawn("serve", "--port", str(port), "--workers", "2")
    url = f"http://127.0.0.1:{port}"
    await wait_http(f"{url}/healthz", proc=server)
    children = psutil.Process(server.proc.pid).children(recursive=True)
    workers = [c for c in children if "spawn_main" in " ".join(c.cmdline())]
    assert len(workers) == 2
    # A new connection per request: a stopped worker accepts none, so each worker in turn
    # answers ten while the other is stopped.
    fresh = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, limits=fresh, timeout=5) as client:
        before = await _healthz_count(client)
        for stopped in workers:
            stopped.suspend()
            try:
                for _ in range(10):
                    assert (await client.get("/healthz")).status_code == 200
            finally:
                stopped.resume()
        # Whichever worker answers a scrape, it reports both workers' requests.
        assert [await _healthz_count(client) for _ in range(6)] == [before + 20] * 6
