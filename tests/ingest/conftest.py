"""Ingestion fixtures: a data directory per test, and real worker and API processes that
share it (an upload written by the API is read by the worker)."""

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from irrigation.settings import Settings
from tests.processes import Process

StartProcess = Callable[..., Process]


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    """The suite's settings with this test's own data directory (import uploads)."""
    return settings.model_copy(update={"data_dir": str(tmp_path / "data")})


@pytest.fixture
def process_env(settings: Settings) -> dict[str, str]:
    return {
        "IRRIGATION_DATABASE_URL": settings.effective_database_url,
        "IRRIGATION_REDIS_URL": settings.effective_redis_url,
        "IRRIGATION_REDIS_NAMESPACE": settings.redis_namespace,
        "IRRIGATION_DATA_DIR": settings.data_dir,
        "IRRIGATION_LOG_LEVEL": os.environ.get("IRRIGATION_TEST_LOG_LEVEL", "WARNING"),
    }


@pytest.fixture
def spawn(process_env: dict[str, str]) -> Iterator[StartProcess]:
    """`spawn("worker")`, `spawn("serve", "--port", "8123")`: killed at teardown."""
    started: list[Process] = []

    def start(*args: str, **env: str) -> Process:
        proc = Process(list(args), {**process_env, **env})
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()
        if os.environ.get("IRRIGATION_TEST_SHOW_LOGS"):
            print(f"--- {proc.args}\n{proc.output()}")
