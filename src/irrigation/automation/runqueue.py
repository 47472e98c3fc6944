"""The run queue: runs that found their pump busy, resting or its water source full wait
here, in priority order then age, and start through the same locked activation path.

Lock order is the activation path's everywhere: water source -> pump -> run request. A
request is inserted under the source and pump locks (so two inserts for one pump see each
other), and started by `pumps.service.admit` inside the transaction that marks it started,
so a run request becomes at most one activation."""

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from arq.connections import ArqRedis
from sqlalchemy import func, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from irrigation import queue
from irrigation.auth.models import Site
from irrigation.automation.decisions import Subject, local, record
from irrigation.automation.models import (
    Outcome,
    QueueMode,
    RunRequest,
    RunStatus,
    Schedule,
    ThresholdRule,
)
from irrigation.common import idempotency
from irrigation.common.clock import db_now_expr
from irrigation.common.errors import Invalid, NotFound
from irrigation.common.idempotency import IdempotentRequest, StoredAnswer
from irrigation.fleet.models import Pump, WaterSource, Zone
from irrigation.pumps import service as pumps
from irrigation.pumps.errors import (
    CapacityFull,
    InCooldown,
    PumpBusy,
    PumpDisabled,
    PumpFault,
    Refused,
)
from irrigation.pumps.models import ACTIVE, ActivationStatus, Priority, PumpActivation
from irrigation.settings import Settings

log = structlog.get_logger(__name__)

RANK = {Priority.manual: 0, Priority.emergency: 1, Priority.scheduled: 2, Priority.threshold: 3}
AUTOMATION = (Priority.scheduled, Priority.threshold)


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


def _subject(request: RunRequest) -> Subject:
    return Subject(
        site_id=request.site_id,
        zone_id=request.zone_id,
        pump_id=request.pump_id,
        rule_id=request.rule_id,
        schedule_id=request.schedule_id,
        run_request_id=request.id,
    )


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
    session: AsyncSession, site_id: uuid.UUID, wish: Wish
) -> tuple[RunRequest, list[PumpActivation]]:
    """Queue a wish inside the caller's transaction; returns it and, for `replace`, the
    runs to stop. A higher priority supersedes lower-priority requests waiting for the
    same pump."""
    source, pump, now = await lock_source_and_pump(
        session, site_id, wish.pump_id, all_pumps=wish.queue == "replace"
    )
    pumps.check_duration(pump, wish.duration_s)
    rank = RANK[wish.priority]
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
                .values(status=RunStatus.superseded, resolved_at=now, last_reason="superseded")
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
            _subject(old),
            now,
            Outcome.superseded,
            "superseded",
            f"the {old.priority} run of {pump.name!r} gave way to a {wish.priority} request "
            f"made at {local(now, zone_tz)}",
            detail={"superseded_by": str(request.id)},
        )
    to_stop: list[PumpActivation] = []
    if wish.queue == "replace":
        to_stop = await _stop_others_on_source(session, source, pump, now)
    return request, to_stop


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
            request, to_stop = await add(session, site_id, wish)
            await claim.store(render(request))
    except DBAPIError as exc:
        raise pumps.unavailable_if_lock_timeout(exc) from None
    for activation in to_stop:
        # A queued run was aborted in the transaction; a started one needs the device told.
        if activation.status in (ActivationStatus.starting, ActivationStatus.running):
            await queue.enqueue_stop(redis, activation.id, "replaced")
    await dispatch(session, settings, redis, site_id)
    async with session.begin():
        fresh = await session.get(RunRequest, request.id, populate_existing=True)
    assert fresh is not None
    return render(fresh)


@dataclass(frozen=True)
class _Waiting:
    request: RunRequest
    water_source_id: uuid.UUID
    pump_name: str
    source_name: str
    zone_tz: str
    paused_until: datetime | None
    rain_delay_until: datetime | None
    respects_rain_delay: bool
    # Read without a lock, as hints: a request that cannot start by them is not tried
    # (no lock taken); one that can is decided by `admit` under the locks.
    pump_busy: bool
    cooldown_until: datetime | None
    fault: str | None
    enabled: bool
    source_limit: int
    source_in_use: int


_IN_USE = (
    select(func.count())
    .where(PumpActivation.water_source_id == WaterSource.id, PumpActivation.status.in_(ACTIVE))
    .correlate(WaterSource)
    .scalar_subquery()
)


