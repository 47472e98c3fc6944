"""Dispatching the run queue: start every waiting request that can start now, in priority
order then age, packing each water source's flow budget by fit (`packing`); defer the
others with their reason, skip those past their deadline. Each start is
`pumps.service.admit` in the transaction that marks the request started.

An automated request of a zone with weather lockouts starts only in a pass that was given
the judge (`Lockouts`: the worker's dispatcher job, which has the forecasts); other passes
(after a trigger, after a person's request in the API) leave it to that one, within a
second."""

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import structlog
from arq.connections import ArqRedis
from sqlalchemy import Integer, Uuid, bindparam, case, exists, func, literal, select, true, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from irrigation import queue
from irrigation.auth.models import Site
from irrigation.automation import failures
from irrigation.automation.cycles import label
from irrigation.automation.decisions import about, local, record
from irrigation.automation.lockouts import Limits, Lockouts, Verdict
from irrigation.automation.models import (
    Outcome,
    Reason,
    RunRequest,
    RunStatus,
    Schedule,
    ThresholdRule,
)
from irrigation.automation.runqueue import waterings
from irrigation.automation.runqueue.packing import Behind, Packing, Waiter
from irrigation.common.clock import DB_NOW, db_now_expr, db_now_params
from irrigation.common.dberrors import (
    DEADLOCK_DETECTED,
    LOCK_NOT_AVAILABLE,
    QUERY_CANCELED,
    connection_lost,
    pg_error,
)
from irrigation.common.errors import Invalid, NotFound
from irrigation.fleet.models import Pump, WaterSource, Zone
from irrigation.pumps import flow
from irrigation.pumps import service as pumps
from irrigation.pumps.errors import (
    CapacityFull,
    FlowFull,
    InCooldown,
    PumpBusy,
    PumpDisabled,
    PumpFault,
    Refused,
    SourceHalted,
)
from irrigation.pumps.models import ACTIVE, Priority, PumpActivation
from irrigation.settings import Settings

log = structlog.get_logger(__name__)

AUTOMATION = (Priority.scheduled, Priority.threshold)
# Waiting requests one pass reads at most, every site's head first (_waiting_query; a
# bound parameter, read at each pass).
BATCH = 1000


class StartOutcome(StrEnum):
    """What one start attempt came to: `started`, `capacity` or `held` (block the water
    source), `flow` (waits for the source's flow; smaller runs may pass it) or anything
    else (blocks the pump)."""

    started = "started"
    capacity = "capacity"
    flow = "flow"
    held = "held"  # a request it would pass may not be passed any more
    pump_busy = "pump_busy"
    cooldown = "cooldown"
    fault = "fault"
    disabled = "disabled"
    source_halted = "source_halted"  # blocks the water source, like `capacity`
    refused = "refused"  # another refusal of the pumps' admission
    gone = "gone"  # another dispatcher resolved the request first
    skipped = "skipped"  # it can never start (the pump is gone, the duration too long)
    locked = "locked"  # a lock was not granted in time


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
    limits: Limits
    # Read without a lock, as hints: a request that cannot start by them is not tried
    # (no lock taken); one that can is decided by `admit` under the locks.
    pump_busy: bool
    cooldown_until: datetime | None
    fault: str | None
    enabled: bool
    source_limit: int
    source_in_use: int
    nominal_flow_lpm: float | None
    max_flow_lpm: float | None
    source_flow_in_use: float
    source_halted: bool

    def budget(self, drawn_lpm: float) -> flow.Budget | None:
        """The source's flow budget for this request, with what this pass started there."""
        if self.max_flow_lpm is None:
            return None
        running = self.source_flow_in_use + drawn_lpm
        return flow.budget_for(self.nominal_flow_lpm, self.max_flow_lpm, running)


_IN_USE = (
    select(func.count())
    .where(PumpActivation.water_source_id == WaterSource.id, PumpActivation.status.in_(ACTIVE))
    .correlate(WaterSource)
    .scalar_subquery()
)


