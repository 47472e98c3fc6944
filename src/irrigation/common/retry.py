"""Running a whole transaction again when PostgreSQL chose it as a deadlock's victim.

Only the victim's transaction is rolled back, so running it again from the start is safe;
the caller's function must open and commit its own transaction, and nothing it does
outside it may be repeated."""

from collections.abc import Awaitable, Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError

from irrigation.common.dberrors import DEADLOCK_DETECTED, pg_error

T = TypeVar("T")

DEADLOCK_ATTEMPTS = 3


async def retry_on_deadlock(
    transaction: Callable[[], Awaitable[T]],
    *,
    on_retry: Callable[[], None],
    attempts: int = DEADLOCK_ATTEMPTS,
) -> T:
    """`transaction()`, run up to `attempts` times in all while it is a deadlock's victim;
    `on_retry` is told of each retry (a metric, a log line). Any other error, or a deadlock
    on the last attempt, is raised."""
    attempt = 1
    while True:
        try:
            return await transaction()
        except DBAPIError as exc:
            if pg_error(exc).sqlstate != DEADLOCK_DETECTED or attempt >= attempts:
                raise
        on_retry()
        attempt += 1