def _waiting_query(site_id: uuid.UUID | None) -> Any:
    stmt = (
        select(
            RunRequest,
            Pump.water_source_id,
            Pump.name,
            WaterSource.name,
            Zone.timezone,
            Site.paused_until,
            Site.rain_delay_until,
            Zone.rain_delay_until,
            Schedule.skip_if_rain_delay,
            Pump.active_activation_id.is_not(None),
            Pump.cooldown_until,
            Pump.fault,
            Pump.enabled,
            WaterSource.max_concurrent_pumps,
            _IN_USE,
        )
        .join(Pump, Pump.id == RunRequest.pump_id)
        .join(WaterSource, WaterSource.id == Pump.water_source_id)
        .join(Zone, Zone.id == RunRequest.zone_id)
        .join(Site, Site.id == RunRequest.site_id)
        .outerjoin(Schedule, Schedule.id == RunRequest.schedule_id)
        .where(RunRequest.status == RunStatus.waiting)
        .order_by(RunRequest.site_id, RunRequest.rank, RunRequest.position, RunRequest.id)
        .limit(1000)
    )
    if site_id is not None:
        stmt = stmt.where(RunRequest.site_id == site_id)
    return stmt


def _later(a: datetime | None, b: datetime | None) -> datetime | None:
    if a is None or b is None:
        return a or b
    return max(a, b)


async def dispatch(
    session: AsyncSession, settings: Settings, redis: ArqRedis, site_id: uuid.UUID | None = None
) -> int:
    """Start every waiting request that can start now, in priority order then age; skip
    those past their deadline. Returns how many started. Safe to run concurrently: each
    start is decided under the pump's lock and re-checks that the request still waits."""
    async with session.begin():
        now = (await session.execute(select(db_now_expr()))).scalar_one()
        rows = [
            _Waiting(
                r,
                src,
                pname,
                sname,
                tz,
                paused,
                _later(site_rain, zone_rain),
                skip is not False,
                *hints,
            )
            for r, src, pname, sname, tz, paused, site_rain, zone_rain, skip, *hints in (
                await session.execute(_waiting_query(site_id))
            ).all()
        ]
        finished = await _finished_predecessors(session, rows)
        # Detached: a later start that rolls back would expire them (and reload lazily).
        session.expunge_all()
    blocked_pumps: set[uuid.UUID] = set()
    blocked_sources: set[uuid.UUID] = set()
    starts: dict[uuid.UUID, int] = {}  # runs this dispatch started, per water source
    started = 0
    for w in rows:
        r = w.request
        automated = r.priority in AUTOMATION
        if r.deadline <= now:
            await _resolve(
                session,
                r,
                RunStatus.skipped,
                "deadline_passed",
                f"{w.pump_name!r} could not start before its deadline "
                f"{local(r.deadline, w.zone_tz)} (last held back by: {r.last_reason or 'nothing'})",
            )
            continue
        if r.pump_id in blocked_pumps or w.water_source_id in blocked_sources:
            where = "pump" if r.pump_id in blocked_pumps else "water source"
            await _defer(
                session,
                r,
                "queued_behind",
                f"{w.pump_name!r} waits behind an earlier or higher-priority request "
                f"for the same {where}",
            )
            continue
        if r.after_id is not None and r.after_id not in finished:
            blocked_pumps.add(r.pump_id)
            await _defer(
                session,
                r,
                "after_previous",
                f"{w.pump_name!r} waits for the zone's previous pump to finish",
            )
            continue
        if automated and w.paused_until is not None and w.paused_until > now:
            await _defer(
                session,
                r,
                "paused",
                f"automation is paused until {local(w.paused_until, w.zone_tz)}",
            )
            continue
        if automated and w.respects_rain_delay and w.rain_delay_until and w.rain_delay_until > now:
            await _resolve(
                session,
                r,
                RunStatus.skipped,
                "rain_delay",
                f"rain delay until {local(w.rain_delay_until, w.zone_tz)}",
            )
            continue
        in_use = starts.get(w.water_source_id, 0) + w.source_in_use
        hint = _hint(w, now, in_use)
        if hint is not None:
            outcome = hint
            await _defer(session, r, hint, _why(hint, w))
        else:
            outcome = await _try_start(session, settings, redis, w)
        if outcome == "started":
            started += 1
            starts[w.water_source_id] = starts.get(w.water_source_id, 0) + 1
            blocked_pumps.add(r.pump_id)
        elif outcome == "capacity":
            blocked_sources.add(w.water_source_id)
        else:
            blocked_pumps.add(r.pump_id)
    return started


def _hint(w: _Waiting, now: datetime, in_use: int) -> str | None:
    """Why the unlocked read says this request cannot start now, if it says so."""
    if not w.enabled:
        return "disabled"
    if w.fault is not None:
        return "fault"
    if w.pump_busy:
        return "pump_busy"
    if w.cooldown_until is not None and w.cooldown_until > now:
        return "cooldown"
    if in_use >= w.source_limit:
        return "capacity"
    return None


def _why(code: str, w: _Waiting) -> str:
    why = _WHY.get(code, code).format(pump=repr(w.pump_name), source=repr(w.source_name))
    return f"{why}; waits until {local(w.request.deadline, w.zone_tz)} at the latest"


