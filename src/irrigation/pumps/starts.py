"""Starts in batches (issue 20): a start job starts its own activation and, with it, up to
`IRRIGATION_PUMP_BATCH_SIZE - 1` other queued ones, so a burst of a thousand admitted
runs costs tens of jobs, transactions and Redis exchanges instead of thousands.

One batch: (1) one transaction locks its own activation (waiting for the lock, as a single
start always did: a herd on its pump holds that row often) and claims the others
`FOR NO KEY UPDATE SKIP LOCKED` (never waiting: what another transaction holds is left to
its own job), ranked fairly across sites (each site's first queued run before any
site's second), moves them `queued -> starting` (or `expired`, or `failed` for an
unaddressable pump) and deletes their outbox rows; (2) after commit, the claimed runs'
own start jobs are taken off the queue (a job of this process that already began awaits
its run's outcome: pumps/claims.py); (3) the commands are sent and confirmed concurrently, no lock
held; (4) one transaction locks the pumps (in id order) and the activations and records
each outcome, as the single path did; (5) halts for failed starts, the deferred stops in
one Redis call.

Every invariant of the single start holds per activation: a fresh sequence per command
taken under the pump's lock, a start counts only once the device's state confirms it, an
unconfirmed or refused start fails, halts and latches a fault, a start past its deadline
expires. A worker killed mid-batch leaves its runs `starting`: the watchdog stops them."""

import asyncio
import contextlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from irrigation import queue
from irrigation.common.clock import db_now_expr
from irrigation.common.worker_context import WorkerContext, worker_context
from irrigation.fleet.models import Pump
from irrigation.gateway import (
    Ack,
    AckResult,
    Command,
    DeviceState,
    GatewayError,
    StatePredicate,
)
from irrigation.pumps.claims import BATCHED, Claims
from irrigation.pumps.commands import (
    Send,
    address,
    adopt_fence,
    latch,
    latest_end,
    lock,
    next_sequence,
    release,
    transition,
)
from irrigation.pumps.models import NOT_CONFIRMED, ActivationStatus, OutboxJob, PumpActivation

log = structlog.get_logger(__name__)

# The runs this process's start batches have taken and not yet recorded.
_claims = Claims()

# Each site's queued runs ranked by age: a batch takes every site's first before any
# site's second, so one site's burst cannot hold another site's start for more than a
# batch.
_RANKED = (
    select(
        PumpActivation.id,
        PumpActivation.requested_at,
        func.row_number()
        .over(
            partition_by=PumpActivation.site_id,
            order_by=(PumpActivation.requested_at, PumpActivation.id),
        )
        .label("rank"),
    )
    .where(PumpActivation.status == ActivationStatus.queued)
    .subquery()
)


def _ran(command_id: str) -> StatePredicate:
    """Confirms a start: the device runs it, or ran it (a short run may be over already)."""
    return lambda state: state.command_id == command_id


async def confirmed(
    jc: WorkerContext, send: Send, ack: Ack | None, until: StatePredicate
) -> DeviceState | None:
    """The device's reported state once it satisfies `until`: the state inside the ack
    counts (it is the device's report, taken after the command; the ack's `result` never
    does), else the state is asked until the confirmation timeout."""
    if ack is not None and until(ack.state):
        return ack.state
    return await jc.gateway.await_state(send.device, until, jc.settings.confirm_timeout_s)


@dataclass(frozen=True)
class Failure:
    """Why a start did not happen as asked. `error` and `fault` are what tenants see;
    `logged`, the raw text, goes to our log only."""

    error: str
    cause: str
    outcome: str = "failed"
    fault: tuple[str, str] | None = None
    state: DeviceState | None = None
    logged: str | None = None


async def start_activation(ctx: dict[str, Any], activation_id: str) -> str:
    """queued -> starting -> (device start, confirmed) -> running, for this run and up to a
    batch of other queued runs; this run's outcome (anything but queued: a no-op)."""
    jc = worker_context(ctx)
    return await start_due(jc, uuid.UUID(activation_id), jc.settings.pump_batch_size)


async def start_due(jc: WorkerContext, act_id: uuid.UUID, batch_size: int) -> str:
    """Start `act_id` and up to `batch_size - 1` other queued runs; `act_id`'s outcome."""
    async with jc.sessions() as session:
        async with _claims.lock():
            batched = _claims.taken(act_id)
            if not batched:
                claim = await _claim(jc, session, act_id, batch_size)
                if isinstance(claim, str):
                    return claim
                outcomes, starts = claim
                others = [a for a in outcomes if a != act_id]
                _claims.take(others)
        if batched:
            return BATCHED
        try:
            if others:
                jobs = [str(a) for a in others]
                await queue.forget_jobs(jc.redis, queue.START_ACTIVATION, jobs)
            if starts:
                outcomes |= await _run(jc, session, starts)
        finally:
            _claims.release(others)
        return outcomes[act_id]


