"""A real device simulator served by uvicorn for the whole session, reset for every test:
its devices answer over HTTP and, on the session's broker, over MQTT."""

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import httpx
import pytest
import redis.asyncio as aioredis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from irrigation import feed, queue
from irrigation.common.worker_context import WorkerContext
from irrigation.db import create_engine, create_sessionmaker
from irrigation.gateway import HttpGateway
from irrigation.settings import Settings
from irrigation.simulator.app import MqttOptions, create_simulator_app
from tests.support.mqtt import Broker
from tests.support.processes import StartProcess, free_port, settings_env, spawner, wait_http
from tests.support.servers import serve


@dataclass(frozen=True)
class Simulator:
    url: str
    mqtt_url: str
    mqtt_root: str


@pytest.fixture(scope="session")
async def simulator(mqtt_broker: Broker) -> AsyncIterator[Simulator]:
    root = f"devices-{uuid.uuid4().hex[:8]}"
    app = create_simulator_app(MqttOptions(mqtt_broker.url, root, f"{root}-simulator"))
    async with serve(app, lifespan="on") as url:
        await asyncio.wait_for(app.state.mqtt.connected.wait(), 15)
        yield Simulator(url, mqtt_broker.url, root)


@pytest.fixture(scope="session")
def simulator_url(simulator: Simulator) -> str:
    return simulator.url


@pytest.fixture
def driver() -> str:
    """The worker's gateway in the end-to-end tests (a module may run both: `params`)."""
    return "http"


@pytest.fixture
async def device(simulator_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the simulator, whose truth, sequences and faults start empty."""
    async with httpx.AsyncClient(base_url=simulator_url, timeout=5) as client:
        (await client.delete("/truth")).raise_for_status()
        yield client


# The worker's jobs in-process: called as arq calls them, against the real simulator ------

Sessions = async_sessionmaker[AsyncSession]


@pytest.fixture
async def sessions(settings: Settings, redis: aioredis.Redis) -> AsyncIterator[Sessions]:
    """The worker's sessions: what their transactions emit reaches the site's live feed."""
    engine = create_engine(settings)
    yield create_sessionmaker(engine, feed.create_publisher(settings, redis))
    await engine.dispose()


@pytest.fixture
async def job_ctx(
    settings: Settings, sessions: Sessions, simulator_url: str, device: httpx.AsyncClient
) -> AsyncIterator[dict[str, WorkerContext]]:
    """What the worker hands its jobs: this test's database and Redis namespace, and a
    gateway to the (reset) simulator with the end-to-end tests' short timeouts."""
    del device  # requested for its reset of the simulator
    gateway = HttpGateway(simulator_url, timeout_s=0.5, retries=2)
    redis = queue.create_redis(settings.effective_redis_url, 1.0, settings.queue_name)
    yield {"irrigation": WorkerContext(settings, sessions, gateway, redis)}
    await gateway.aclose()
    await redis.aclose()


# End-to-end: a real uvicorn API and real arq workers in their own processes --------------

# Short limits so the suite exercises retries, cooldowns and the watchdog in seconds.
E2E_ENV = {
    "IRRIGATION_MIN_COOLDOWN_S": "1",
    "IRRIGATION_GATEWAY_TIMEOUT_S": "0.5",
    "IRRIGATION_GATEWAY_RETRIES": "2",
    "IRRIGATION_WATCHDOG_GRACE_S": "1",
    "IRRIGATION_OUTBOX_RELAY_AFTER_S": "1",
    # Herds of hundreds of activation requests test the locks, not the rate limits.
    "IRRIGATION_RATE_LIMIT_CONTROL": "100000/minute",
    "IRRIGATION_LOG_LEVEL": os.environ.get("IRRIGATION_TEST_LOG_LEVEL", "WARNING"),
}


@pytest.fixture
def e2e_env(
    settings: Settings, simulator: Simulator, driver: str, device: httpx.AsyncClient
) -> dict[str, str]:
    del device  # requested for its reset of the simulator
    return {
        **settings_env(settings),
        **E2E_ENV,
        "IRRIGATION_GATEWAY": driver,
        "IRRIGATION_GATEWAY_URL": simulator.url,
        "IRRIGATION_MQTT_URL": simulator.mqtt_url,
        "IRRIGATION_MQTT_TOPIC_ROOT": simulator.mqtt_root,
        "IRRIGATION_MQTT_CLIENT_ID_PREFIX": f"test-{uuid.uuid4().hex[:8]}",
    }


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
