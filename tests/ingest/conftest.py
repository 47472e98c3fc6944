"""Ingestion fixtures: a data directory per test, and real worker and API processes that
share it (an upload written by the API is read by the worker)."""

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from irrigation.app import create_app
from irrigation.settings import Settings
from tests.support.processes import StartProcess, settings_env, spawner


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    """The suite's settings with this test's own data directory (import uploads)."""
    return settings.model_copy(update={"data_dir": str(tmp_path / "data")})


@pytest.fixture
def spawn(settings: Settings) -> Iterator[StartProcess]:
    """`spawn("worker")`, `spawn("serve", "--port", "8123")`: killed at teardown."""
    with spawner(settings_env(settings)) as start:
        yield start


@pytest.fixture
async def small_limit_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The in-process API with a 4 KiB upload limit, for the 413s."""
    application = create_app(settings.model_copy(update={"max_upload_bytes": 4096}))
    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c
    await application.state.redis.aclose()
    await application.state.engine.dispose()
