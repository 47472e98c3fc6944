"""Ingestion fixtures: a data directory per test, and real worker and API processes that
share it (an upload written by the API is read by the worker)."""

from collections.abc import Iterator
from pathlib import Path

import pytest

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
