"""Worker side of activations: start, stop, the watchdog and the outbox relay.

Every job re-reads state under the row locks and does nothing if the state says it already
happened, so arq's at-least-once delivery never means a second start. No network call is
awaited while a row lock is held."""

import contextlib
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from irrigation import queue
from irrigation.common.clock import db_now_expr
from irrigation.common.worker_context import WorkerContext, worker_context
from irrigation.fleet.models import Pump
from irrigation.gateway import AckResult, Command, DeviceAddress, GatewayError
from irrigation.pumps.models import ActivationEvent, ActivationStatus, OutboxJob, PumpActivation
from irrigation.pumps.service import lock_activation, lock_pump

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class _Send:
    """A command decided under the row locks, sent after they are released."""

    device: DeviceAddress
    command: Command


def _device(pump: Pump) -> DeviceAddress:
    return DeviceAddress.of(pump.site_id, pump.hardware_id)


def _next_sequence(pump: Pump) -> int:
    """A fresh fencing number, above every command this pump has sent (the row is locked)."""
    pump.last_sequence += 1
    return pump.last_sequence


async def _lock(
    session: AsyncSession, activation_id: uuid.UUID
) -> tuple[Pump, PumpActivation, datetime] | None:
    """Pump then activation (the fixed lock order), both fresh, with the database clock."""
    pump_id = (
        await session.execute(
            select(PumpActivation.pump_id).where(PumpActivation.id == activation_id)
        )
    ).scalar_one_or_none()
    if pump_id is None:
        return None
    pump, now = await lock_pump(session, pump_id)
    return pump, await lock_activation(session, activation_id), now


def _transition(
    session: AsyncSession,
    activation: PumpActivation,
    status: ActivationStatus,
    at: datetime,
    cause: str,
    **detail: object,
) -> None:
    activation.status = status
    session.add(
        ActivationEvent(
            activation_id=activation.id, at=at, status=status, cause=cause, detail=detail or None
        )
    )


def _release(pump: Pump, activation: PumpActivation) -> None:
    if pump.active_activation_id == activation.id:
        pump.active_activation_id = None


async def start_activation(ctx: dict[str, Any], activation_id: str) -> str:
    """queued -> starting -> (device start) -> running; anything else is a no-op."""
    jc = worker_context(ctx)
    act_id = uuid.UUID(activation_id)
    async with jc.sessions() as session:
        async with session.begin():
            locked = await _lock(session, act_id)
            if locked is None:
                return "missing"
            pump, activation, now = locked
            await session.execute(delete(OutboxJob).where(OutboxJob.activation_id == act_id))
            if activation.status != ActivationStatus.queued:
                return f"skipped: {activation.status}"
            if now > activation.start_deadline:
                # Run late is worse than not at all: the grower asked for water *then*.
                _transition(session, activation, ActivationStatus.expired, now, "queue_delay")
                activation.stopped_at = now
                _release(pump, activation)
                return "expired"
            # Capped again here: config may have changed since the request was admitted.
            duration = min(activation.duration_s, pump.max_runtime_s, jc.settings.max_runtime_cap_s)
            _transition(session, activation, ActivationStatus.starting, now, "worker")
            activation.starting_at = now
            # The device's own end of the run, whenever the command reaches it.
            activation.auto_off_at = now + timedelta(seconds=duration)
            start = _Send(
                _device(pump),
                Command.start(
                    activation.command_id, activation.sequence, duration, activation.auto_off_at
                ),
            )

        try:
            ack = await jc.gateway.send(start.device, start.command)
        except GatewayError as exc:
            await _fail(jc, session, act_id, str(exc))
            return "failed"
        if ack.result != AckResult.ok:
            await _fail(jc, session, act_id, f"device answered {ack.result}: {ack.detail}")
            return "failed"

        async with session.begin():
            locked = await _lock(session, act_id)
            assert locked is not None
            pump, activation, now = locked
            if activation.status != ActivationStatus.starting:
                # Ended while the start was in flight (an operator's stop, the watchdog): its
                # stop carried a higher sequence, so whichever of the two reached the device
                # first, the device is off.
                return "stopped"
            _transition(session, activation, ActivationStatus.running, now, "device_started")
            activation.started_at = now
            activation.run_deadline = activation.auto_off_at
            # A stop requested meanwhile is the stop job's (queued with the request).
            deadline = activation.run_deadline or now
    left_s = max(0.0, (deadline - now).total_seconds())
    await queue.enqueue_stop(jc.redis, act_id, "deadline", defer_by=left_s)
    return "running"


def _latest_end(activation: PumpActivation, now: datetime) -> datetime:
    """The latest moment the device can have stopped this run: its own auto-off."""
    return max(now, activation.auto_off_at or now)


async def _fail(jc: WorkerContext, session: AsyncSession, act_id: uuid.UUID, error: str) -> None:
    """Gateway failure after retries: activation failed, pump latched in fault."""
    async with session.begin():
        locked = await _lock(session, act_id)
        assert locked is not None
        pump, activation, now = locked
        if activation.status not in (ActivationStatus.starting, ActivationStatus.running):
            return
        _transition(session, activation, ActivationStatus.failed, now, "gateway_error", error=error)
        activation.error = error[:500]
        activation.stopped_at = now
        _release(pump, activation)
        pump.fault = f"gateway: {error}"[:500]
        pump.fault_at = now
        # The device may have started (the answer, not the command, was lost): rest from
        # the latest moment it could have stopped by itself.
        pump.cooldown_until = _latest_end(activation, now) + timedelta(seconds=pump.cooldown_s)
        halt = _Send(_device(pump), Command.halt(_next_sequence(pump)))
    log.warning("activation_failed", activation_id=str(act_id), error=error)
    with contextlib.suppress(GatewayError):
        await jc.gateway.send(halt.device, halt.command)


