"""Real servers inside the test process: an ASGI app on uvicorn, on a free port."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import asyncpg
import uvicorn

from irrigation.stack import plain_url


@asynccontextmanager
async def serve(app: Any, *, lifespan: Literal["on", "off"] = "off") -> AsyncIterator[str]:
    """Serve `app` on 127.0.0.1 and a free port; yields its base URL. `lifespan="on"` for an
    app whose shutdown cleans up (the simulator cancels its auto-off timers)."""
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=0,
            log_level="warning",
            lifespan=lifespan,
            # Said, not guessed: uvicorn takes a bound method (a recorder's handler) for
            # ASGI 2 otherwise.
            interface="asgi3",
            # A test that leaves a hanging request behind must not stall its teardown.
            timeout_graceful_shutdown=1,
        )
    )
    serving = asyncio.create_task(server.serve())
    while not server.started:
        if serving.done():
            serving.result()  # surfaces why the server could not start
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await serving


async def run_sql(database_url: str, query: str, *args: object) -> None:
    """One statement on a connection of its own, outside the service: what an operator's
    psql, or another process, does to the rows under test."""
    conn = await asyncpg.connect(plain_url(database_url))
    try:
        await conn.execute(query, *args)
    finally:
        await conn.close()