async def _finished_predecessors(session: AsyncSession, rows: list[_Waiting]) -> set[uuid.UUID]:
    """Predecessors (of zone-wide runs) that are done: resolved and not holding their pump."""
    ids = {w.request.after_id for w in rows if w.request.after_id is not None}
    if not ids:
        return set()
    stmt = (
        select(RunRequest.id)
        .outerjoin(PumpActivation, PumpActivation.id == RunRequest.activation_id)
        .where(
            RunRequest.id.in_(ids),
            RunRequest.status != RunStatus.waiting,
            (PumpActivation.id.is_(None)) | PumpActivation.status.not_in(ACTIVE),
        )
    )
    return set((await session.execute(stmt)).scalars())


class _Gone(Exception):
    pass


_WHY = {
    "pump_busy": "{pump} is busy with another run",
    "cooldown": "{pump} is resting (cooldown)",
    "capacity": "water source {source} already feeds its maximum of pumps",
    "fault": "{pump} is latched in fault until an operator resets it",
    "disabled": "{pump} is disabled",
}


async def _try_start(
    session: AsyncSession, settings: Settings, redis: ArqRedis, w: _Waiting
) -> str:
    r = w.request
    activation: PumpActivation | None = None
    refusal: Refused | None = None
    try:
        async with session.begin():
            run = pumps.RunRequest(
                duration_s=r.duration_s,
                priority=Priority(r.priority),
                reason=r.reason,
                origin=r.origin,
            )
            try:
                activation = await pumps.admit(session, settings, r.site_id, r.pump_id, run)
            except Refused as exc:
                refusal = exc
            mine = await _lock_waiting(session, r.id)
            if mine is None:
                raise _Gone  # another dispatcher got there first: roll this admission back
            now = (await session.execute(select(db_now_expr()))).scalar_one()
            if activation is not None:
                mine.status = RunStatus.started
                mine.activation_id = activation.id
                mine.resolved_at = now
                mine.last_reason = "started"
                record(
                    session,
                    _subject(mine),
                    now,
                    Outcome.started,
                    "started",
                    f"{w.pump_name!r} for {r.duration_s} s ({r.reason or r.origin})",
                    activation_id=activation.id,
                    detail={"priority": r.priority},
                )
            elif refusal is not None and mine.last_reason != refusal.code:
                mine.last_reason = refusal.code
                record(
                    session,
                    _subject(mine),
                    now,
                    Outcome.deferred,
                    refusal.code,
                    _why(refusal.code, w),
                    detail={k: v for k, v in refusal.extra.items() if isinstance(v, str | int)},
                )
    except _Gone:
        return "gone"
    except (NotFound, Invalid) as exc:
        await _resolve(session, r, RunStatus.skipped, "invalid", str(exc.detail or exc))
        return "skipped"
    except DBAPIError as exc:
        log.warning("dispatch_lock_failed", run_request_id=str(r.id), error=str(exc))
        return "locked"
    if activation is not None:
        if settings.enqueue_fast_path:
            await queue.enqueue_start(redis, activation.id)
        return "started"
    assert refusal is not None
    if isinstance(refusal, CapacityFull):
        return "capacity"
    if isinstance(refusal, PumpBusy | InCooldown | PumpFault | PumpDisabled):
        return refusal.code
    return "refused"


async def _lock_waiting(session: AsyncSession, request_id: uuid.UUID) -> RunRequest | None:
    return (
        await session.execute(
            select(RunRequest)
            .where(RunRequest.id == request_id, RunRequest.status == RunStatus.waiting)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    ).scalar_one_or_none()


async def _defer(session: AsyncSession, r: RunRequest, reason: str, message: str) -> None:
    if r.last_reason == reason:
        return
    async with session.begin():
        mine = await _lock_waiting(session, r.id)
        if mine is None or mine.last_reason == reason:
            return
        now = (await session.execute(select(db_now_expr()))).scalar_one()
        mine.last_reason = reason
        record(session, _subject(mine), now, Outcome.deferred, reason, message)


async def _resolve(
    session: AsyncSession, r: RunRequest, status: RunStatus, reason: str, message: str
) -> None:
    async with session.begin():
        mine = await _lock_waiting(session, r.id)
        if mine is None:
            return
        now = (await session.execute(select(db_now_expr()))).scalar_one()
        mine.status = status
        mine.resolved_at = now
        mine.last_reason = reason
        record(session, _subject(mine), now, Outcome.skipped, reason, message)
        if mine.rule_id is not None:
            # The rule asked for water that never came: let it ask again while still dry. In
            # the skip's transaction: a rule left disarmed by a crash would never ask again.
            await session.execute(
                update(ThresholdRule).where(ThresholdRule.id == mine.rule_id).values(armed=True)
            )


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
            request.last_reason = "cancelled"
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
