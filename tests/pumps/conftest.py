"""A real device simulator served by uvicorn for the whole session, reset for every test."""

import os
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from irrigation.settings import Settings
from irrigation.simulator.app import create_simulator_app
from tests.support.processes import StartProcess, free_port, settings_env, spawner, wait_http
from tests.support.servers import serve


@pytest.fixture(scope="session")
async def simulator_url() -> AsyncIterator[str]:
    async with serve(create_simulator_app(), lifespan="on") as url:
        yield url


@pytest.fixture
async def device(simulator_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the simulator, whose truth, sequences and faults start empty."""
    async with httpx.AsyncClient(base_url=simulator_url, timeout=5) as client:
        (await client.delete("/truth")).raise_for_status()
        yield client


# End-to-end: a real uvicorn API and real arq workers in their own processes --------------

# Short limits so the suite exercises retries, cooldowns and the watchdog in seconds.
E2E_ENV = {
    "IRRIGATION_MIN_COOLDOWN_S": "1",
    "IRRIGATION_GATEWAY_TIMEOUT_S": "0.5",
    "IRRIGATION_GATEWAY_RETRIES": "2",
    "IRRIGATION_WATCHDOG_GRACE_S": "1",
    "IRRIGATION_OUTBOX_RELAY_AFTER_S": "1",
    "IRRIGATION_LOG_LEVEL": os.environ.get("IRRIGATION_TEST_LOG_LEVEL", "WARNING"),
}


@pytest.fixture
def e2e_env(settings: Settings, simulator_url: str, device: httpx.AsyncClient) -> dict[str, str]:
    del device  # requested for its reset of the simulator
    return {**settings_env(settings), **E2E_ENV, "IRRIGATION_GATEWAY_URL": simulator_url}


@pytest.fixture
def spawn(e2e_env: dict[str, str]) -> Iterator[StartProcess]:
    """`spawn("worker")`, `spawn("serve", "--port", "8123", IRRIGATION_X="1")`."""
    with spawner(e2e_env) as start:
        yield start


@pytest.fixture
async def api_url(spawn: StartProcess) -> str:
    port = free_port()
    proc = spawn("serve", "--port", str(port))
    url = f"http://127.0.0.1:{port}"
    await wait_http(f"{url}/healthz", proc=proc)
    return url


@pytest.fixture
async def api(api_url: str, admin: dict[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the real uvicorn server, authenticated as site A's admin."""
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=100)
    async with httpx.AsyncClient(base_url=api_url, headers=admin, timeout=30, limits=limits) as c:
        yield c