# Written into the statement, not bound: a generic plan of a prepared statement (asyncpg
# prepares every statement) uses the partial index `WHERE status = 'waiting'` only for a
# constant; with a parameter it walks each site's whole history instead.
WAITING = literal(RunStatus.waiting.value, literal_execute=True)


def _active_sites(one_site: bool) -> Any:
    """The sites with waiting requests: a walk of ix_run_requests_waiting, one index probe
    per site rather than a read of every waiting row. `one_site`: the bound `site_id`."""
    if one_site:
        return select(bindparam("site_id", type_=Uuid).label("site_id")).cte("active")
    rr = RunRequest.__table__
    first = select(rr.c.site_id).where(rr.c.status == WAITING).order_by(rr.c.site_id).limit(1)
    walk = first.cte("walk", recursive=True)
    later = rr.alias("later")
    following = (
        select(later.c.site_id)
        .where(later.c.status == WAITING, later.c.site_id > walk.c.site_id)
        .order_by(later.c.site_id)
        .limit(1)
        .scalar_subquery()
    )
    walk = walk.union_all(select(following).where(walk.c.site_id.is_not(None)))
    return select(walk.c.site_id).where(walk.c.site_id.is_not(None)).cte("active")


def _waiting_query(one_site: bool) -> Any:
    """At most BATCH waiting requests, every site's head first: each site's first requests
    in (rank, position) order, a fair share of the batch each (all of it for a site alone),
    then every site's 1st, every site's 2nd, ... so one site's backlog never pushes another
    site's head out of the batch. A request backed off after its processing raised is left
    out until its `retry_at` (the bound `now`). Each site's share is read in a lateral
    through ix_run_requests_waiting: no step reads many more rows than it returns.

    Built once per shape at import (_WAITING_ALL, _WAITING_SITE): building it (an aliased
    entity over a CTE, each column proxied) cost more CPU than running it, every second."""
    active = _active_sites(one_site)
    sites = select(func.count()).select_from(active).scalar_subquery()
    batch = bindparam("batch", type_=Integer)
    share = func.greatest(batch // func.greatest(sites, 1), 1)
    order = (RunRequest.rank, RunRequest.position, RunRequest.id)
    heads = (
        select(RunRequest, func.row_number().over(order_by=order).label("nth"))
        .where(
            RunRequest.site_id == active.c.site_id,
            RunRequest.status == WAITING,
            failures.ready(RunRequest, bindparam("now", type_=RunRequest.retry_at.type)),
        )
        .order_by(*order)
        .limit(share)
        .lateral("heads")
    )
    # Chosen first, then joined: left to itself, the planner joins the fleet's tables inside
    # the loop over the sites, once per site.
    chosen = (
        select(heads)
        .select_from(active)
        .join(heads, true())
        .order_by(heads.c.nth, heads.c.site_id)
        .limit(batch)
        .cte("chosen")
        .prefix_with("MATERIALIZED")
    )
    request = aliased(RunRequest, chosen)
    return (
        select(
            request,
            Pump.water_source_id,
            Pump.name,
            WaterSource.name,
            Zone.timezone,
            Site.paused_until,
            Site.rain_delay_until,
            Zone.rain_delay_until,
            Schedule.skip_if_rain_delay,
            Zone.min_temp_c,
            Zone.max_wind_kmh,
            Zone.max_forecast_age_s,
            Zone.on_forecast_unavailable,
            Zone.latitude,
            Zone.longitude,
            Pump.active_activation_id.is_not(None),
            Pump.cooldown_until,
            Pump.fault,
            Pump.enabled,
            WaterSource.max_concurrent_pumps,
            _IN_USE,
            Pump.nominal_flow_lpm,
            WaterSource.max_flow_lpm,
            # Only for a source with a flow limit: the others pay no second subquery.
            case((WaterSource.max_flow_lpm.is_(None), 0.0), else_=flow.IN_USE_LPM),
            WaterSource.halted_at.is_not(None),
        )
        .join(Pump, Pump.id == request.pump_id)
        .join(WaterSource, WaterSource.id == Pump.water_source_id)
        .join(Zone, Zone.id == request.zone_id)
        .join(Site, Site.id == request.site_id)
        .outerjoin(Schedule, Schedule.id == request.schedule_id)
        .order_by(chosen.c.nth, chosen.c.site_id)
    )


_WAITING_ALL = _waiting_query(one_site=False)
_WAITING_SITE = _waiting_query(one_site=True)


def _anything_waiting(one_site: bool) -> Any:
    """The database's time, and whether any request waits (of the bound `site_id`): the
    cron's pass over an empty queue stops at this one statement (an index probe)."""
    rr = RunRequest.__table__
    waiting = rr.c.status == WAITING
    if one_site:
        waiting = waiting & (rr.c.site_id == bindparam("site_id", type_=Uuid))
    return select(DB_NOW, exists().where(waiting))


_ANYTHING_WAITING_ALL = _anything_waiting(one_site=False)
_ANYTHING_WAITING_SITE = _anything_waiting(one_site=True)


def _later(a: datetime | None, b: datetime | None) -> datetime | None:
    if a is None or b is None:
        return a or b
    return max(a, b)


@dataclass
class _Pass:
    """What one dispatch pass has learnt so far."""

    now: datetime
    # Predecessors (`after_id`) that are over, with when they ended (a soak counts from it).
    finished: dict[uuid.UUID, datetime]
    # Each zone's lockout verdict; None: this pass cannot judge lockouts.
    verdicts: dict[uuid.UUID, Verdict] | None
    packing: Packing
    blocked_pumps: set[uuid.UUID] = field(default_factory=set)
    blocked_sources: set[uuid.UUID] = field(default_factory=set)
    starts: dict[uuid.UUID, int] = field(default_factory=dict)  # per water source
    drawn: dict[uuid.UUID, float] = field(default_factory=dict)  # L/min, per water source
    started: int = 0


async def start_waiting(
    session: AsyncSession,
    settings: Settings,
    redis: ArqRedis,
    site_id: uuid.UUID | None = None,
    lockouts: Lockouts | None = None,
) -> int:
    """Start every waiting request that can start now, in priority order then age; skip
    those past their deadline. Returns how many started. Safe to run concurrently: each
    start is decided under the pump's lock and re-checks that the request still waits.

    With `lockouts`, the weather lockouts of the zones whose automated requests wait are
    judged first (no row locked meanwhile); without, those requests are left to a pass
    that has it.

    A request whose processing raises is logged, backed off (automation/failures.py) and
    holds back only its own pump for this pass: the others go on."""
    one_site = site_id is not None
    site: dict[str, Any] = {"site_id": site_id} if one_site else {}
    async with session.begin():
        probe = _ANYTHING_WAITING_SITE if one_site else _ANYTHING_WAITING_ALL
        now, any_waiting = (await session.execute(probe, site | db_now_params())).one()
        if not any_waiting:
            return 0
        query = _WAITING_SITE if one_site else _WAITING_ALL
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
                Limits(low, high, max_age, on_unavailable, lat, lon, tz),
                *hints,
            )
            for (
                r,
                src,
                pname,
                sname,
                tz,
                paused,
                site_rain,
                zone_rain,
                skip,
                low,
                high,
                max_age,
                on_unavailable,
                lat,
                lon,
                *hints,
            ) in (await session.execute(query, site | {"now": now, "batch": BATCH})).all()
        ]
        finished = await _finished_predecessors(session, rows)
        # Detached: a later start that rolls back would expire them (and reload lazily).
        session.expunge_all()
    verdicts = None
    if lockouts is not None:
        locked = {
            w.request.zone_id: w.limits
            for w in rows
            if w.request.priority in AUTOMATION and w.limits.any and w.request.deadline > now
        }
        verdicts = await lockouts.judge(locked, now)
    packing = Packing(settings.runqueue_max_bypass, settings.max_queue_delay_s)
    state = _Pass(now, finished, verdicts, packing)
    for w in rows:
        r = w.request
        try:
            await _dispatch_one(session, settings, redis, state, w)
            if r.failures:
                await failures.recovered(session, RunRequest, r.id)
        except Exception:  # one broken request must not stop the others
            log.exception("run_request_failed", run_request_id=str(r.id), site_id=str(r.site_id))
            state.blocked_pumps.add(r.pump_id)  # it keeps its place ahead of its pump's others
            await failures.failed(session, settings, RunRequest, r.id)
    return state.started


