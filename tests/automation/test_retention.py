"""Automation history older than its retention is deleted; recent history and waiting
requests stay."""

from datetime import timedelta

import asyncpg
import httpx

from irrigation.automation.retention import purge_automation_history
from irrigation.common import clock
from irrigation.settings import Settings
from irrigation.stack import plain_url
from tests.automation.conftest import Engine, decisions, run_requests
from tests.support.factories import activate, make_pump


async def test_old_decisions_and_finished_requests_go_waiting_ones_stay(
    client: httpx.AsyncClient, admin: dict[str, str], engine: Engine, settings: Settings
) -> None:
    pump = await make_pump(client, admin, "hw-1")
    for _ in range(2):  # one starts, the other waits behind it
        response = await activate(client, admin, pump["id"], 5, queue="append")
        assert response.status_code == 202
    assert len(await decisions(client, admin, pump["zone_id"])) == 2

    clock.move(timedelta(days=settings.automation_history_days + 1))
    ctx = engine.job_ctx()
    assert await purge_automation_history(ctx) == 3  # 2 decisions + the started request
    assert await decisions(client, admin, pump["zone_id"]) == []
    left = await run_requests(client, admin)
    assert [r["status"] for r in left] == ["waiting"]
    conn = await asyncpg.connect(plain_url(settings.effective_database_url))
    try:
        assert await conn.fetchval("SELECT count(*) FROM pump_activations") == 1
    finally:
        await conn.close()
