"""Site-scoped get/list/update/delete shared by every tenant-owned, versioned table."""

import uuid
from typing import Any, Protocol, TypeVar

from sqlalchemy import ColumnElement, delete, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped

from irrigation.common.dberrors import STILL_REFERENCED, UNIQUE_VIOLATION, pg_error
from irrigation.common.errors import Duplicate, InUse, Invalid, NotFound, StaleVersion
from irrigation.common.pagination import PageParams, page_of, paginate


class Owned(Protocol):
    id: Mapped[uuid.UUID]
    site_id: Mapped[uuid.UUID]


M = TypeVar("M")


def label(model: type[Any]) -> str:
    return str(model.__tablename__).rstrip("s").replace("_", " ")


async def get_owned(
    session: AsyncSession,
    model: type[M],
    site_id: uuid.UUID,
    row_id: uuid.UUID,
    *,
    for_update: bool = False,
) -> M:
    """The row if it belongs to the site; another site's row is indistinguishable from none."""
    stmt = select(model).where(model.id == row_id, model.site_id == site_id)  # type: ignore[attr-defined]
    if for_update:
        stmt = stmt.with_for_update(key_share=True)
    row = (await session.execute(stmt)).scalar_one_or_none()
    if row is None:
        raise NotFound(f"{label(model)} not found")
    return row


async def get_referenced(
    session: AsyncSession, model: type[M], site_id: uuid.UUID, row_id: uuid.UUID, field: str
) -> M:
    """The row a body refers to, key-share locked so it cannot vanish before commit; another
    site's (or no) row is a bad request naming the field (422), not a leak."""
    try:
        return await get_owned(session, model, site_id, row_id, for_update=True)
    except NotFound:
        raise Invalid(f"{label(model)} {row_id} not found", field=f"body.{field}") from None


async def list_owned(
    session: AsyncSession,
    model: type[M],
    site_id: uuid.UUID,
    params: PageParams,
    *filters: ColumnElement[bool],
) -> tuple[list[M], str | None]:
    stmt = select(model).where(model.site_id == site_id, *filters)  # type: ignore[attr-defined]
    stmt = paginate(stmt, model.created_at, model.id, params)  # type: ignore[attr-defined]
    return page_of((await session.execute(stmt)).scalars().all(), params)


async def update_versioned(
    session: AsyncSession,
    model: type[M],
    site_id: uuid.UUID,
    row_id: uuid.UUID,
    version: int,
    values: dict[str, Any],
) -> M:
    """Compare-and-set on `version`: of two operators editing one row, the second gets 409."""
    table: Any = model
    stmt = (
        update(model)
        .where(table.id == row_id, table.site_id == site_id, table.version == version)
        .values(**values, version=table.version + 1)
        .returning(model)
        .execution_options(synchronize_session=False, populate_existing=True)
    )
    try:
        row = (await session.execute(stmt)).scalar_one_or_none()
    except IntegrityError as exc:
        raise _conflict(model, exc) from None
    if row is None:
        current: Any = await get_owned(session, model, site_id, row_id)
        raise StaleVersion(
            f"{label(model)} is at version {current.version}, not {version}",
            current_version=current.version,
        )
    return row


async def delete_owned(
    session: AsyncSession, model: type[M], site_id: uuid.UUID, row_id: uuid.UUID
) -> None:
    table: Any = model
    stmt = delete(model).where(table.id == row_id, table.site_id == site_id).returning(table.id)
    try:
        deleted = (await session.execute(stmt)).scalar_one_or_none()
    except IntegrityError as exc:
        raise _conflict(model, exc) from None
    if deleted is None:
        raise NotFound(f"{label(model)} not found")


async def flush_new(session: AsyncSession, row: Any) -> None:
    session.add(row)
    try:
        await session.flush()
    except IntegrityError as exc:
        raise _conflict(type(row), exc) from None


def _conflict(model: type[Any], exc: DBAPIError) -> Exception:
    err = pg_error(exc)
    if err.sqlstate in STILL_REFERENCED:
        referrer = (err.table or "other rows").replace("_", " ")
        return InUse(f"{label(model)} is still referenced by {referrer}")
    if err.sqlstate == UNIQUE_VIOLATION:
        return Duplicate(f"a {label(model)} with these values already exists ({err.constraint})")
    return exc
