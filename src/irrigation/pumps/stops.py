"""Stopping runs: one stop with its retries (`stop_one`), and the deadline stops that fall
due together, in batches (`stop_due`, issue 20: a burst's runs all end within the same
second, and their stop jobs were most of the worker's CPU).

A deadline stop job stops its own run and up to `IRRIGATION_PUMP_BATCH_SIZE - 1` other
running runs whose deadline has passed and whose stop is not under way, claimed
`FOR NO KEY UPDATE SKIP LOCKED` beside its own (locked waiting, as before): each gets
`stop_requested_at` and a stop command with a fresh sequence, in one transaction; their
own stop jobs are taken off the queue; the commands are sent and confirmed concurrently,
no lock held; one transaction records every confirmed stop (pumps then activations
locked in id order); a stop not confirmed goes on as a single stop, whose next attempts
are halts with back-off, as ever. A worker killed mid-batch leaves `stop_requested_at`
set: the watchdog gives each such run a stop job once a stop's budget has passed."""

import asyncio
import time
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from irrigation import queue
from irrigation.common.worker_context import WorkerContext, worker_context
from irrigation.fleet.models import Pump
from irrigation.gateway import (
    AckResult,
    Command,
    DeviceAddress,
    DeviceState,
    GatewayError,
    StatePredicate,
)
from irrigation.pumps.claims import BATCHED, Claims
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
from irrigation.pumps.models import STOP_UNCONFIRMED, ActivationStatus, PumpActivation
from irrigation.pumps.starts import confirmed, lock_all
from irrigation.pumps.supervision import learn_flow, learn_flows

log = structlog.get_logger(__name__)

# A stop job tries for at most this long (retries included), inside the pump jobs' 30 s
# timeout with room to record the outcome; the watchdog leaves a stop alone this long.
STOP_BUDGET_S = 20.0
# Back-off before the n-th retry of an unconfirmed stop: base * 2**(n-1).
STOP_BACKOFF_S = 0.5
IN_FLIGHT = (ActivationStatus.starting, ActivationStatus.running)


def not_running(command_id: str) -> StatePredicate:
    """Confirms a stop: the device does not run it."""
    return lambda state: not state.is_running(command_id)


async def stop_activation(ctx: dict[str, Any], activation_id: str, cause: str) -> str:
    """Tell the device to stop, confirm it from the device's state, then record the stop
    and the cooldown that follows it. Stop-all sends a halt (whatever runs); a stop that
    is not confirmed is retried as a halt with back-off, then latches a fault. A deadline
    stop takes the other runs whose deadline has passed with it (`stop_due`)."""
    jc = worker_context(ctx)
    act_id = uuid.UUID(activation_id)
    if cause == "deadline" and jc.settings.pump_batch_size > 1:
        return await stop_due(jc, act_id, jc.settings.pump_batch_size)
    return await stop_one(jc, act_id, cause)


async def stop_one(
    jc: WorkerContext, act_id: uuid.UUID, cause: str, *, tried: int = 0, began: float | None = None
) -> str:
    """The stop of one run, after `tried` attempts already made (by a batch, which began
    at `began`): each further attempt is a halt."""
    began = time.monotonic() if began is None else began
    attempts = tried
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
            log.warning("stop_unconfirmed_retry", activation_id=str(act_id), attempt=attempts)
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
    return await confirmed(jc, send, ack, not_running(command_id))


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
        status = record_stop_locked(
            session, pump, activation, now, cause, confirmed, attempts, device
        )
        site_id = pump.site_id
    if status is None:
        return f"skipped: {activation.status}"
    # Capacity is free again: whatever waits for this water source may start now.
    await queue.enqueue_dispatch(jc.redis, site_id)
    return str(status)


def record_stop_locked(
    session: AsyncSession,
    pump: Pump,
    activation: PumpActivation,
    now: datetime,
    cause: str,
    confirmed: DeviceState | None,
    attempts: int,
    device: DeviceAddress | None,
) -> ActivationStatus | None:
    """The stop of a run, under its locks: its end, the pump's cooldown, and a fault latched
    if the device never confirmed it; None for a run no longer in flight."""
    if activation.status not in IN_FLIGHT:
        return None
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
        log.error("stop_unconfirmed", activation_id=str(activation.id), attempts=attempts)
    activation.stopped_at = stopped_at
    activation.stop_cause = cause
    release(pump, activation)
    pump.cooldown_until = rest_from + timedelta(seconds=pump.cooldown_s)
    transition(session, pump, activation, status, now, cause, **detail)
    return status


# The runs this process's deadline stop batches have taken and not yet recorded.
_claims = Claims()


async def stop_due(jc: WorkerContext, act_id: uuid.UUID, batch_size: int) -> str:
    """The deadline stop of `act_id` and of up to `batch_size - 1` other runs past their
    deadline; `act_id`'s outcome."""
    began = time.monotonic()
    async with jc.sessions() as session:
        async with _claims.lock():
            batched = _claims.taken(act_id)
            if not batched:
                claim = await _claim_stops(session, act_id, batch_size)
                if isinstance(claim, str) and claim != RETRY:
                    return claim
                others = [a for a in claim if a != act_id] if isinstance(claim, dict) else []
                _claims.take(others)
        if batched:
            return BATCHED
        if not isinstance(claim, dict):
            # A stop under way before this job (or lost with a worker): tried again alone.
            return await stop_one(jc, act_id, "deadline")
        outcomes: dict[uuid.UUID, str] = {}
        try:
            if others:
                jobs = [stop_job(a) for a in others]
                await queue.forget_jobs(jc.redis, queue.STOP_ACTIVATION, jobs)
            outcomes = await _stop_all(jc, session, claim, began)
        finally:
            _claims.release(others)
        return outcomes[act_id]


