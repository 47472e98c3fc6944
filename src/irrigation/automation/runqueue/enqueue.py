"""Queueing runs: a wish (a person's, a rule's or a schedule's) becomes a waiting run request,
under the water source and pump locks; a higher priority supersedes lower ones waiting for
the same pump; `replace` stops the other runs on the water source. A person's request is
then dispatched at once."""

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from arq.connections import ArqRedis
from sqlalchemy import func, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from irrigation import queue
from irrigation.automation.decisions import about, local, record
from irrigation.automation.models import Outcome, QueueMode, Reason, RunRequest, RunStatus
from irrigation.automation.runqueue import dispatch, waterings
from irrigation.common import idempotency
from irrigation.common.clock import db_now_expr
from irrigation.common.errors import NotFound
from irrigation.common.idempotency import IdempotentRequest, StoredAnswer
from irrigation.fleet.models import Pump, WaterSource, Zone
from irrigation.pumps import service as pumps
from irrigation.pumps.models import ActivationStatus, Priority, PumpActivation
from irrigation.quotas import service as quotas
from irrigation.quotas.schemas import Quota
from irrigation.settings import Settings

RANK = {Priority.manual: 0, Priority.emergency: 1, Priority.scheduled: 2, Priority.threshold: 3}


@dataclass(frozen=True)
class Wish:
    """A run someone (a person, a rule, a schedule) wants, before it is queued."""

    pump_id: uuid.UUID
    priority: Priority
    duration_s: int
    origin: str
    deadline: datetime
    reason: str | None = None
    queue: QueueMode | None = None
    rule_id: uuid.UUID | None = None
    schedule_id: uuid.UUID | None = None
    after_id: uuid.UUID | None = None
    # An automated watering's: its id, this pump's cycle of `cycles`, the soak after the
    # previous request (automation/cycles.py).
    watering_id: uuid.UUID | None = None
    cycle: int | None = None
    cycles: int | None = None
    soak_s: int = 0


async def lock_source_and_pump(
    session: AsyncSession, site_id: uuid.UUID, pump_id: uuid.UUID, *, all_pumps: bool = False
) -> tuple[WaterSource, Pump, datetime]:
    """Both rows locked in the activation path's order, with the database clock; with
    `all_pumps`, every pump of the source too, in id order (as stop-all locks them)."""
    source = await pumps.lock_source_of(session, site_id, pump_id)
    if all_pumps:
        await session.execute(
            select(Pump.id)
            .where(Pump.water_source_id == source.id)
            .order_by(Pump.id)
            .with_for_update(key_share=True)
        )
    pump, now = await pumps.lock_pump(session, pump_id, site_id)
    return source, pump, now


async def add(
    session: AsyncSession, settings: Settings, site_id: uuid.UUID, wish: Wish
) -> tuple[RunRequest, list[PumpActivation]]:
    """Queue a wish inside the caller's transaction; returns it and, for `replace`, the
    runs to stop. A higher priority supersedes lower-priority requests waiting for the
    same pump. Over the site's quota of waiting requests (per pump, per site): 409
    `quota_exceeded`."""
    # The quota's lock before the source and pump locks: a zone-wide run queues one request
    # per pump in one transaction, and must not hold a pump while it waits for the count.
    await quotas.hold(session, site_id, Quota.waiting_run_requests_per_site)
    source, pump, now = await lock_source_and_pump(
        session, site_id, wish.pump_id, all_pumps=wish.queue == "replace"
    )
    pumps.check_duration(pump, wish.duration_s)
    rank = RANK[wish.priority]
    await _ensure_room(session, settings, site_id, pump, rank)
    stamp = int(now.timestamp() * 1_000_000)
    request = RunRequest(
        id=uuid.uuid4(),
        site_id=site_id,
        zone_id=pump.zone_id,
        pump_id=pump.id,
        priority=wish.priority,
        rank=rank,
        position=-stamp if wish.queue in ("front", "replace") else stamp,
        queue=wish.queue,
        duration_s=wish.duration_s,
        reason=wish.reason,
        origin=wish.origin,
        rule_id=wish.rule_id,
        schedule_id=wish.schedule_id,
        after_id=wish.after_id,
        watering_id=wish.watering_id,
        cycle=wish.cycle,
        cycles=wish.cycles,
        soak_s=wish.soak_s,
        status=RunStatus.waiting,
        deadline=wish.deadline,
    )
    session.add(request)
    await session.flush()
    superseded = (
        (
            await session.execute(
                update(RunRequest)
                .where(
                    RunRequest.pump_id == pump.id,
                    RunRequest.status == RunStatus.waiting,
                    RunRequest.rank > rank,
                )
                .values(status=RunStatus.superseded, resolved_at=now, last_reason=Reason.superseded)
                .returning(RunRequest)
                .execution_options(synchronize_session=False)
            )
        )
        .scalars()
        .all()
    )
    if superseded:  # the zone's time zone only for the sentence
        zone_tz = (
            await session.execute(select(Zone.timezone).where(Zone.id == pump.zone_id))
        ).scalar_one()
    for old in superseded:
        record(
            session,
            about(old),
            now,
            Outcome.superseded,
            Reason.superseded,
            f"the {old.priority} run of {pump.name!r} gave way to a {wish.priority} request "
            f"made at {local(now, zone_tz)}",
            detail={"superseded_by": str(request.id)},
        )
    for old in superseded:  # a superseded cycle ends its watering (the other pumps' too)
        await waterings.end_later_cycles(session, old, RunStatus.superseded, now)
    to_stop: list[PumpActivation] = []
    if wish.queue == "replace":
        to_stop = await _stop_others_on_source(session, source, pump, now)
    return request, to_stop


