"""Worker side of activations: start, stop, the watchdog and the outbox relay.

Every job re-reads state under the row locks and does nothing if the state says it already
happened, so arq's at-least-once delivery never means a second start. No network call is
awaited while a row lock is held. Every command carries a fresh sequence from the pump's
row, and a start or stop counts only once the device's reported state confirms it
(`IRRIGATION_CONFIRM_TIMEOUT_S`): an unconfirmed start fails, halts the device and latches
a fault; an unconfirmed stop is retried as a halt with back-off, then latches a fault.
Starts (pumps/starts.py) and deadline stops (pumps/stops.py) run in batches."""

from datetime import timedelta
from typing import Any

import structlog
from sqlalchemy import and_, or_, select, update

from irrigation import queue
from irrigation.common.clock import db_now_expr
from irrigation.common.worker_context import worker_context
from irrigation.pumps.models import (
    ActivationStatus,
    OutboxJob,
    PumpActivation,
)
from irrigation.pumps.starts import start_activation, start_due
from irrigation.pumps.stops import IN_FLIGHT, STOP_BUDGET_S, stop_activation

# The start job lives in pumps/starts.py (batched); the worker registers it from here.
__all__ = ["relay_outbox", "start_activation", "stop_activation", "watchdog"]

log = structlog.get_logger(__name__)


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
