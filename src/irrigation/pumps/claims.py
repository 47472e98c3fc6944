"""What one worker process's batches (pumps/starts.py, pumps/stops.py) have taken and not
yet recorded, so that a run's own job, begun meanwhile, does nothing.

A batch claims under the process's claim lock, so a job that arrives while a sibling job
of the same poll is claiming waits that moment, then finds its run taken and returns
`batched` at once, without a statement of its own and without holding one of arq's job
slots while the batch's commands are confirmed (a batch may take seconds: a confirmation
times out at `IRRIGATION_CONFIRM_TIMEOUT_S`, a stop retries). A job whose run is not
taken claims itself. The lock only orders claims within a process: across processes,
`SKIP LOCKED` does."""

import asyncio
import uuid
import weakref
from collections.abc import Iterable

# What the job of a run that a batch of its process took answers.
BATCHED = "batched"


class Claims:
    def __init__(self) -> None:
        self._taken: set[uuid.UUID] = set()
        # One lock per event loop (a test runs each test in a loop of its own).
        self._locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )

    def lock(self) -> asyncio.Lock:
        return self._locks.setdefault(asyncio.get_running_loop(), asyncio.Lock())

    def taken(self, act_id: uuid.UUID) -> bool:
        return act_id in self._taken

    def take(self, act_ids: Iterable[uuid.UUID]) -> None:
        self._taken.update(act_ids)

    def release(self, act_ids: Iterable[uuid.UUID]) -> None:
        """The batch has recorded these runs (or ended): their own jobs find them so."""
        self._taken.difference_update(act_ids)
