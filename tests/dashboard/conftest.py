"""The browser tests' stack: the pump tests' real API process and simulator (tests/pumps/
conftest.py), and a worker process of every queue."""

from tests.pumps.conftest import (
    api,
    api_url,
    device,
    driver,
    e2e_env,
    simulator,
    simulator_url,
    spawn,
)

__all__ = [
    "api",
    "api_url",
    "device",
    "driver",
    "e2e_env",
    "simulator",
    "simulator_url",
    "spawn",
]