async def stop_activation(ctx: dict[str, Any], activation_id: str, cause: str) -> str:
    """Tell the device to stop, then record the stop and the cooldown that follows it."""
    jc = worker_context(ctx)
    act_id = uuid.UUID(activation_id)
    async with jc.sessions() as session:
        async with session.begin():
            locked = await _lock(session, act_id)
            if locked is None:
                return "missing"
            pump, activation, _ = locked
            if activation.status not in (ActivationStatus.starting, ActivationStatus.running):
                return f"skipped: {activation.status}"
            # A fresh number, so a start still in flight for this run is refused by the
            # device if it arrives after this stop.
            stop = _Send(_device(pump), Command.stop(activation.command_id, _next_sequence(pump)))

        error: str | None = None
        try:
            ack = await jc.gateway.send(stop.device, stop.command)
        except GatewayError as exc:
            error = str(exc)
        else:
            if ack.result not in (AckResult.ok, AckResult.not_running):
                error = f"device answered {ack.result}: {ack.detail}"

        async with session.begin():
            locked = await _lock(session, act_id)
            assert locked is not None
            pump, activation, now = locked
            if activation.status not in (ActivationStatus.starting, ActivationStatus.running):
                return f"skipped: {activation.status}"
            stopped_at = now
            if error is not None:
                # The device's own auto-off still ends the run; count the rest from then.
                stopped_at = max(now, activation.run_deadline or now)
                pump.fault = f"gateway: stop failed: {error}"[:500]
                pump.fault_at = now
                activation.error = error[:500]
            ran_out = cause in ("deadline", "watchdog") and activation.status == "running"
            status = ActivationStatus.completed if ran_out else ActivationStatus.aborted
            _transition(
                session, activation, status, now, cause, **({"error": error} if error else {})
            )
            activation.stopped_at = stopped_at
            activation.stop_cause = cause
            _release(pump, activation)
            pump.cooldown_until = stopped_at + timedelta(seconds=pump.cooldown_s)
            site_id = pump.site_id
    # Capacity is free again: whatever waits for this water source may start now.
    await queue.enqueue_dispatch(jc.redis, site_id)
    return str(status)


async def watchdog(ctx: dict[str, Any]) -> int:
    """Reconcile what a dead worker or a lost job left behind; returns how many it touched."""
    jc = worker_context(ctx)
    s = jc.settings
    starting_limit = jc.gateway.call_budget_s + s.watchdog_grace_s
    async with jc.sessions() as session:
        now = (await session.execute(select(db_now_expr()))).scalar_one()
        grace = timedelta(seconds=s.watchdog_grace_s)
        overdue = (
            select(PumpActivation.id)
            .where(
                (
                    (PumpActivation.status == ActivationStatus.running)
                    & (PumpActivation.run_deadline < now - grace)
                )
                | (
                    (PumpActivation.status == ActivationStatus.starting)
                    & (PumpActivation.starting_at < now - timedelta(seconds=starting_limit))
                )
                | (
                    PumpActivation.status.in_((ActivationStatus.starting, ActivationStatus.running))
                    & (PumpActivation.stop_requested_at < now - grace)
                )
            )
            .limit(100)
        )
        stuck = list((await session.execute(overdue)).scalars())
        late = (
            select(PumpActivation.id)
            .where(
                PumpActivation.status == ActivationStatus.queued,
                PumpActivation.start_deadline < now - grace,
            )
            .limit(100)
        )
        expired = list((await session.execute(late)).scalars())
        await session.rollback()
    for act_id in stuck:
        log.warning("watchdog_stop", activation_id=str(act_id))
        await stop_activation(ctx, str(act_id), "watchdog")
    for act_id in expired:
        # The start job takes the same path; running it here expires the activation.
        await start_activation(ctx, str(act_id))
    return len(stuck) + len(expired)


async def relay_outbox(ctx: dict[str, Any]) -> int:
    """Enqueue what a crash between commit and enqueue left in the outbox.

    The rows are claimed (`claimed_at`) and committed first, then enqueued: no row lock is
    held while Redis is awaited (a slow Redis would otherwise hold the start job, which
    deletes the row, and every relay behind it). A claim lost with a crash is taken again
    once it is older than the relay delay, like a new row."""
    jc = worker_context(ctx)
    async with jc.sessions() as session, session.begin():
        now = (await session.execute(select(db_now_expr()))).scalar_one()
        cutoff = now - timedelta(seconds=jc.settings.outbox_relay_after_s)
        due = (
            select(OutboxJob.id)
            .where(
                OutboxJob.created_at < cutoff,
                or_(OutboxJob.claimed_at.is_(None), OutboxJob.claimed_at < cutoff),
            )
            .order_by(OutboxJob.created_at)
            .limit(500)
            .with_for_update(skip_locked=True)
        )
        claimed = (
            (
                await session.execute(
                    update(OutboxJob)
                    .where(OutboxJob.id.in_(due.scalar_subquery()))
                    .values(attempts=OutboxJob.attempts + 1, claimed_at=now)
                    .returning(OutboxJob.activation_id)
                )
            )
            .scalars()
            .all()
        )
    for activation_id in claimed:
        await queue.enqueue_start(jc.redis, activation_id)
    return len(claimed)