async def start_sites(
    session: AsyncSession, settings: Settings, redis: ArqRedis, sites: set[uuid.UUID]
) -> None:
    """Dispatch these sites (after a trigger queued runs); one site's failure stops no other."""
    for site_id in sites:
        try:
            await start_waiting(session, settings, redis, site_id)
        except Exception:  # the cron's pass over every site comes within a second
            log.exception("dispatch_failed", site_id=str(site_id))


async def _dispatch_one(
    session: AsyncSession, settings: Settings, redis: ArqRedis, state: _Pass, w: _Waiting
) -> None:
    r = w.request
    now = state.now
    automated = r.priority in AUTOMATION
    if r.deadline <= now:
        await _resolve(
            session,
            r,
            RunStatus.skipped,
            Reason.deadline_passed,
            f"{w.pump_name!r} could not start before its deadline "
            f"{local(r.deadline, w.zone_tz)} (last held back by: {r.last_reason or 'nothing'})",
            detail={"last_reason": r.last_reason},
        )
        return
    # First: a run whose predecessor is not over waits for that, whatever else holds its
    # pump (the predecessor, started in this pass, does).
    if r.after_id is not None and not await _after_previous(session, state, w):
        return
    if r.pump_id in state.blocked_pumps or w.water_source_id in state.blocked_sources:
        where = "pump" if r.pump_id in state.blocked_pumps else "water source"
        await _defer(
            session,
            r,
            Reason.queued_behind,
            f"{w.pump_name!r} waits behind an earlier or higher-priority request "
            f"for the same {where}",
        )
        return
    behind = state.packing.behind(w.water_source_id, r)
    if behind is not None:
        await _wait_behind(session, w, behind)
        return
    if automated and w.paused_until is not None and w.paused_until > now:
        await _defer(
            session,
            r,
            Reason.paused,
            f"automation is paused until {local(w.paused_until, w.zone_tz)}",
        )
        return
    if automated and w.respects_rain_delay and w.rain_delay_until and w.rain_delay_until > now:
        await _resolve(
            session,
            r,
            RunStatus.skipped,
            Reason.rain_delay,
            f"rain delay until {local(w.rain_delay_until, w.zone_tz)}",
        )
        return
    verdict = None
    if automated and w.limits.any:
        if state.verdicts is None:  # not judged here: the worker's dispatcher will
            state.blocked_pumps.add(r.pump_id)
            return
        verdict = state.verdicts[r.zone_id]
        if verdict.reason is not None:
            message = f"{verdict.message}; waits until {local(r.deadline, w.zone_tz)} at the latest"
            await _defer(session, r, verdict.reason, message, verdict.detail)
            return
    source = w.water_source_id
    in_use = state.starts.get(source, 0) + w.source_in_use
    budget = w.budget(state.drawn.get(source, 0.0))
    hint = _hint(w, now, in_use, budget)
    passing: list[Waiter] = []
    if hint is not None:
        outcome = StartOutcome(hint)
        if outcome == StartOutcome.flow and budget is not None:
            await _defer(session, r, Reason.capacity, _why_flow(w, budget), budget.detail())
        else:
            await _defer(session, r, Reason(hint), _why(Reason(hint), w))
    else:
        late = state.packing.too_late(source, r, now)
        if late is not None:
            state.blocked_pumps.add(r.pump_id)  # its pump's later requests stay behind it
            await _wait_behind(session, w, late)
            return
        passing = state.packing.passing(source)
        outcome = await _try_start(session, settings, redis, w, verdict, passing)
    if outcome == StartOutcome.started:
        state.started += 1
        state.starts[source] = state.starts.get(source, 0) + 1
        if budget is not None:
            state.drawn[source] = state.drawn.get(source, 0.0) + budget.requested_flow_lpm
        state.blocked_pumps.add(r.pump_id)
        if passing:
            state.packing.passed(source)
    elif outcome in (StartOutcome.capacity, StartOutcome.source_halted):
        state.blocked_sources.add(source)
    elif outcome == StartOutcome.held:  # another dispatcher's starts passed it meanwhile
        state.blocked_sources.add(source)
        await _defer(
            session,
            r,
            Reason.queued_behind,
            f"{w.pump_name!r} waits behind a request of water source {w.source_name!r} that "
            "waits for its flow and may not be passed again",
            {"limit": "flow"},
        )
    elif outcome == StartOutcome.flow:
        state.blocked_pumps.add(r.pump_id)
        state.packing.wait(source, Waiter(r, w.pump_name, r.bypass_count))
    else:
        state.blocked_pumps.add(r.pump_id)


