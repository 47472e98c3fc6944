"""Keyset (cursor) pagination over (created_at, id)."""

import base64
import binascii
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Query
from pydantic import BaseModel
from sqlalchemy import Select, tuple_
from sqlalchemy.orm import InstrumentedAttribute

from irrigation.common.errors import Invalid

T = TypeVar("T")
MAX_LIMIT = 500
# Cursors are unpadded base64url; their content is the server's business.
CURSOR_PATTERN = "^[A-Za-z0-9_-]*$"
CURSOR_DESCRIPTION = (
    "Opaque: a previous page's `next_cursor`, unchanged. Anything else is 422 `invalid_cursor`."
)


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = None


@dataclass(frozen=True)
class PageParams:
    limit: int
    cursor: str | None


CursorQuery = Annotated[
    str | None,
    Query(
        max_length=200,
        description=CURSOR_DESCRIPTION,
        json_schema_extra={"pattern": CURSOR_PATTERN},
    ),
]


async def page_params(
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Page size (1-500).")] = 50,
    cursor: CursorQuery = None,
) -> PageParams:
    return PageParams(limit=limit, cursor=cursor)


def encode_cursor(created_at: datetime, row_id: uuid.UUID) -> str:
    raw = json.dumps([created_at.isoformat(), str(row_id)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created, row_id = json.loads(base64.urlsafe_b64decode(padded.encode()))
        if not isinstance(created, str) or not isinstance(row_id, str):
            raise ValueError("cursor parts must be strings")
        parsed = datetime.fromisoformat(created)
        if parsed.tzinfo is None:
            raise ValueError("naive timestamp")
        # In UTC now: a time that leaves datetime's range there would fail in the driver.
        return parsed.astimezone(UTC), uuid.UUID(row_id)
    except (
        ValueError,
        TypeError,
        OverflowError,
        binascii.Error,
        json.JSONDecodeError,
        UnicodeDecodeError,
    ):
        raise Invalid("cursor is not valid", field="query.cursor", code="invalid_cursor") from None


def paginate(
    stmt: Select[Any],
    created_col: InstrumentedAttribute[datetime],
    id_col: InstrumentedAttribute[uuid.UUID],
    params: PageParams,
    *,
    descending: bool = False,
) -> Select[Any]:
    """Order by (created_at, id) and start after the cursor; fetch one extra to see a next page."""
    key = tuple_(created_col, id_col)
    if params.cursor:
        created, row_id = decode_cursor(params.cursor)
        after = tuple_(created, row_id)
        stmt = stmt.where(key < after if descending else key > after)
    if descending:
        return stmt.order_by(created_col.desc(), id_col.desc()).limit(params.limit + 1)
    return stmt.order_by(created_col, id_col).limit(params.limit + 1)


def page_of(rows: Sequence[T], params: PageParams) -> tuple[list[T], str | None]:
    items = list(rows[: params.limit])
    if len(rows) > params.limit:
        last: Any = items[-1]
        return items, encode_cursor(last.created_at, last.id)
    return items, None