async def _claim(
    jc: WorkerContext, session: AsyncSession, act_id: uuid.UUID, batch_size: int
) -> str | tuple[dict[uuid.UUID, str], dict[uuid.UUID, Send]]:
    """Step (1): this run and the batch's others, decided and committed; their outcomes so
    far (`starting` for those to send) and the start commands to send."""
    async with session.begin():
        locked = await lock(session, act_id)
        if locked is None:
            return "missing"
        pump, activation, now = locked
        if activation.status != ActivationStatus.queued:
            await session.execute(delete(OutboxJob).where(OutboxJob.activation_id == act_id))
            return f"skipped: {activation.status}"
        rows = [(pump, activation)]
        if batch_size > 1:
            rows += await _claim_others(session, act_id, batch_size - 1)
        ids = [a.id for _, a in rows]
        await session.execute(delete(OutboxJob).where(OutboxJob.activation_id.in_(ids)))
        outcomes: dict[uuid.UUID, str] = {}
        starts: dict[uuid.UUID, Send] = {}
        for p, a in rows:
            # Each run's audit row and events are a few hundred microseconds of CPU: the
            # loop's other tasks (arq's Redis calls, with a 0.5 s timeout) go in between.
            await asyncio.sleep(0)
            send = _decide(jc, session, p, a, now)
            if send is None:
                outcomes[a.id] = str(a.status)
            else:
                outcomes[a.id] = "starting"
                starts[a.id] = send
    return outcomes, starts


async def _claim_others(
    session: AsyncSession, act_id: uuid.UUID, limit: int
) -> Sequence[tuple[Pump, PumpActivation]]:
    stmt = (
        select(Pump, PumpActivation)
        .join(PumpActivation, PumpActivation.pump_id == Pump.id)
        .join(_RANKED, _RANKED.c.id == PumpActivation.id)
        # Checked again on the row as locked: a run another batch committed meanwhile
        # no longer matches.
        .where(PumpActivation.status == ActivationStatus.queued, PumpActivation.id != act_id)
        .order_by(_RANKED.c.rank, _RANKED.c.requested_at)
        .limit(limit)
        .with_for_update(skip_locked=True, key_share=True, of=(Pump, PumpActivation))
        .execution_options(populate_existing=True)
    )
    return [(row[0], row[1]) for row in (await session.execute(stmt)).all()]


def _decide(
    jc: WorkerContext, session: AsyncSession, pump: Pump, activation: PumpActivation, now: datetime
) -> Send | None:
    """One claimed run, under its locks: expired, failed (unaddressable) or starting with
    the command to send."""
    if now > activation.start_deadline:
        # Run late is worse than not at all: the grower asked for water *then*.
        activation.stopped_at = now
        release(pump, activation)
        transition(session, pump, activation, ActivationStatus.expired, now, "queue_delay")
        return None
    device = address(pump)
    if device is None:
        # A hardware_id from before the address pattern (admitted before the upgrade): no
        # command can name its device.
        activation.error = "invalid_hardware_id"
        activation.stopped_at = now
        release(pump, activation)
        transition(session, pump, activation, ActivationStatus.failed, now, "invalid_address")
        return None
    # Capped again here: config may have changed since the request was admitted.
    duration = min(activation.duration_s, pump.max_runtime_s, jc.settings.max_runtime_cap_s)
    if pump.last_sequence != activation.sequence:
        # A command went to the device since admission (a halt): start above it.
        activation.sequence = next_sequence(pump)
    activation.starting_at = now
    # The device's own end of the run, whenever the command reaches it.
    activation.auto_off_at = now + timedelta(seconds=duration)
    transition(session, pump, activation, ActivationStatus.starting, now, "worker")
    return Send(
        device,
        Command.start(activation.command_id, activation.sequence, duration, activation.auto_off_at),
    )


async def _send_start(jc: WorkerContext, start: Send) -> Failure | None:
    """Step (3) for one run: None once the device's state confirms the start."""
    command_id = start.command.command_id
    try:
        ack = await jc.gateway.send(start.device, start.command)
    except GatewayError as exc:
        return Failure(
            f"gateway_{exc.failure}",
            "gateway_error",
            fault=("gateway", str(exc.failure)),
            logged=str(exc),
        )
    if ack.result == AckResult.stale_sequence:
        # The device has seen a newer command: this start must never run. If this run was
        # not stopped meanwhile, the pump's counter was behind the device's.
        return Failure(
            AckResult.stale_sequence.value, "device_refused", state=ack.state, logged=ack.detail
        )
    if ack.result != AckResult.ok:
        return Failure(
            f"device_{ack.result}",
            "device_refused",
            fault=("device", str(ack.result)),
            state=ack.state,
            logged=ack.detail,
        )
    if await confirmed(jc, start, ack, _ran(command_id)) is None:
        timeout = jc.settings.confirm_timeout_s
        why = f"the device did not report running start {command_id} within {timeout:g} s"
        return Failure(
            NOT_CONFIRMED, NOT_CONFIRMED, outcome=NOT_CONFIRMED, fault=(NOT_CONFIRMED, why)
        )
    return None