async def _after_previous(session: AsyncSession, state: _Pass, w: _Waiting) -> bool:
    """Whether the request's predecessor (the zone's previous pump, or its watering's
    previous cycle) is over and the soak after it has passed; if not, it waits, holding
    back its own pump only: the water source is free for other zones' runs meanwhile."""
    r = w.request
    ended = state.finished.get(r.after_id) if r.after_id is not None else None
    cycle = label(r.cycle, r.cycles)
    if ended is None:
        state.blocked_pumps.add(r.pump_id)
        waits = (
            f"{cycle} of {w.pump_name!r} waits for the watering's previous run"
            if cycle
            else f"{w.pump_name!r} waits for the zone's previous pump"
        )
        await _defer(session, r, Reason.after_previous, f"{waits} to finish")
        return False
    soaked = ended + timedelta(seconds=r.soak_s)
    if soaked <= state.now:
        return True
    state.blocked_pumps.add(r.pump_id)
    await _defer(
        session,
        r,
        Reason.soaking,
        f"{cycle or 'the run'} of {w.pump_name!r} waits until {local(soaked, w.zone_tz)} "
        f"while the zone soaks ({r.soak_s} s after the previous run ended)",
        {
            "cycle": r.cycle,
            "cycles": r.cycles,
            "watering_id": str(r.watering_id) if r.watering_id else None,
            "min_soak_s": r.soak_s,
            "soak_until": soaked.isoformat(),
        },
    )
    return False


