"""The event loop of our long-running processes of our own (the workers, the MQTT readings
bridge, the demo feeder): uvloop where it is installed, as uvicorn's `auto` gives the API
and the simulator; asyncio's own loop where it is not (Windows, where uvloop does not
build). uvloop's transports write and poll in C: asyncio's `_SelectorSocketTransport.write`
was a quarter of the `pumps` worker's CPU (docs/benchmarks.md)."""

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)`, on uvloop when there is one."""
    try:
        import uvloop
    except ImportError:  # no uvloop on this platform: the standard loop does the same work
        return asyncio.run(main)
    return uvloop.run(main)
