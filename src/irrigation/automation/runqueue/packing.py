"""Packing a water source's queue by fit, within one dispatch pass.

Requests come in priority order, then age. One that does not fit its source's flow budget
waits, and a request of the same priority behind it that fits may start ahead of it (a
bypass), but not:

- a request of lower priority: priorities stay absolute on a source (packing is by
  priority, then by fit);
- once the waiting one has been passed `IRRIGATION_RUNQUEUE_MAX_BYPASS` times: then it
  holds the source, and nothing behind it starts there until it has started;
- a run that could still be on at the waiting one's deadline (it would be passed past its
  deadline): at the latest it is over `IRRIGATION_MAX_QUEUE_DELAY_S` + its duration from
  now, since an admitted start that waited longer expires.

These are the pass's own bookkeeping, from an unlocked read; the start that passes a request
counts the bypass under the source's lock, and re-checks both bounds there
(`dispatch._try_start`), so concurrent dispatchers never pass a request more often."""

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from irrigation.automation.models import RunRequest


@dataclass
class Waiter:
    """A request that waits for its source's flow, as far as this pass knows it."""

    request: RunRequest
    pump_name: str
    bypasses: int


@dataclass(frozen=True)
class Behind:
    """Why a request may not start on its source now: a request ahead that it may not pass."""

    waiter: Waiter
    why: str  # held (passed the most times allowed), outranked, late (its deadline)

    def sentence(self, pump: str, source: str) -> str:
        ahead = f"{self.waiter.pump_name!r} (run request {self.waiter.request.id})"
        if self.why == "held":
            return (
                f"{pump} waits behind {ahead}, which waits for water source {source}'s flow "
                f"and has been passed {self.waiter.bypasses} times, the most allowed"
            )
        if self.why == "outranked":
            return (
                f"{pump} waits behind {ahead}, of higher priority, which waits for water "
                f"source {source}'s flow"
            )
        return (
            f"{pump} waits behind {ahead}, which waits for water source {source}'s flow: "
            "this run could still be on at its deadline"
        )

    def detail(self) -> dict[str, str | int]:
        return {
            "limit": "flow",
            "behind": str(self.waiter.request.id),
            "behind_bypass_count": self.waiter.bypasses,
        }


@dataclass
class _Source:
    waiting: list[Waiter] = field(default_factory=list)
    # The waiter that may not be passed any more: the source's queue waits for it.
    holder: Waiter | None = None

    @property
    def rank(self) -> int | None:
        return self.waiting[0].request.rank if self.waiting else None


class Packing:
    def __init__(self, max_bypass: int, start_delay_s: int) -> None:
        self.max_bypass = max_bypass
        self.start_delay = timedelta(seconds=start_delay_s)
        self.sources: dict[uuid.UUID, _Source] = {}

    def behind(self, source_id: uuid.UUID, request: RunRequest) -> Behind | None:
        """A request of the source ahead of this one that it may not pass, whatever it fits."""
        source = self.sources.get(source_id)
        if source is None:
            return None
        if source.holder is not None:
            return Behind(source.holder, "held")
        rank = source.rank
        if rank is not None and request.rank > rank:
            return Behind(source.waiting[0], "outranked")
        return None

    def too_late(self, source_id: uuid.UUID, request: RunRequest, now: datetime) -> Behind | None:
        """A waiter whose deadline comes before this run, started now, would surely be over."""
        over_by = self.ends_by(now, request.duration_s)
        for waiter in self.passing(source_id):
            if waiter.request.deadline <= over_by:
                return Behind(waiter, "late")
        return None

    def ends_by(self, now: datetime, duration_s: int) -> datetime:
        return now + self.start_delay + timedelta(seconds=duration_s)

    def passing(self, source_id: uuid.UUID) -> list[Waiter]:
        """The waiters a start on this source now would pass."""
        source = self.sources.get(source_id)
        return list(source.waiting) if source is not None else []

    def wait(self, source_id: uuid.UUID, waiter: Waiter) -> None:
        """`waiter` does not fit the source's flow: the requests behind may pass it, until
        it has been passed the most times allowed."""
        source = self.sources.setdefault(source_id, _Source())
        source.waiting.append(waiter)
        if waiter.bypasses >= self.max_bypass:
            source.holder = waiter

    def passed(self, source_id: uuid.UUID) -> None:
        """A run started ahead of every waiter of the source."""
        source = self.sources.get(source_id)
        if source is None:
            return
        for waiter in source.waiting:
            waiter.bypasses += 1
            if source.holder is None and waiter.bypasses >= self.max_bypass:
                source.holder = waiter
