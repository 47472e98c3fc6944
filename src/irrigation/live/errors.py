"""The live feed's refusals, and Redis failures as 503s."""

from collections.abc import Iterator
from contextlib import contextmanager

from redis.exceptions import RedisError

from irrigation.common.errors import DomainError, Unauthorized, Unavailable


class InvalidTicket(Unauthorized):
    code, title = "invalid_ticket", "Invalid ticket"


class TooManyStreams(DomainError):
    status, code, title = 429, "too_many_streams", "Too many streams"


@contextmanager
def feed_unavailable() -> Iterator[None]:
    """Redis holds tickets, leases and the streams: without it there is no live feed, and
    the client hears 503 rather than a 500."""
    try:
        yield
    except (RedisError, OSError, TimeoutError) as exc:
        raise Unavailable(
            "the live feed is unavailable; try again", headers={"Retry-After": "1"}
        ) from exc