async def _ensure_room(
    session: AsyncSession, settings: Settings, site_id: uuid.UUID, pump: Pump, rank: int
) -> None:
    """Room for one more waiting request, counted under the quota's lock; the requests this
    one supersedes (lower priority, same pump) leave the queue as it joins."""
    superseded = (RunRequest.pump_id == pump.id) & (RunRequest.rank > rank)
    for_pump, in_site = (
        await session.execute(
            select(
                func.count().filter(RunRequest.pump_id == pump.id, RunRequest.rank <= rank),
                func.count().filter(~superseded),
            ).where(RunRequest.site_id == site_id, RunRequest.status == RunStatus.waiting)
        )
    ).one()
    for quota, used, where in (
        (Quota.waiting_run_requests_per_pump, for_pump, f"for pump {pump.name!r}"),
        (Quota.waiting_run_requests_per_site, in_site, "in the site"),
    ):
        limit = await quotas.limit_of(session, settings, site_id, quota)
        if used >= limit:
            raise quotas.QuotaExceeded(
                quota, limit, f"{used} run requests already wait {where}, its quota {quota}"
            )


async def _stop_others_on_source(
    session: AsyncSession, source: WaterSource, pump: Pump, now: datetime
) -> list[PumpActivation]:
    others = (
        (
            await session.execute(
                select(Pump)
                .where(
                    Pump.water_source_id == source.id,
                    Pump.id != pump.id,
                    Pump.active_activation_id.is_not(None),
                )
                .execution_options(populate_existing=True)
            )
        )
        .scalars()
        .all()
    )
    stopped = []
    for other in others:
        activation = await pumps.stop_locked(session, other, now, "replaced")
        if activation is not None:
            stopped.append(activation)
    return stopped


async def request_run(
    session: AsyncSession,
    settings: Settings,
    redis: ArqRedis,
    site_id: uuid.UUID,
    wish: Wish,
    idem: IdempotentRequest | None,
    render: Callable[[RunRequest], StoredAnswer],
) -> StoredAnswer:
    """A person's queued request: queue it, stop what `replace` displaces, then try at once.

    With an Idempotency-Key the answer at acceptance is stored in the same transaction; a
    replay returns it (the request's current state is at its `Location`)."""
    try:
        async with idempotency.begin(session, idem, settings.idempotency_ttl_s) as claim:
            if claim.replay is not None:
                return claim.replay
            request, to_stop = await add(session, settings, site_id, wish)
            await claim.store(render(request))
    except DBAPIError as exc:
        raise pumps.unavailable_if_lock_timeout(exc) from None
    for activation in to_stop:
        # A queued run was aborted in the transaction; a started one needs the device told.
        if activation.status in (ActivationStatus.starting, ActivationStatus.running):
            await queue.enqueue_stop(redis, activation.id, "replaced")
    await dispatch.start_waiting(session, settings, redis, site_id)
    async with session.begin():
        fresh = await session.get(RunRequest, request.id, populate_existing=True)
    assert fresh is not None
    return render(fresh)


async def cancel(session: AsyncSession, site_id: uuid.UUID, request_id: uuid.UUID) -> RunRequest:
    async with session.begin():
        request = (
            await session.execute(
                select(RunRequest)
                .where(RunRequest.id == request_id, RunRequest.site_id == site_id)
                .with_for_update()
            )
        ).scalar_one_or_none()
        if request is None:
            raise NotFound("run request not found")
        if request.status == RunStatus.waiting:
            now = (await session.execute(select(db_now_expr()))).scalar_one()
            request.status = RunStatus.cancelled
            request.resolved_at = now
            request.last_reason = Reason.cancelled
            # Cancelling a cycle cancels the rest of its watering: a person who stops one
            # cycle does not want the next one to start after the soak.
            await waterings.end_later_cycles(session, request, RunStatus.cancelled, now)
    return request


async def get(session: AsyncSession, site_id: uuid.UUID, request_id: uuid.UUID) -> RunRequest:
    request = (
        await session.execute(
            select(RunRequest).where(RunRequest.id == request_id, RunRequest.site_id == site_id)
        )
    ).scalar_one_or_none()
    if request is None:
        raise NotFound("run request not found")
    return request
