"""Worker side of activations: start, stop, the watchdog and the outbox relay.

Every job re-reads state under the row locks and does nothing if the state says it already
happened, so arq's at-least-once delivery never means a second start. No network call is
awaited while a row lock is held. Every command carries a fresh sequence from the pump's
row, and a start or stop counts only once the device's reported state confirms it
(`IRRIGATION_CONFIRM_TIMEOUT_S`): an unconfirmed start fails, halts the device and latches
a fault; an unconfirmed stop is retried as a halt with back-off, then latches a fault.
Starts run in batches (pumps/starts.py)."""

import asyncio
import time
import uuid
from datetime import timedelta
from typing import Any

import structlog
from sqlalchemy import and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from irrigation import queue
from irrigation.common.clock import db_now_expr
from irrigation.common.worker_context import WorkerContext, worker_context
from irrigation.gateway import (
    AckResult,
    Command,
    DeviceAddress,
    DeviceState,
    GatewayError,
    StatePredicate,
)
from irrigation.pumps.commands import (
    Send,
    address,
    adopt_fence,
    device_stop_time,
    latch,
    latest_end,
    lock,
    next_sequence,
    release,
    transition,
)
from irrigation.pumps.models import (
    STOP_UNCONFIRMED,
    ActivationStatus,
    OutboxJob,
    PumpActivation,
)
from irrigation.pumps.starts import confirmed, start_activation, start_due
from irrigation.pumps.supervision import learn_flow

# The start job lives in pumps/starts.py (batched); the worker registers it from here.
__all__ = ["relay_outbox", "start_activation", "stop_activation", "watchdog"]

log = structlog.get_logger(__name__)

# A stop job tries for at most this long (retries included), inside the pump jobs' 30 s
# timeout with room to record the outcome; the watchdog leaves a stop alone this long.
STOP_BUDGET_S = 20.0
# Back-off before the n-th retry of an unconfirmed stop: base * 2**(n-1).
STOP_BACKOFF_S = 0.5
IN_FLIGHT = (ActivationStatus.starting, ActivationStatus.running)


def _not_running(command_id: str) -> StatePredicate:
    """Confirms a stop: the device does not run it."""
    return lambda state: not state.is_running(command_id)


async def stop_activation(ctx: dict[str, Any], activation_id: str, cause: str) -> str:
    """Tell the device to stop, confirm it from the device's state, then record the stop
    and the cooldown that follows it. Stop-all sends a halt (whatever runs); a stop that
    is not confirmed is retried as a halt with back-off, then latches a fault."""
    jc = worker_context(ctx)
    act_id = uuid.UUID(activation_id)
    began = time.monotonic()
    attempts = 0
    confirmed: DeviceState | None = None
    device: DeviceAddress | None = None
    async with jc.sessions() as session:
        while True:
            attempts += 1
            async with session.begin():
                locked = await lock(session, act_id)
                if locked is None:
                    return "missing"
                pump, activation, now = locked
                if activation.status not in IN_FLIGHT:
                    return f"skipped: {activation.status}"
                if activation.stop_requested_at is None:
                    # Seen by the watchdog: a stop is under way.
                    activation.stop_requested_at = now
                command_id = activation.command_id
                device = address(pump)
                if device is None:
                    break  # never started: nothing can run on an unaddressable device
                sequence = next_sequence(pump)
                halt = cause == "stop_all" or attempts > 1
                command = Command.halt(sequence) if halt else Command.stop(command_id, sequence)
                send = Send(device, command)
            confirmed = await _stop_once(jc, session, act_id, send, command_id)
            if confirmed is not None:
                break
            backoff = STOP_BACKOFF_S * 2 ** (attempts - 1)
            next_try = jc.gateway.call_budget_s + jc.settings.confirm_timeout_s + backoff
            if attempts > jc.settings.stop_retries or (
                time.monotonic() - began + next_try > STOP_BUDGET_S
            ):
                break
            log.warning("stop_unconfirmed_retry", activation_id=activation_id, attempt=attempts)
            await asyncio.sleep(backoff)
        result = await _record_stop(jc, session, act_id, cause, confirmed, attempts, device)
        if result in (ActivationStatus.completed, ActivationStatus.aborted):
            # What the run measured teaches its pump's expected flow (flow supervision).
            await learn_flow(session, act_id)
        return result


