"""Waiting for a condition instead of sleeping a fixed time: fast when the machine is idle,
patient when it is loaded, and a clear failure when the condition never comes."""

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any


async def wait_for(
    check: Callable[[], Awaitable[Any]], timeout_s: float = 15, interval_s: float = 0.1
) -> Any:
    """Awaits `check()` until it returns something truthy, and returns that; fails the test
    with the last result once `timeout_s` has passed."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s (last: {result!r})")
        await asyncio.sleep(interval_s)
