"""The one source of time: timezone-aware UTC, movable by tests."""

from datetime import UTC, datetime, timedelta

from sqlalchemy import ColumnElement, bindparam, func, literal, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.types import Interval

_offset = timedelta(0)


def utcnow() -> datetime:
    return datetime.now(UTC) + _offset


def move(delta: timedelta) -> None:
    """Shift this process's clock (tests only): both `utcnow` and `db_now` follow."""
    global _offset
    _offset += delta


def reset() -> None:
    global _offset
    _offset = timedelta(0)


def offset() -> timedelta:
    return _offset


def db_now_expr() -> ColumnElement[datetime]:
    """`clock_timestamp()` (not `now()`, the transaction's start) plus the test offset.

    Safety comparisons inside a row lock use the database's clock so that API hosts with
    skewed clocks still agree on cooldowns and deadlines.
    """
    return func.clock_timestamp() + literal(_offset, Interval())


# `db_now_expr()` for statements built once at import: the test offset is a parameter,
# given with each execution by `db_now_params()` (a literal would freeze it at import).
DB_NOW = func.clock_timestamp() + bindparam("clock_offset", type_=Interval())


def db_now_params() -> dict[str, timedelta]:
    return {"clock_offset": _offset}


async def db_now(session: AsyncSession) -> datetime:
    return (await session.execute(select(db_now_expr()))).scalar_one()
