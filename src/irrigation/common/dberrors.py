"""Reading PostgreSQL errors out of SQLAlchemy's wrappers."""

from dataclasses import dataclass

import asyncpg
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
# The server is going down or coming up: admin_shutdown (a restart, or the backend was
# terminated), crash_shutdown, cannot_connect_now (still starting or in recovery).
SHUTTING_DOWN = frozenset({"57P01", "57P02", "57P03"})


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


def _lost(state: str | None) -> bool:
    """connection_exception (08xxx: no connection, or it broke) or a server shutting down."""
    return state is not None and (state.startswith("08") or state in SHUTTING_DOWN)


def _raw_lost(exc: BaseException | None) -> bool:
    if isinstance(exc, OSError):  # the connect itself failed (refused, unreachable, timeout)
        return True
    if isinstance(exc, asyncpg.InterfaceError):
        # asyncpg's own "connection is closed"; its other interface errors are our bugs.
        return "closed" in str(exc)
    return isinstance(exc, asyncpg.PostgresError) and _lost(getattr(exc, "sqlstate", None))


def connection_lost(exc: BaseException) -> bool:
    """Whether the database connection, not the statement, failed: a pooled connection
    the server dropped (restart, terminated backend), or no connection to be had. Such a
    request can be answered 503 and retried; nothing it did was committed unless it was
    already committing."""
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated or _lost(pg_error(exc).sqlstate):
            return True
        return _raw_lost(exc.orig) or _raw_lost(getattr(exc.orig, "__cause__", None))
    return _raw_lost(exc)
