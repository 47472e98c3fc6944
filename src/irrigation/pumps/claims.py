"""What one worker process's batches (pumps/starts.py, pumps/stops.py) have taken: each
run's outcome to come, for the run's own job if it begins meanwhile.

A batch claims under the process's claim lock, so a job that arrives while a sibling job
of the same poll is claiming waits that moment, then finds its run taken and awaits the
outcome without a statement of its own; a job whose run is not taken claims itself. The
lock only orders claims within a process: across processes, `SKIP LOCKED` does."""

import asyncio
import uuid
import weakref
from collections.abc import Iterable, Mapping


class Claims:
    def __init__(self) -> None:
        self._outcomes: dict[uuid.UUID, asyncio.Future[str]] = {}
        # One lock per event loop (a test runs each test in a loop of its own).
        self._locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )

    def lock(self) -> asyncio.Lock:
        return self._locks.setdefault(asyncio.get_running_loop(), asyncio.Lock())

    def taken(self, act_id: uuid.UUID) -> asyncio.Future[str] | None:
        return self._outcomes.get(act_id)

    def take(self, act_ids: Iterable[uuid.UUID]) -> None:
        loop = asyncio.get_running_loop()
        for act_id in act_ids:
            self._outcomes[act_id] = loop.create_future()

    def settle(self, act_ids: Iterable[uuid.UUID], outcomes: Mapping[uuid.UUID, str]) -> None:
        """Each run's outcome to whoever awaits it (`interrupted`: the batch ended first)."""
        for act_id in act_ids:
            waiter = self._outcomes.pop(act_id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(outcomes.get(act_id, "interrupted"))


async def outcome(waiter: asyncio.Future[str]) -> str:
    # Shielded: the waiting job's cancellation must not cancel the batch's answer.
    return await asyncio.shield(waiter)