async def _wait_behind(session: AsyncSession, w: _Waiting, behind: Behind) -> None:
    message = behind.sentence(repr(w.pump_name), repr(w.source_name))
    await _defer(session, w.request, Reason.queued_behind, message, behind.detail())


def _hint(w: _Waiting, now: datetime, in_use: int, budget: flow.Budget | None) -> str | None:
    """Why the unlocked read says this request cannot start now, if it says so: a `Reason`,
    or `flow` (the source's flow budget is full; the request's reason is `capacity`)."""
    if not w.enabled:
        return Reason.disabled
    if w.fault is not None:
        return Reason.fault
    if w.source_halted:
        return Reason.source_halted
    if w.pump_busy:
        return Reason.pump_busy
    if w.cooldown_until is not None and w.cooldown_until > now:
        return Reason.cooldown
    if in_use >= w.source_limit:
        return Reason.capacity
    # A pump that alone exceeds the budget is left to `admit`, which refuses it for good.
    if budget is not None and not budget.exceeds_alone and not budget.fits:
        return StartOutcome.flow
    return None


def _why(reason: Reason, w: _Waiting) -> str:
    why = _WHY.get(reason, reason).format(pump=repr(w.pump_name), source=repr(w.source_name))
    return _until(why, w)


def _why_flow(w: _Waiting, budget: flow.Budget) -> str:
    return _until(budget.sentence(repr(w.source_name), repr(w.pump_name)), w)


def _until(why: str, w: _Waiting) -> str:
    return f"{why}; waits until {local(w.request.deadline, w.zone_tz)} at the latest"