async def _stop_once(
    jc: WorkerContext, session: AsyncSession, act_id: uuid.UUID, send: Send, command_id: str
) -> DeviceState | None:
    """One stop or halt and its confirmation; the confirming state, or None."""
    try:
        ack = await jc.gateway.send(send.device, send.command)
    except GatewayError as exc:
        log.warning("stop_failed", activation_id=str(act_id), error=str(exc))
        ack = None
    if ack is not None and ack.result == AckResult.stale_sequence:
        # The device has seen a higher number than this pump's: the next try goes above it.
        async with session.begin():
            locked = await lock(session, act_id)
            if locked is not None:
                adopt_fence(locked[0], ack.state)
    return await confirmed(jc, send, ack, _not_running(command_id))


async def _record_stop(
    jc: WorkerContext,
    session: AsyncSession,
    act_id: uuid.UUID,
    cause: str,
    confirmed: DeviceState | None,
    attempts: int,
    device: DeviceAddress | None,
) -> str:
    async with session.begin():
        locked = await lock(session, act_id)
        if locked is None:
            return "missing"
        pump, activation, now = locked
        if activation.status not in IN_FLIGHT:
            return f"skipped: {activation.status}"
        ran_out = cause in ("deadline", "watchdog") and activation.status == "running"
        status = ActivationStatus.completed if ran_out else ActivationStatus.aborted
        detail: dict[str, object] = {}
        if confirmed is not None or device is None:
            # A run that ended by itself before this stop (its auto-off, while the stop job
            # was late) ended when the device says, not when we looked.
            stopped_at = device_stop_time(confirmed, activation.command_id, now)
            # A start never confirmed may still have run, until its own auto-off at most.
            rest_from = latest_end(activation, now) if activation.status == "starting" else now
        else:
            # The device's own auto-off still ends the run; count the rest from then.
            stopped_at = rest_from = latest_end(activation, now)
            why = (
                f"the device still reported start {activation.command_id} running after "
                f"{attempts} stop command(s)"
            )
            latch(pump, STOP_UNCONFIRMED, why, now)
            activation.error = STOP_UNCONFIRMED
            detail = {"error": STOP_UNCONFIRMED, "attempts": attempts}
        activation.stopped_at = stopped_at
        activation.stop_cause = cause
        release(pump, activation)
        pump.cooldown_until = rest_from + timedelta(seconds=pump.cooldown_s)
        transition(session, pump, activation, status, now, cause, **detail)
        site_id = pump.site_id
    if confirmed is None and device is not None:
        log.error("stop_unconfirmed", activation_id=str(act_id), attempts=attempts)
    # Capacity is free again: whatever waits for this water source may start now.
    await queue.enqueue_dispatch(jc.redis, site_id)
    return str(status)


async def watchdog(ctx: dict[str, Any]) -> int:
    """Reconcile what a dead worker or a lost job left behind; returns how many it touched.

    Runs past their deadline, starts stuck in `starting` longer than a start and its
    confirmation can take, and stops requested but not finished within a stop's budget get
    a stop job; queued runs past their start deadline expire."""
    jc = worker_context(ctx)
    s = jc.settings
    starting_limit = jc.gateway.call_budget_s + s.confirm_timeout_s + s.watchdog_grace_s
    async with jc.sessions() as session:
        now = (await session.execute(select(db_now_expr()))).scalar_one()
        grace = timedelta(seconds=s.watchdog_grace_s)
        stop_overdue = now - grace - timedelta(seconds=STOP_BUDGET_S)
        no_stop_under_way = or_(
            PumpActivation.stop_requested_at.is_(None),
            PumpActivation.stop_requested_at < stop_overdue,
        )
        overdue = (
            select(PumpActivation.id)
            .where(
                and_(
                    PumpActivation.status == ActivationStatus.running,
                    PumpActivation.run_deadline < now - grace,
                    no_stop_under_way,
                )
                | and_(
                    PumpActivation.status == ActivationStatus.starting,
                    PumpActivation.starting_at < now - timedelta(seconds=starting_limit),
                    no_stop_under_way,
                )
                | and_(
                    PumpActivation.status.in_(IN_FLIGHT),
                    PumpActivation.stop_requested_at < stop_overdue,
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
        # A job, not a call here: a stop may take its whole budget, and one stuck run must
        # not hold up the rest. The job id keeps it to one stop job per run at a time.
        await queue.enqueue_stop(jc.redis, act_id, "watchdog")
    for act_id in expired:
        # The start job takes the same path; running it here expires the activation (a
        # batch of one: the watchdog sends no start).
        await start_due(jc, act_id, 1)
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
