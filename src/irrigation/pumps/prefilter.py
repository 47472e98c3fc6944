"""A request for a pump that another request of this process is already deciding waits for
that decision, then looks at the committed pump (one look shared by every request that
waited on the same decision), without a lock or a transaction: if
the pump is busy, resting, in fault, disabled or its source halted (what a herd of
requests for one pump meets, 999 of 1,000 times), that is its answer, one round trip
instead of a transaction of four that queues on the source's lock. Anything else goes on
to the locked gate.

Safe because a refusal is: what it reads was committed, so the answer is the one the gate
would have given at that moment, and nothing is written. It never admits. Only requests
without an `Idempotency-Key`: a keyed answer is stored in the gate's transaction."""

import asyncio
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Row, Table, bindparam, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from irrigation.common.clock import DB_NOW, db_now_params
from irrigation.db import autocommit
from irrigation.fleet.models import Pump, WaterSource
from irrigation.pumps import fitness
from irrigation.pumps.errors import Refused
from irrigation.pumps.models import PumpActivation

# The pumps whose run a request of this process is deciding, each with what is set once
# it has committed or rolled back. One event loop per process (uvicorn's).
_deciding: dict[uuid.UUID, asyncio.Event] = {}

_PUMPS = cast(Table, Pump.__table__)
_SOURCES = cast(Table, WaterSource.__table__)
_RUN = cast(Table, PumpActivation.__table__).alias("busy")
# Built once: the pump's columns the checks read, its source's, the clock, its active run.
_LOOK = (
    select(
        _PUMPS.c.hardware_id,
        _PUMPS.c.enabled,
        _PUMPS.c.fault,
        _PUMPS.c.max_runtime_s,
        _PUMPS.c.cooldown_s,
        _PUMPS.c.cooldown_until,
        _PUMPS.c.nominal_flow_lpm,
        _PUMPS.c.active_activation_id,
        _SOURCES.c.id.label("source_id"),
        _SOURCES.c.halted_at,
        _SOURCES.c.max_flow_lpm,
        DB_NOW.label("now"),
        _RUN.c.run_deadline,
        _RUN.c.duration_s.label("busy_duration_s"),
    )
    .join(_SOURCES, _SOURCES.c.id == _PUMPS.c.water_source_id)
    .outerjoin(_RUN, _RUN.c.id == _PUMPS.c.active_activation_id)
    .where(_PUMPS.c.id == bindparam("pump_id"), _PUMPS.c.site_id == bindparam("site_id"))
)
_Looked = Row[*tuple[Any, ...]]
# The look in flight for the requests that waited on one decision (keyed by its event).
_looks: "dict[tuple[asyncio.Event, uuid.UUID], asyncio.Future[_Looked | None]]" = {}


@dataclass(frozen=True)
class _Source:
    id: uuid.UUID
    halted_at: datetime | None
    max_flow_lpm: float | None


def waiting_on(pump_id: uuid.UUID) -> asyncio.Event | None:
    """What is set when the request of this process deciding this pump is done, if any."""
    return _deciding.get(pump_id)


@contextmanager
def deciding(pump_id: uuid.UUID) -> Iterator[None]:
    """Mark this pump as decided by the caller until the block ends (its commit or
    rollback included), unless another request already has it marked."""
    if pump_id in _deciding:
        yield
        return
    done = _deciding[pump_id] = asyncio.Event()
    try:
        yield
    finally:
        del _deciding[pump_id]
        done.set()


async def refusal(
    decided: asyncio.Event,
    engine: AsyncEngine,
    site_id: uuid.UUID,
    pump_id: uuid.UUID,
    duration_s: int,
) -> Refused | None:
    """Once `decided` (`waiting_on`'s) is set, the refusal the pump's committed state gives,
    or None (the gate decides); a duration above its max runtime raises the gate's 422 as
    the gate would. The requests that waited on one decision share one look: it starts
    after each of them arrived, so it is as fresh for every one of them as a look of its
    own, and a herd's 999 waiters are one round trip, not 999 connections at once."""
    await decided.wait()
    key = (decided, site_id)
    look = _looks.get(key)
    if look is None:
        look = _looks[key] = asyncio.ensure_future(_look(engine, site_id, pump_id))
        look.add_done_callback(lambda _: _looks.pop(key, None))
    row = await asyncio.shield(look)
    if row is None:
        return None  # the gate answers 404, or the look failed: the gate decides
    source = _Source(row.source_id, row.halted_at, row.max_flow_lpm)
    pump = cast(fitness.PumpState, row)
    try:
        fitness.check(pump, source, row.now, row.run_deadline, row.busy_duration_s, duration_s)
    except Refused as refused:
        return refused
    return None


async def _look(engine: AsyncEngine, site_id: uuid.UUID, pump_id: uuid.UUID) -> _Looked | None:
    params = {"pump_id": pump_id, "site_id": site_id, **db_now_params()}
    try:
        async with autocommit(engine).connect() as conn:
            return (await conn.execute(_LOOK, params)).one_or_none()
    except (SQLAlchemyError, OSError):
        return None  # the locked gate meets the same trouble and answers it
