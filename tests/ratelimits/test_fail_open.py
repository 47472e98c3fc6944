"""Without Redis the limiter lets requests through (fails open), counts each one it could
not check in a metric, and says so in the log at most once a minute."""

import asyncio
import time

import pytest
from prometheus_client import REGISTRY

from irrigation.common.limiter import RETRY_AFTER_FAILURE_S
from tests.ratelimits.conftest import Limited
from tests.support.api import Headers
from tests.support.processes import free_port

UNCHECKED = "irrigation_rate_limit_unchecked_total"


def unchecked() -> float:
    return REGISTRY.get_sample_value(UNCHECKED) or 0.0


async def test_without_redis_requests_pass_counted_in_a_metric_and_logged_once(
    limited: Limited, admin: Headers, capfd: pytest.CaptureFixture[str]
) -> None:
    # Nothing listens there: every connection attempt is refused.
    client = await limited(read="1/minute", redis_url=f"redis://127.0.0.1:{free_port()}/0")
    before = unchecked()

    # The process's own log output, as an operator reads it: structlog caches its loggers
    # on first use, so capturing by reconfiguring it misses a logger an earlier test used.
    capfd.readouterr()
    started = time.monotonic()
    answers = [await client.get("/v1/zones", headers=admin) for _ in range(5)]
    elapsed = time.monotonic() - started
    # Past the pause after a failure, Redis is tried again: still down, still no second
    # warning within the minute.
    await asyncio.sleep(RETRY_AFTER_FAILURE_S + 0.1)
    answers.append(await client.get("/v1/zones", headers=admin))
    logged = capfd.readouterr()

    assert [a.status_code for a in answers] == [200] * 6  # over "1/minute", yet let through
    assert all("RateLimit" not in a.headers for a in answers)
    assert unchecked() - before == 6
    lines = (logged.out + logged.err).splitlines()
    warnings = [line for line in lines if "rate_limiter_unavailable" in line]
    assert len(warnings) == 1, lines
    assert "warning" in warnings[0].lower()
    assert elapsed < 5, "a Redis that is down must not slow every request"
