"""Real PostgreSQL and Redis for every test: the local servers when they answer, else
embedded ones. The schema is built once by the migrations into a template database;
each test gets its own copy (CREATE DATABASE ... TEMPLATE), so tests never share rows."""

import asyncio
import functools
import os
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis
from fastapi import FastAPI
from playwright.async_api import Browser

from irrigation.app import create_app
from irrigation.common import clock
from irrigation.db import create_engine, create_sessionmaker
from irrigation.migrate import upgrade
from irrigation.settings import Settings
from irrigation.stack import Stack, plain_url, resolve_stack, with_database
from tests.support import factories
from tests.support.api import bearer
from tests.support.browser import browser
from tests.support.factories import MakeKey
from tests.support.mqtt import Broker, running_broker
from tests.support.processes import free_port

ROOT = Path(__file__).resolve().parents[1]
# One template per pytest process: concurrent runs on one server never drop each other's.
TEMPLATE = f"irrigation_test_template_{os.getpid()}"
REDIS_TEST_DB = 13
SERVERS_USED: list[str] = []


# Under pytest-xdist, "gw0", "gw1", ...: each worker its own embedded servers (a data
# directory holds one PostgreSQL only). Unset in a plain run and on xdist's controller.
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
# The controller runs no test, so it learns the servers from its workers (`workeroutput`).
_SERVERS_KEY = "irrigation_servers"


def pytest_sessionfinish(session: pytest.Session) -> None:
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput[_SERVERS_KEY] = list(SERVERS_USED)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: object, error: object) -> None:
    """xdist's controller: a finished worker's servers, each line once."""
    del error
    for line in getattr(node, "workeroutput", {}).get(_SERVERS_KEY, []):
        if line not in SERVERS_USED:
            SERVERS_USED.append(line)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say which servers the run judged the code against (CI runs two)."""
    for line in SERVERS_USED:
        terminalreporter.write_line(f"servers: {line}")


def _in_thread(fn: Callable[[], object]) -> None:
    """Alembic's env.py calls asyncio.run(), which cannot nest in pytest-asyncio's loop."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    holder: list[Stack] = []
    _in_thread(
        lambda: holder.append(
            resolve_stack(
                os.environ.get("IRRIGATION_TEST_DATABASE_URL"),
                os.environ.get("IRRIGATION_TEST_REDIS_URL"),
                ROOT / ".data" / (f"test-{WORKER}" if WORKER else "test"),
                "postgres",
                # `always`: the embedded servers a machine without PostgreSQL/Redis gets.
                embedded=os.environ.get("IRRIGATION_EMBEDDED", "auto"),
            )
        )
    )
    yield holder[0]
    holder[0].stop()


@pytest.fixture(scope="session")
def redis_url(stack: Stack) -> str:
    url = stack.redis_url
    if url.startswith("unix://"):
        return f"{url}?db={REDIS_TEST_DB}"
    return url.rsplit("/", 1)[0] + f"/{REDIS_TEST_DB}"


async def _admin(stack: Stack) -> asyncpg.Connection:
    return await asyncpg.connect(plain_url(stack.database_url))


@pytest.fixture(scope="session")
async def template_url(stack: Stack) -> AsyncIterator[str]:
    conn = await _admin(stack)
    try:
        version = await conn.fetchval("SHOW server_version")
        where = "embedded " + " and ".join(stack.embedded) if stack.embedded else "local servers"
        SERVERS_USED.append(f"PostgreSQL {version}, {where}")
        await conn.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{TEMPLATE}"')
    finally:
        await conn.close()
    url = with_database(stack.database_url, TEMPLATE)
    await asyncio.to_thread(_in_thread, lambda: upgrade(Settings(database_url=url)))
    yield url
    conn = await _admin(stack)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture
async def database_url(stack: Stack, template_url: str) -> AsyncIterator[str]:
    name = f"irrigation_test_{uuid.uuid4().hex[:12]}"
    conn = await _admin(stack)
    try:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE}"')
    finally:
        await conn.close()
    yield with_database(stack.database_url, name)
    conn = await _admin(stack)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture
def redis_namespace() -> str:
    """Each test its own Redis namespace (queue, cache keys): test runs may share a Redis."""
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def redis(redis_url: str, redis_namespace: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    async for key in client.scan_iter(f"{redis_namespace}:*"):
        await client.delete(key)
    await client.aclose()


@pytest.fixture
def settings(
    database_url: str,
    redis_url: str,
    redis_namespace: str,
    redis: aioredis.Redis,
    tmp_path: Path,
) -> Settings:
    del redis  # requested for its clean-up
    return Settings(
        database_url=database_url,
        # The test's own, not the checkout's `.data`: tests on parallel workers (and the
        # processes they start) never see each other's uploads, metrics or stack file.
        data_dir=str(tmp_path / "data"),
        redis_url=redis_url,
        redis_namespace=redis_namespace,
        # Off, so a revocation by another process (the CLI) shows at once; the cache has
        # its own test (tests/auth/test_key_cache.py).
        auth_cache_ttl_s=0,
        min_cooldown_s=1,
        max_runtime_cap_s=30,
        log_level="WARNING",
    )


@pytest.fixture(autouse=True)
def _reset_clock() -> Iterator[None]:
    yield
    clock.reset()


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    yield application
    await application.state.redis.aclose()
    await application.state.engine.dispose()


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


@pytest.fixture
async def make_key(settings: Settings) -> AsyncIterator[MakeKey]:
    """`await make_key("admin", site="farm-a")`: a real key, created as the CLI does."""
    engine = create_engine(settings)
    yield functools.partial(factories.make_key, create_sessionmaker(engine))
    await engine.dispose()


@pytest.fixture
async def admin(make_key: MakeKey) -> dict[str, str]:
    """Headers of an admin key of site A."""
    return bearer(await make_key("admin"))


@pytest.fixture
async def other_admin(make_key: MakeKey) -> dict[str, str]:
    """Headers of an admin key of site B."""
    return bearer(await make_key("admin", site="site-b"))


@pytest.fixture
def stack_postgres_url(stack: Stack) -> str:
    """The server's maintenance database: reachable, but never migrated."""
    return stack.database_url


@pytest.fixture(scope="session")
def mqtt_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """The session's broker: Mosquitto from the project's configuration on a free port (the
    embedded broker where there is no Mosquitto), never the machine's own. A test that
    restarts or kills its broker starts one of its own (`running_broker`)."""
    with running_broker(tmp_path_factory.mktemp("mqtt")) as broker:
        SERVERS_USED.append(f"MQTT {broker.kind} at {broker.url}")
        yield broker


@pytest.fixture
def mqtt_settings(settings: Settings, mqtt_broker: Broker) -> Settings:
    """The test's settings on the session's broker, with a topic root and client ids of the
    test's own: no other test's messages, no other test's persistent sessions."""
    tag = uuid.uuid4().hex[:10]
    return settings.model_copy(
        update={
            "mqtt_url": mqtt_broker.url,
            "mqtt_topic_root": f"test-{tag}",
            "mqtt_client_id_prefix": f"test-{tag}",
            "mqtt_instance": "1",
            "mqtt_bridge_port": free_port(),
        }
    )


@pytest.fixture(scope="session")
async def chromium() -> AsyncIterator[Browser]:
    """One Chromium for the session, launched by the first test that needs it (a launch
    takes seconds); each test opens its pages in a context of its own
    (`tests.support.browser.offline_page`)."""
    async with browser() as launched:
        yield launched