async def _run(
    jc: WorkerContext, session: AsyncSession, starts: dict[uuid.UUID, Send]
) -> dict[uuid.UUID, str]:
    """Steps (3) to (5): send and confirm concurrently, record, then halt what failed and
    queue the deferred stops of what runs."""
    results = await asyncio.gather(*(_send_start(jc, s) for s in starts.values()))
    failures = {a: f for a, f in zip(starts, results, strict=True) if f is not None}
    outcomes: dict[uuid.UUID, str] = {}
    halts: list[Send] = []
    stops: list[tuple[uuid.UUID, float]] = []
    async with session.begin():
        now, pumps, activations = await lock_all(session, list(starts))
        for act_id in starts:
            await asyncio.sleep(0)  # as in `_claim`
            activation = activations[act_id]
            pump = pumps[activation.pump_id]
            failure = failures.get(act_id)
            if failure is not None:
                outcomes[act_id] = failure.outcome
                halt = fail_locked(session, pump, activation, now, failure)
                if halt is not None:
                    halts.append(halt)
            elif activation.status != ActivationStatus.starting:
                # Ended while the start was in flight (an operator's stop, the watchdog):
                # its stop carried a higher sequence, so whichever of the two reached the
                # device first, the device is off.
                outcomes[act_id] = "stopped"
            else:
                activation.started_at = now
                activation.run_deadline = activation.auto_off_at
                transition(
                    session, pump, activation, ActivationStatus.running, now, "device_started"
                )
                # A stop requested meanwhile is the stop job's (queued with the request).
                deadline = activation.run_deadline or now
                stops.append((act_id, max(0.0, (deadline - now).total_seconds())))
                outcomes[act_id] = "running"
    for act_id, failure in failures.items():
        error, detail = failure.error, failure.logged
        log.warning("activation_failed", activation_id=str(act_id), error=error, detail=detail)
    if halts:
        await asyncio.gather(*(_halt(jc, h) for h in halts))
    if stops:
        await queue.enqueue_stops(jc.redis, "deadline", stops)
    return outcomes


async def _halt(jc: WorkerContext, halt: Send) -> None:
    with contextlib.suppress(GatewayError):
        await jc.gateway.send(halt.device, halt.command)


async def lock_all(
    session: AsyncSession, act_ids: list[uuid.UUID]
) -> tuple[datetime, dict[uuid.UUID, Pump], dict[uuid.UUID, PumpActivation]]:
    """The batch's pumps then activations (the fixed lock order), each set in id order so
    that two transactions locking several never wait on each other in a cycle."""
    pump_ids = select(PumpActivation.pump_id).where(PumpActivation.id.in_(act_ids))
    rows = (
        await session.execute(
            select(Pump, db_now_expr())
            .where(Pump.id.in_(pump_ids.scalar_subquery()))
            .order_by(Pump.id)
            .with_for_update(key_share=True, of=Pump)
            .execution_options(populate_existing=True)
        )
    ).all()
    activations = (
        await session.execute(
            select(PumpActivation)
            .where(PumpActivation.id.in_(act_ids))
            .order_by(PumpActivation.id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    ).scalars()
    now: datetime = rows[0][1]
    return now, {p.id: p for p, _ in rows}, {a.id: a for a in activations}


def fail_locked(
    session: AsyncSession,
    pump: Pump,
    activation: PumpActivation,
    now: datetime,
    failure: Failure,
) -> Send | None:
    """A start that did not happen as asked, under its locks: activation failed, the pump
    resting from the latest moment the device could have stopped (and latched in fault
    with `failure.fault`); the halt to send once the locks are released. A run stopped
    meanwhile is its stop's to record."""
    if activation.status != ActivationStatus.starting:
        return None
    activation.error = failure.error[:500]
    activation.stopped_at = now
    release(pump, activation)
    if failure.fault is not None:
        latch(pump, failure.fault[0], failure.fault[1], now)
    # The device may have started (an answer lost, a relay that reports late).
    pump.cooldown_until = latest_end(activation, now) + timedelta(seconds=pump.cooldown_s)
    if failure.state is not None:
        adopt_fence(pump, failure.state)
    device = address(pump)
    halt = Send(device, Command.halt(next_sequence(pump))) if device else None
    transition(
        session, pump, activation, ActivationStatus.failed, now, failure.cause, error=failure.error
    )
    return halt
