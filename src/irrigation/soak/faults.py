"""Applying the planned faults to the running stack, each at its moment, and lifting
those that hold (a device fault, a killed or paused worker, Redis or the broker down)
when their time is up, or all at once at the end. Every fault is recorded with when it
held. One injector per fault schedule; several may share a stack."""

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx

from irrigation.soak.fleet import Fleet
from irrigation.soak.history import FaultEvent
from irrigation.soak.plan import FaultPlan
from irrigation.soak.processes import SoakStack

Record = Callable[[FaultEvent], None]

# Every backend the service's processes hold on the soak's database (the engine names
# them), killed mid-transaction or idle alike.
TERMINATE = """
SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))
FROM pg_stat_activity
WHERE datname = $1 AND application_name = 'irrigation' AND pid <> pg_backend_pid()
"""


class Injector:
    def __init__(
        self,
        stack: SoakStack,
        simulator: httpx.AsyncClient,
        fleet: Fleet,
        admin_dsn: str,
        database: str,
        record: Record,
    ) -> None:
        self.stack = stack
        self.simulator = simulator
        self.fleet = fleet
        self.admin_dsn = admin_dsn
        self.database = database
        self.record = record
        self.holding: set[asyncio.Task[None]] = set()

    async def run(self, faults: list[FaultPlan], started: float) -> None:
        """Apply `faults` at their moments after `started`; returns once all are applied
        (some may still hold)."""
        for fault in faults:
            delay = started + fault.at_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(self._apply(fault))
            self.holding.add(task)
            task.add_done_callback(self.holding.discard)

    async def lift(self) -> None:
        """The end of this schedule's faults: every hold cut short (and recorded), its
        device faults cleared, paused workers resumed. The runner then gets the stack
        whole again (SoakStack.release_workers, ensure_up)."""
        for task in list(self.holding):
            task.cancel()
        await asyncio.gather(*self.holding, return_exceptions=True)

    async def _apply(self, fault: FaultPlan) -> None:
        applied = _Applied(datetime.now(UTC), dict(fault.params))
        try:
            await self._act(fault, applied)
        except asyncio.CancelledError:
            applied.note("lifted at the end")
            raise
        except Exception as exc:  # a fault that could not be applied is recorded, not fatal
            applied.note(f"failed: {type(exc).__name__}: {exc}"[:300])
        finally:
            # Instantaneous faults (a connection kill) hold for no time.
            until = datetime.now(UTC) if fault.hold_s is not None else None
            self.record(
                FaultEvent(
                    id=fault.id,
                    action=fault.action,
                    target=fault.target,
                    params=applied.params,
                    at=applied.at,
                    until=until,
                    outcome="; ".join(applied.outcome),
                )
            )

    async def _act(self, fault: FaultPlan, applied: "_Applied") -> None:
        hold_s = fault.hold_s or 0.0
        if fault.action == "device_fault":
            await self._device_fault(fault, applied)
        elif fault.action == "worker_kill":
            assert fault.target is not None
            killed = self.stack.kill_worker(fault.target, hold_s)
            applied.note("killed (SIGKILL)" if killed else "not running")
            await asyncio.sleep(hold_s)
            # The stack's supervisor starts it again from now on.
        elif fault.action == "worker_pause":
            assert fault.target is not None
            paused = self.stack.pause_worker(fault.target)
            if paused is None:
                applied.note("not running, or another worker is paused: skipped")
                return
            applied.note("stopped (SIGSTOP)")
            try:
                await asyncio.sleep(hold_s)
            finally:
                if paused.poll() is None:
                    paused.send_signal(signal.SIGCONT)
                    applied.note("resumed (SIGCONT)")
                self.stack.resumed(fault.target)
        elif fault.action == "redis_restart":
            applied.note(await self.stack.restart_redis(hold_s))
        elif fault.action == "broker_restart":
            applied.note(await self.stack.restart_broker(hold_s))
        elif fault.action == "pg_kill":
            applied.note(f"{await self._terminate_backends()} backends terminated")
        else:
            applied.note(f"unknown fault {fault.action!r}: skipped")

    async def _device_fault(self, fault: FaultPlan, applied: "_Applied") -> None:
        assert fault.target is not None
        site, pump = (int(i) for i in fault.target.split(":"))
        device = self.fleet.pump(site, pump)
        # `site_id` for a simulator that addresses devices by site; an older one ignores it.
        where = {"hardware_id": device.hardware_id, "site_id": device.site_id}
        applied.params = {**where, **fault.params}
        response = await self.simulator.post("/faults", json=applied.params)
        response.raise_for_status()
        echoed = response.json()
        unsupported = [k for k in fault.params if k != "seed" and k not in echoed]
        applied.note(f"not supported by this simulator: {unsupported}" if unsupported else "set")
        try:
            await asyncio.sleep(fault.hold_s or 0.0)
        finally:
            # This device's fault replaced by none; the other devices keep theirs.
            with contextlib.suppress(httpx.HTTPError):
                await self.simulator.post("/faults", json=where)
                applied.note("cleared")

    async def _terminate_backends(self) -> int:
        conn = await asyncpg.connect(self.admin_dsn, timeout=5)
        try:
            killed: int = await conn.fetchval(TERMINATE, self.database)
        finally:
            await conn.close()
        return killed


@dataclass
class _Applied:
    """What became of one fault, noted as it happens (a hold may be cut short)."""

    at: datetime
    params: dict[str, Any]
    outcome: list[str] = field(default_factory=list)

    def note(self, what: str) -> None:
        self.outcome.append(what)