# What `_claim_stops` answers for a run whose stop was requested before: its job stops it
# alone, with the single stop's retries.
RETRY = "retry"


def stop_job(act_id: uuid.UUID) -> str:
    return queue.stop_job_id(act_id, "deadline")


async def _claim_stops(
    session: AsyncSession, act_id: uuid.UUID, batch_size: int
) -> str | dict[uuid.UUID, tuple[str, Send | None]]:
    """This run and the batch's others, each with its start's command id and the stop to
    send (None: an unaddressable pump, nothing can run there), committed."""
    async with session.begin():
        locked = await lock(session, act_id)
        if locked is None:
            return "missing"
        pump, activation, now = locked
        if activation.status not in IN_FLIGHT:
            return f"skipped: {activation.status}"
        if activation.stop_requested_at is not None:
            return RETRY
        rows: list[tuple[Pump, PumpActivation]] = [(pump, activation)]
        if batch_size > 1:
            rows += await _claim_other_stops(session, act_id, now, batch_size - 1)
        claim: dict[uuid.UUID, tuple[str, Send | None]] = {}
        for p, a in rows:
            if a.stop_requested_at is None:
                # Seen by the watchdog: a stop is under way.
                a.stop_requested_at = now
            device = address(p)
            send = None
            if device is not None:
                send = Send(device, Command.stop(a.command_id, next_sequence(p)))
            claim[a.id] = (a.command_id, send)
    return claim


async def _claim_other_stops(
    session: AsyncSession, act_id: uuid.UUID, now: datetime, limit: int
) -> Sequence[tuple[Pump, PumpActivation]]:
    stmt = (
        select(Pump, PumpActivation)
        .join(PumpActivation, PumpActivation.pump_id == Pump.id)
        # Checked again on the rows as locked: a stop another batch committed meanwhile
        # no longer matches.
        .where(
            PumpActivation.status == ActivationStatus.running,
            PumpActivation.stop_requested_at.is_(None),
            PumpActivation.run_deadline <= now,
            PumpActivation.id != act_id,
        )
        .order_by(PumpActivation.run_deadline)
        .limit(limit)
        .with_for_update(skip_locked=True, key_share=True, of=(Pump, PumpActivation))
        .execution_options(populate_existing=True)
    )
    return [(row[0], row[1]) for row in (await session.execute(stmt)).all()]


async def _send_stop(
    jc: WorkerContext, send: Send, command_id: str
) -> tuple[DeviceState | None, DeviceState | None]:
    """One stop and its confirmation: the confirming state (or None), and the device's
    state when it refused the stop's sequence as stale (its fence, to adopt)."""
    try:
        ack = await jc.gateway.send(send.device, send.command)
    except GatewayError as exc:
        log.warning("stop_failed", device=str(send.device), error=str(exc))
        ack = None
    fence = ack.state if ack is not None and ack.result == AckResult.stale_sequence else None
    return await confirmed(jc, send, ack, not_running(command_id)), fence


async def _stop_all(
    jc: WorkerContext,
    session: AsyncSession,
    claim: dict[uuid.UUID, tuple[str, Send | None]],
    began: float,
) -> dict[uuid.UUID, str]:
    sends = {a: (cid, send) for a, (cid, send) in claim.items() if send is not None}
    results = await asyncio.gather(*(_send_stop(jc, send, cid) for cid, send in sends.values()))
    answers = dict(zip(sends, results, strict=True))
    outcomes: dict[uuid.UUID, str] = {}
    retry: list[uuid.UUID] = []
    ended: list[uuid.UUID] = []
    sites: set[uuid.UUID] = set()
    async with session.begin():
        now, pumps, activations = await lock_all(session, list(claim))
        for act_id, (_, send) in claim.items():
            await asyncio.sleep(0)  # as in `starts._claim`
            activation = activations[act_id]
            pump = pumps[activation.pump_id]
            state, fence = answers.get(act_id, (None, None))
            if fence is not None:
                # The device has seen a higher number than this pump's: the next try goes
                # above it.
                adopt_fence(pump, fence)
            device = send.device if send is not None else None
            in_flight = activation.status in IN_FLIGHT
            if state is None and device is not None and in_flight and jc.settings.stop_retries:
                retry.append(act_id)
                continue
            status = record_stop_locked(
                session, pump, activation, now, "deadline", state, 1, device
            )
            if status is None:
                outcomes[act_id] = f"skipped: {activation.status}"
                continue
            outcomes[act_id] = str(status)
            ended.append(act_id)
            sites.add(pump.site_id)
    if ended:
        # What the runs measured teaches their pumps' expected flow (flow supervision).
        await learn_flows(session, ended)
    if sites:
        # Capacity is free again: whatever waits for these water sources may start now.
        await queue.enqueue_dispatches(jc.redis, sites)
    if retry:
        for act_id in retry:
            log.warning("stop_unconfirmed_retry", activation_id=str(act_id), attempt=1)
        await asyncio.sleep(STOP_BACKOFF_S)
        retried = await asyncio.gather(
            *(stop_one(jc, a, "deadline", tried=1, began=began) for a in retry)
        )
        outcomes |= dict(zip(retry, retried, strict=True))
    return outcomes