async def _finished_predecessors(
    session: AsyncSession, rows: list[_Waiting]
) -> dict[uuid.UUID, datetime]:
    """Predecessors (of zone-wide runs, of a watering's cycles) that are done: resolved and
    not holding their pump; each with when it ended: its run's stop (the device's own stop
    time where it reported one), else when it was resolved (it never ran)."""
    ids = {w.request.after_id for w in rows if w.request.after_id is not None}
    if not ids:
        return {}
    stmt = (
        select(
            RunRequest.id,
            func.coalesce(PumpActivation.stopped_at, RunRequest.resolved_at, db_now_expr()),
        )
        .outerjoin(PumpActivation, PumpActivation.id == RunRequest.activation_id)
        .where(
            RunRequest.id.in_(ids),
            RunRequest.status != RunStatus.waiting,
            (PumpActivation.id.is_(None)) | PumpActivation.status.not_in(ACTIVE),
        )
    )
    return {row[0]: row[1] for row in (await session.execute(stmt)).all()}


class _Gone(Exception):
    pass


class _Held(Exception):
    """A request this start would pass may not be passed any more (found under the lock)."""


_WHY = {
    Reason.pump_busy: "{pump} is busy with another run",
    Reason.cooldown: "{pump} is resting (cooldown)",
    Reason.capacity: "water source {source} already feeds its maximum of pumps",
    Reason.fault: "{pump} is latched in fault until an operator resets it",
    Reason.disabled: "{pump} is disabled",
    Reason.source_halted: "water source {source} is halted after a leak until an operator "
    "resets it",
}


