"""The look a request for a pump takes after another request of this process decided it
(pumps/prefilter.py): refusals from the committed row, never an admission."""

import asyncio
import functools
import uuid
from datetime import UTC, datetime, timedelta

import httpx
from fastapi import FastAPI
from sqlalchemy import event

from irrigation.pumps import prefilter
from irrigation.pumps.errors import InCooldown, PumpBusy, PumpDisabled
from tests.support.factories import activate, make_pump
from tests.support.servers import run_sql


async def test_a_herd_on_one_pump_admits_one_and_most_are_refused_without_the_lock(
    client: httpx.AsyncClient, app: FastAPI, admin: dict[str, str]
) -> None:
    pump = await make_pump(client, admin, "hw-herd")
    locks: list[str] = []
    looks: list[str] = []

    def count(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if "FROM water_sources" in statement and "FOR NO KEY UPDATE" in statement:
            locks.append(statement)
        elif "JOIN water_sources" in statement and "busy" in statement:
            looks.append(statement)

    engine = app.state.engine.sync_engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        answers = await asyncio.gather(*(activate(client, admin, pump["id"], 5) for _ in range(20)))
    finally:
        event.remove(engine, "before_cursor_execute", count)
    admitted = [a.json() for a in answers if a.status_code == 202]
    refused = [a for a in answers if a.status_code == 409]
    assert len(admitted) == 1
    assert len(refused) == 19
    for answer in refused:
        assert answer.json()["code"] == "pump_busy"
        assert answer.json()["active_activation_id"] == admitted[0]["id"]
        assert 900 <= int(answer.headers["retry-after"]) <= 906  # run, then cooldown
    # Most were refused without the lock, and those that waited on one decision shared
    # one look: at most one per decision.
    assert len(locks) <= 10
    assert 1 <= len(looks) <= len(locks)


async def test_the_look_refuses_from_the_committed_row_and_leaves_the_rest_to_the_gate(
    client: httpx.AsyncClient, app: FastAPI, admin: dict[str, str], database_url: str
) -> None:
    engine = app.state.engine
    decided = asyncio.Event()
    decided.set()
    pump = await make_pump(client, admin, "hw-look")
    pump_id, site_id = uuid.UUID(pump["id"]), uuid.UUID(pump["site_id"])
    look = functools.partial(prefilter.refusal, decided, engine)
    assert await look(site_id, pump_id, 5) is None  # idle: the gate's to decide
    assert await look(uuid.uuid4(), pump_id, 5) is None  # another site's: the gate's 404

    run = (await activate(client, admin, pump["id"], 5)).json()
    busy = await look(site_id, pump_id, 5)
    assert isinstance(busy, PumpBusy)
    assert busy.extra["active_activation_id"] == run["id"]

    await run_sql(
        database_url,
        "UPDATE pumps SET active_activation_id = NULL, cooldown_until = $1 WHERE id = $2::uuid",
        datetime.now(UTC) + timedelta(seconds=60),
        pump["id"],
    )
    assert isinstance(await look(site_id, pump_id, 5), InCooldown)
    await run_sql(database_url, "UPDATE pumps SET enabled = false WHERE id = $1::uuid", pump["id"])
    assert isinstance(await look(site_id, pump_id, 5), PumpDisabled)
