"""Without Redis the limiter lets requests through (fails open), counts each one it could
not check in a metric, and says so in the log at most once a minute."""

import asyncio
import time

from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from irrigation.common.limiter import RETRY_AFTER_FAILURE_S
from tests.ratelimits.conftest import Limited
from tests.support.api import Headers
from tests.support.processes import free_port

UNCHECKED = "irrigation_rate_limit_unchecked_total"


def unchecked() -> float:
    return REGISTRY.get_sample_value(UNCHECKED) or 0.0


async def test_without_redis_requests_pass_counted_in_a_metric_and_logged_once(
    limited: Limited, admin: Headers
) -> None:
    # Nothing listens there: every connection attempt is refused.
    client = await limited(read="1/minute", redis_url=f"redis://127.0.0.1:{free_port()}/0")
    before = unchecked()

    started = time.monotonic()
    with capture_logs() as logs:
        answers = [await client.get("/v1/zones", headers=admin) for _ in range(5)]
        elapsed = time.monotonic() - started
        # Past the pause after a failure, Redis is tried again: still down, still no
        # second warning within the minute.
        await asyncio.sleep(RETRY_AFTER_FAILURE_S + 0.1)
        answers.append(await client.get("/v1/zones", headers=admin))

    assert [a.status_code for a in answers] == [200] * 6  # over "1/minute", yet let through
    assert all("RateLimit" not in a.headers for a in answers)
    assert unchecked() - before == 6
    warnings = [e for e in logs if e["event"] == "rate_limiter_unavailable"]
    assert len(warnings) == 1
    assert warnings[0]["log_level"] == "warning"
    assert elapsed < 5, "a Redis that is down must not slow every request"
