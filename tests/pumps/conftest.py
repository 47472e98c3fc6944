"""A real device simulator served by uvicorn for the whole session, reset for every test."""

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
import uvicorn

from irrigation.pumps.simulator import create_simulator_app


@pytest.fixture(scope="session")
async def simulator_url() -> AsyncIterator[str]:
    config = uvicorn.Config(
        create_simulator_app(),
        host="127.0.0.1",
        port=0,
        log_level="warning",
        # A test that leaves a hanging request behind must not stall the end of the session.
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    while not server.started:
        if serving.done():
            serving.result()  # surfaces why the server could not start
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await serving


@pytest.fixture
async def device(simulator_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the simulator, whose truth, sequences and faults start empty."""
    async with httpx.AsyncClient(base_url=simulator_url, timeout=5) as client:
        (await client.delete("/truth")).raise_for_status()
        yield client