async def _try_start(
    session: AsyncSession,
    settings: Settings,
    redis: ArqRedis,
    w: _Waiting,
    verdict: Verdict | None = None,
    passing: list[Waiter] | None = None,
) -> StartOutcome:
    """Admit the request; `verdict`, the lockouts' word on it, goes into its start's
    decision (the forecast read, or why the lockouts were not checked). `passing`: the
    requests of its source waiting for flow that it starts ahead of; each counts the bypass
    in the same transaction, which is refused if one may not be passed any more."""
    r = w.request
    activation: PumpActivation | None = None
    refusal: Refused | None = None
    try:
        async with session.begin():
            run = pumps.ActivationParams(
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
                mine.last_reason = Reason.started
                cycle = label(r.cycle, r.cycles)
                what = f"{cycle} of {w.pump_name!r}" if cycle else repr(w.pump_name)
                message = f"{what} for {r.duration_s} s ({r.reason or r.origin})"
                detail: dict[str, Any] = {"priority": r.priority}
                if cycle:
                    detail |= {"cycle": r.cycle, "cycles": r.cycles}
                if verdict is not None:
                    detail["lockouts"] = verdict.detail
                    if verdict.message:
                        message += f"; {verdict.message}"
                if passing:
                    passed = await _count_bypass(session, settings, passing, r.duration_s, now)
                    if passed:
                        detail["bypassed"] = [str(p.request.id) for p in passed]
                        names = ", ".join(
                            f"{p.pump_name!r} (run request {p.request.id})" for p in passed
                        )
                        message += f"; started ahead of {names}, waiting for the source's flow"
                record(
                    session,
                    about(mine),
                    now,
                    Outcome.started,
                    Reason.started,
                    message,
                    activation_id=activation.id,
                    detail=detail,
                )
            elif refusal is not None and mine.last_reason != refusal.code:
                reason = Reason(refusal.code)
                mine.last_reason = reason
                why = (
                    _why_flow(w, refusal.budget)
                    if isinstance(refusal, FlowFull)
                    else _why(reason, w)
                )
                record(
                    session,
                    about(mine),
                    now,
                    Outcome.deferred,
                    reason,
                    why,
                    detail={
                        k: v for k, v in refusal.extra.items() if isinstance(v, str | int | float)
                    },
                )
    except _Gone:
        return StartOutcome.gone
    except _Held:
        return StartOutcome.held
    except (NotFound, Invalid) as exc:
        await _resolve(session, r, RunStatus.skipped, Reason.invalid, str(exc.detail or exc))
        return StartOutcome.skipped
    except DBAPIError as exc:
        if not _contended(exc):
            raise  # this request's own failure (bad data, a bug): backed off by the caller
        log.warning("dispatch_lock_failed", run_request_id=str(r.id), error=str(exc))
        return StartOutcome.locked
    if activation is not None:
        if settings.enqueue_fast_path:
            await queue.enqueue_start(redis, activation.id)
        return StartOutcome.started
    assert refusal is not None
    if isinstance(refusal, FlowFull):
        return StartOutcome.flow
    if isinstance(refusal, CapacityFull):
        return StartOutcome.capacity
    if isinstance(refusal, SourceHalted):
        return StartOutcome.source_halted
    if isinstance(refusal, PumpBusy | InCooldown | PumpFault | PumpDisabled):
        return StartOutcome(refusal.code)
    return StartOutcome.refused


async def _count_bypass(
    session: AsyncSession,
    settings: Settings,
    passing: list[Waiter],
    duration_s: int,
    now: datetime,
) -> list[Waiter]:
    """Count one bypass on each request still waiting that this start passes; under the
    source's lock (taken by `admit`), so every start on the source sees the others' counts.
    Raises `_Held` (the start is rolled back) if one was passed the most times allowed, or
    its deadline comes before this run would surely be over."""
    ids = [p.request.id for p in passing]
    rows = (
        await session.execute(
            update(RunRequest)
            .where(RunRequest.id.in_(ids), RunRequest.status == RunStatus.waiting)
            .values(bypass_count=RunRequest.bypass_count + 1)
            .returning(RunRequest.id, RunRequest.bypass_count, RunRequest.deadline)
            .execution_options(synchronize_session=False)
        )
    ).all()
    over_by = now + timedelta(seconds=settings.max_queue_delay_s + duration_s)
    for _, count, deadline in rows:
        if count > settings.runqueue_max_bypass or deadline <= over_by:
            raise _Held
    counted = {row[0] for row in rows}
    return [p for p in passing if p.request.id in counted]


def _contended(exc: DBAPIError) -> bool:
    """A lock not granted in time, a deadlock, a busy or restarting server: the next
    dispatch tries again (within a second), no back-off."""
    state = pg_error(exc).sqlstate or ""
    return (
        connection_lost(exc)
        or state in (LOCK_NOT_AVAILABLE, DEADLOCK_DETECTED, QUERY_CANCELED, "40001")
        or state[:2] in ("53", "57")
    )


async def _lock_waiting(session: AsyncSession, request_id: uuid.UUID) -> RunRequest | None:
    return (
        await session.execute(
            select(RunRequest)
            .where(RunRequest.id == request_id, RunRequest.status == RunStatus.waiting)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    ).scalar_one_or_none()


async def _defer(
    session: AsyncSession,
    r: RunRequest,
    reason: Reason,
    message: str,
    detail: dict[str, Any] | None = None,
) -> None:
    """One decision per change of the reason to wait, not one per pass."""
    if r.last_reason == reason:
        return
    async with session.begin():
        mine = await _lock_waiting(session, r.id)
        if mine is None or mine.last_reason == reason:
            return
        now = (await session.execute(select(db_now_expr()))).scalar_one()
        mine.last_reason = reason
        record(session, about(mine), now, Outcome.deferred, reason, message, detail=detail)


async def _resolve(
    session: AsyncSession,
    r: RunRequest,
    status: RunStatus,
    reason: Reason,
    message: str,
    detail: dict[str, Any] | None = None,
) -> None:
    async with session.begin():
        mine = await _lock_waiting(session, r.id)
        if mine is None:
            return
        now = (await session.execute(select(db_now_expr()))).scalar_one()
        mine.status = status
        mine.resolved_at = now
        mine.last_reason = reason
        record(session, about(mine), now, Outcome.skipped, reason, message, detail=detail)
        await waterings.end_later_cycles(session, mine, status, now)
        if mine.rule_id is not None:
            # The rule asked for water that never came: let it ask again while still dry. In
            # the skip's transaction: a rule left disarmed by a crash would never ask again.
            await session.execute(
                update(ThresholdRule).where(ThresholdRule.id == mine.rule_id).values(armed=True)
            )
