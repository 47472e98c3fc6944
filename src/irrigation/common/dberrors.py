"""Reading PostgreSQL errors out of SQLAlchemy's wrappers."""

from dataclasses import dataclass

from sqlalchemy.exc import DBAPIError

FOREIGN_KEY_VIOLATION = "23503"
# PostgreSQL 18 reports a violated ON DELETE RESTRICT key as restrict_violation, where 15
# to 17 report foreign_key_violation: both mean "still referenced".
RESTRICT_VIOLATION = "23001"
STILL_REFERENCED = frozenset({FOREIGN_KEY_VIOLATION, RESTRICT_VIOLATION})
UNIQUE_VIOLATION = "23505"
LOCK_NOT_AVAILABLE = "55P03"
DEADLOCK_DETECTED = "40P01"
QUERY_CANCELED = "57014"


@dataclass(frozen=True)
class PgError:
    sqlstate: str | None
    constraint: str | None
    table: str | None


def pg_error(exc: DBAPIError) -> PgError:
    cause = getattr(exc.orig, "__cause__", None) or exc.orig
    return PgError(
        sqlstate=getattr(cause, "sqlstate", None) or getattr(exc.orig, "sqlstate", None),
        constraint=getattr(cause, "constraint_name", None),
        table=getattr(cause, "table_name", None),
    )
