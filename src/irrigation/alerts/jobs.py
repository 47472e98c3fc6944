"""Worker side of alerts: the evaluation cron (every 10 s). Delivery is `webhooks.py`."""

from typing import Any

from irrigation.alerts import evaluate
from irrigation.common.worker_context import worker_context


async def evaluate_alerts(ctx: dict[str, Any]) -> int:
    """arq cron: raise, touch and clear alerts of every site; returns the transitions."""
    jc = worker_context(ctx)
    async with jc.sessions() as session:
        result = await evaluate.evaluate_alerts(session, jc.settings)
    return len(result.raised) + len(result.cleared)
