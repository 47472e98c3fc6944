"""Activation use cases: the locked critical section (request), stop, stop-all, reset.

Lock order is fixed everywhere: water source -> pump -> activation, so two transactions
never wait on each other in a cycle. Rows are locked FOR NO KEY UPDATE: the same exclusion,
while inserts that reference the locked row (activations, events) are not blocked."""

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import cast

from arq.connections import ArqRedis
from sqlalchemy import (
    BindParameter,
    Float,
    Select,
    Table,
    bindparam,
    delete,
    func,
    insert,
    literal,
    literal_column,
    select,
    true,
    update,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import aliased
from sqlalchemy.orm.attributes import set_committed_value

from irrigation import queue
from irrigation.common import idempotency
from irrigation.common.clock import DB_NOW, db_now_expr, db_now_params, utcnow
from irrigation.common.dberrors import LOCK_NOT_AVAILABLE, pg_error
from irrigation.common.errors import NotFound, Unavailable
from irrigation.common.idempotency import IdempotentRequest, StoredAnswer
from irrigation.common.pagination import PageParams, page_of, paginate
from irrigation.fleet.models import Pump, WaterSource
from irrigation.fleet.service import emit_pump
from irrigation.pumps import fitness, flow, live, prefilter
from irrigation.pumps.errors import (
    CapacityFull,
    FlowFull,
    Refused,
)
from irrigation.pumps.models import (
    ACTIVE,
    ActivationEvent,
    ActivationStatus,
    OutboxJob,
    Priority,
    PumpActivation,
)
from irrigation.settings import Settings


@dataclass(frozen=True)
class ActivationParams:
    """What one activation is asked for (the run queue's `RunRequest` is a waiting wish)."""

    duration_s: int
    priority: Priority
    reason: str | None
    origin: str


Render = Callable[[PumpActivation | Refused], StoredAnswer]

# Made once: a fresh alias per request rebuilds its column proxies (measured: ~4% of the
# API's CPU under sustained load).
_BUSY = aliased(PumpActivation)

# The admission's statements, built once with bound parameters: building a select and
# computing its cache key cost each request more than SQLAlchemy's compiled cache saves
# it (issue 20, docs/benchmarks.md). The same SQL as before, values as parameters.
_PUMP_OF_SITE = (Pump.id == bindparam("pump_id"), Pump.site_id == bindparam("site_id"))
_LOCK_SOURCE_OF_PUMP = (
    select(WaterSource)
    .where(WaterSource.id == select(Pump.water_source_id).where(*_PUMP_OF_SITE).scalar_subquery())
    .with_for_update(key_share=True)
    .execution_options(populate_existing=True)
)
# The statuses as literals, as in the partial index's predicate: an `in_(ACTIVE)` is an
# expanding parameter, rendered into the SQL again on every execution.
_SOURCE_ACTIVE = (
    PumpActivation.water_source_id == bindparam("source_id"),
    PumpActivation.status.in_([literal_column(f"'{status}'") for status in ACTIVE]),
)
# The source's active runs: how many, the first to end; without a flow limit, the count
# alone; with one, also the pumps' flows against `max_flow_lpm`. Uncorrelated: the pump
# row the statement locks is not theirs.
_RUNNING = (
    select(func.count(), func.min(PumpActivation.run_deadline), literal(0.0))
    .select_from(PumpActivation)
    .where(*_SOURCE_ACTIVE)
)
_RUNNING_WITH_FLOW = (
    select(
        func.count(),
        func.min(PumpActivation.run_deadline),
        flow.drawn(bindparam("max_flow_lpm", type_=Float)),
    )
    .select_from(PumpActivation)
    .join(Pump, Pump.id == PumpActivation.pump_id)
    .where(*_SOURCE_ACTIVE)
)


def _lock_pump_with_run(
    running: Select[int, datetime | None, float],
) -> Select[Pump, datetime, datetime | None, int | None, int, datetime | None, float]:
    """The pump, locked, with the database clock, its active run's deadline (for
    Retry-After) and the source's active runs (`running`'s three figures).

    The count rides on the pump's lock, one round trip less per admission: the statement
    starts once the source's lock is granted, so its snapshot holds every run admitted to
    the source before (each admission holds the source's lock to its commit). If it then
    waits for the pump's lock, the row is read fresh after it and the count may still hold
    a run ended meanwhile: the error is a refusal, never one run too many."""
    figures = running.subquery("running")
    return (
        select(Pump, DB_NOW, _BUSY.run_deadline, _BUSY.duration_s, *figures.c)
        .outerjoin(_BUSY, _BUSY.id == Pump.active_activation_id)
        .join(figures, true())  # an aggregate: always one row
        .where(*_PUMP_OF_SITE)
        .with_for_update(key_share=True, of=Pump)
        .execution_options(populate_existing=True)
    )


_LOCK_PUMP_COUNTING = _lock_pump_with_run(_RUNNING)
_LOCK_PUMP_COUNTING_FLOW = _lock_pump_with_run(_RUNNING_WITH_FLOW)


def _admission_writes() -> Select[uuid.UUID]:
    """An admission's writes, one statement: the activation row, the pump's pointer and
    fencing number, the audit row and the outbox row, as data-modifying CTEs (one round
    trip; the rows' foreign keys are checked at the statement's end, when all exist).
    Every column is a bound parameter, named `a_` and the activation's column (`event_*`
    and `outbox_*` for the other rows' own): SQLAlchemy would read a parameter named as a
    column of any of the four tables as a value to write there."""
    acts = cast(Table, PumpActivation.__table__)
    events = cast(Table, ActivationEvent.__table__)
    outbox = cast(Table, OutboxJob.__table__)
    pumps = cast(Table, Pump.__table__)

    def bound(table: Table, names: dict[str, str]) -> dict[str, BindParameter[object]]:
        return {col: bindparam(name, type_=table.c[col].type) for col, name in names.items()}

    activation = (
        insert(acts)
        .values(bound(acts, {c: f"a_{c}" for c in _ACTIVATION_COLUMNS}))
        .returning(acts.c.id)
        .cte("admitted")
    )
    pointer = (
        update(pumps)
        .where(pumps.c.id == bindparam("a_pump_id"))
        .values(bound(pumps, {"last_sequence": "a_sequence", "active_activation_id": "a_id"}))
        .cte("pointer")
    )
    audit = insert(events).values(
        bound(
            events,
            {
                "id": "event_id",
                "activation_id": "a_id",
                "at": "a_requested_at",
                "status": "a_status",
                "cause": "event_cause",
                "detail": "event_detail",
                "created_at": "a_created_at",
            },
        )
    )
    job = insert(outbox).values(
        bound(
            outbox,
            {
                "id": "outbox_id",
                "job": "outbox_job",
                "activation_id": "a_id",
                "attempts": "outbox_attempts",
                "created_at": "a_created_at",
            },
        )
    )
    return select(activation.c.id).add_cte(pointer, audit.cte("audit"), job.cte("job"))


# What an admission writes of the activation row; the rest keep their defaults (None).
_ACTIVATION_COLUMNS = (
    "id",
    "site_id",
    "pump_id",
    "water_source_id",
    "priority",
    "status",
    "duration_s",
    "reason",
    "origin",
    "command_id",
    "sequence",
    "requested_at",
    "start_deadline",
    "created_at",
)
_ADMISSION_WRITES = _admission_writes()


async def lock_pump(
    session: AsyncSession, pump_id: uuid.UUID, site_id: uuid.UUID | None = None
) -> tuple[Pump, datetime]:
    """The pump row, locked, read fresh after the lock is granted, with the database clock."""
    stmt = (
        select(Pump, db_now_expr())
        .where(Pump.id == pump_id)
        .with_for_update(key_share=True, of=Pump)
        .execution_options(populate_existing=True)
    )
    if site_id is not None:
        stmt = stmt.where(Pump.site_id == site_id)
    row = (await session.execute(stmt)).one_or_none()
    if row is None:
        raise NotFound("pump not found")
    return row[0], row[1]


async def lock_activation(session: AsyncSession, activation_id: uuid.UUID) -> PumpActivation:
    stmt = (
        select(PumpActivation)
        .where(PumpActivation.id == activation_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return (await session.execute(stmt)).scalar_one()


async def request_activation(
    session: AsyncSession,
    settings: Settings,
    redis: ArqRedis,
    site_id: uuid.UUID,
    pump_id: uuid.UUID,
    run: ActivationParams,
    idem: IdempotentRequest | None,
    render: Render,
) -> StoredAnswer:
    """Admit or refuse one run, in one transaction; refusals are answers, stored for replay.

    Without a key, a request for a pump that another request of this process is deciding
    waits for it, then is refused from the committed row if it can be (pumps/prefilter.py):
    a herd on one pump does not queue 999 transactions on the source's lock."""
    engine = session.bind if idem is None else None
    if isinstance(engine, AsyncEngine) and (decided := prefilter.waiting_on(pump_id)):
        early = await prefilter.refusal(decided, engine, site_id, pump_id, run.duration_s)
        if early is not None:
            return render(early)
    activation: PumpActivation | None = None
    try:
        with prefilter.deciding(pump_id):
            async with idempotency.begin(session, idem, settings.idempotency_ttl_s) as claim:
                if claim.replay is not None:
                    return claim.replay
                try:
                    activation = await admit(session, settings, site_id, pump_id, run)
                    answer = render(activation)
                except Refused as refusal:
                    answer = render(refusal)
                await claim.store(answer)
    except DBAPIError as exc:
        raise unavailable_if_lock_timeout(exc) from None
    if activation is not None and settings.enqueue_fast_path:
        # After commit, on purpose: the job must find the row. If this is lost (crash,
        # Redis down), the outbox row committed with the activation is relayed later.
        await queue.enqueue_start(redis, activation.id)
    return answer


def unavailable_if_lock_timeout(exc: DBAPIError) -> Exception:
    if pg_error(exc).sqlstate == LOCK_NOT_AVAILABLE:
        return Unavailable(
            "the pump is locked by another operation; try again",
            code="lock_timeout",
            headers={"Retry-After": "1"},
        )
    return exc


check_duration = fitness.check_duration


async def lock_source_of(
    session: AsyncSession, site_id: uuid.UUID, pump_id: uuid.UUID
) -> WaterSource:
    """The pump's water source, locked: the first lock of the fixed order."""
    params = {"pump_id": pump_id, "site_id": site_id}
    source = (await session.execute(_LOCK_SOURCE_OF_PUMP, params)).scalar_one_or_none()
    if source is None:
        raise NotFound("pump not found")
    return source


async def admit(
    session: AsyncSession,
    settings: Settings,
    site_id: uuid.UUID,
    pump_id: uuid.UUID,
    run: ActivationParams,
) -> PumpActivation:
    # Round trips after BEGIN: lock the source (found through the pump), lock the pump with
    # the clock, its active run's deadline and the source's active runs; then a refusal
    # commits, an admission writes its rows in one statement and commits.
    source = await lock_source_of(session, site_id, pump_id)
    limit = source.max_flow_lpm
    params = {"pump_id": pump_id, "site_id": site_id, "source_id": source.id, **db_now_params()}
    if limit is None:
        row = (await session.execute(_LOCK_PUMP_COUNTING, params)).one_or_none()
    else:
        params["max_flow_lpm"] = limit
        row = (await session.execute(_LOCK_PUMP_COUNTING_FLOW, params)).one_or_none()
    if row is None:
        raise NotFound("pump not found")
    pump, now, busy_deadline, busy_duration, running, first_end, drawn = row
    if pump.water_source_id != source.id:
        raise Unavailable("the pump was moved to another water source; try again", code="retry")

    fitness.check(pump, source, now, busy_deadline, busy_duration, run.duration_s)
    # Counted under the source's lock, which every admission to the source holds to its
    # commit: two admissions never both see the room that only one of them fits in.
    retry = fitness.seconds_until(first_end, now) if first_end else None
    if running >= source.max_concurrent_pumps:
        raise CapacityFull(source.id, source.max_concurrent_pumps, retry)
    if limit is not None:
        budget = flow.budget_for(pump.nominal_flow_lpm, limit, float(drawn))
        if not budget.fits:
            raise FlowFull(source.id, budget, retry)

    sequence = pump.last_sequence + 1
    activation_id = uuid.uuid4()
    values = {
        "id": activation_id,
        "site_id": site_id,
        "pump_id": pump.id,
        "water_source_id": source.id,
        "priority": run.priority,
        "status": ActivationStatus.queued,
        "duration_s": run.duration_s,
        "reason": run.reason,
        "origin": run.origin,
        "command_id": f"{activation_id}",
        "sequence": sequence,
        "requested_at": now,
        "start_deadline": now + timedelta(seconds=settings.max_queue_delay_s),
        "created_at": utcnow(),
    }
    # One Core statement for the writes, not the unit of work: its flush (the pump's
    # update, the audit and outbox rows, each a round trip) was ~30 % of the API's CPU per
    # admission (issue 20, docs/benchmarks.md). The live events are emitted from the values
    # in hand rather than from the pump's ORM history.
    detail = {"origin": run.origin, "priority": run.priority}
    await session.execute(
        _ADMISSION_WRITES,
        {
            **{f"a_{column}": value for column, value in values.items()},
            "event_id": uuid.uuid4(),
            "event_cause": "requested",
            "event_detail": detail,
            "outbox_id": uuid.uuid4(),
            "outbox_job": queue.START_ACTIVATION,
            "outbox_attempts": 0,
        },
    )
    # Never added to the session: the answer and the events are made from it.
    activation = PumpActivation(**values)
    # The pump as the statement left it, without marking it for another UPDATE at commit.
    set_committed_value(pump, "last_sequence", sequence)
    set_committed_value(pump, "active_activation_id", activation_id)
    live.emit_transition(session, activation, pump.zone_id, now, "requested")
    emit_pump(session, pump, now)
    return activation


async def stop_pump(
    session: AsyncSession,
    redis: ArqRedis,
    site_id: uuid.UUID,
    pump_id: uuid.UUID | None,
    cause: str,
) -> list[PumpActivation]:
    """Stop the active activation of one pump (or, with no pump, of every pump of the site).

    A queued run is aborted here; a starting or running one is marked and handed to the
    worker, which tells the device and records the stop."""
    try:
        async with session.begin():
            if pump_id is not None:
                pumps = [(await lock_pump(session, pump_id, site_id))[0]]
            else:
                # Every pump of the site, idle ones too: an admission in flight holds its
                # pump's lock until its run is on the row, so this waits for it and then
                # sees the run. Locking only the pumps whose committed row shows a run would
                # miss it, and leave a run admitted before stop-all returned running.
                pumps = list(
                    (
                        await session.execute(
                            select(Pump)
                            .where(Pump.site_id == site_id)
                            .order_by(Pump.id)  # one order for every multi-row lock
                            .with_for_update(key_share=True)
                            .execution_options(populate_existing=True)
                        )
                    )
                    .scalars()
                    .all()
                )
            now = (await session.execute(select(db_now_expr()))).scalar_one()
            stopped = [
                a for p in pumps if (a := await stop_locked(session, p, now, cause)) is not None
            ]
    except DBAPIError as exc:
        raise unavailable_if_lock_timeout(exc) from None
    for activation in stopped:
        if activation.status in (ActivationStatus.starting, ActivationStatus.running):
            await queue.enqueue_stop(redis, activation.id, cause)
    return stopped


async def stop_locked(
    session: AsyncSession, pump: Pump, now: datetime, cause: str, **detail: object
) -> PumpActivation | None:
    """Stop the locked pump's active run: a queued one is aborted here, a starting or
    running one is marked for the stop job (which the caller enqueues after its commit).
    `detail` goes into the audit row (why, in figures)."""
    if pump.active_activation_id is None:
        return None
    activation = await lock_activation(session, pump.active_activation_id)
    if activation.status == ActivationStatus.queued:
        activation.status = ActivationStatus.aborted
        activation.stopped_at = now
        activation.stop_cause = cause
        pump.active_activation_id = None
        await session.execute(delete(OutboxJob).where(OutboxJob.activation_id == activation.id))
        live.record(session, pump, activation, now, cause, **detail)
    elif activation.stop_requested_at is None:
        activation.stop_requested_at = now
        live.record(session, pump, activation, now, "stop_requested", by=cause, **detail)
    await session.flush()
    return activation


async def reset_fault(session: AsyncSession, site_id: uuid.UUID, pump_id: uuid.UUID) -> Pump:
    async with session.begin():
        pump, now = await lock_pump(session, pump_id, site_id)
        pump.fault = None
        pump.fault_at = None
        live.pump_changed(session, pump, now)
    return pump


async def get_activation(
    session: AsyncSession, site_id: uuid.UUID, activation_id: uuid.UUID
) -> PumpActivation:
    stmt = select(PumpActivation).where(
        PumpActivation.id == activation_id, PumpActivation.site_id == site_id
    )
    activation = (await session.execute(stmt)).scalar_one_or_none()
    if activation is None:
        raise NotFound("activation not found")
    return activation


async def list_events(
    session: AsyncSession, site_id: uuid.UUID, activation_id: uuid.UUID, params: PageParams
) -> tuple[list[ActivationEvent], str | None]:
    await get_activation(session, site_id, activation_id)
    stmt = paginate(
        select(ActivationEvent).where(ActivationEvent.activation_id == activation_id),
        ActivationEvent.created_at,
        ActivationEvent.id,
        params,
    )
    return page_of((await session.execute(stmt)).scalars().all(), params)


async def list_activations(
    session: AsyncSession, site_id: uuid.UUID, pump_id: uuid.UUID, params: PageParams
) -> tuple[list[PumpActivation], str | None]:
    exists = await session.execute(
        select(Pump.id).where(Pump.id == pump_id, Pump.site_id == site_id)
    )
    if exists.first() is None:
        raise NotFound("pump not found")
    stmt = paginate(
        select(PumpActivation).where(PumpActivation.pump_id == pump_id),
        PumpActivation.created_at,
        PumpActivation.id,
        params,
        descending=True,
    )
    return page_of((await session.execute(stmt)).scalars().all(), params)
