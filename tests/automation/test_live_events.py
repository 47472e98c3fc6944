"""Automation decisions as live events in the site's stream, each the decision as the API
lists it, in the order of the transactions that took them (a start's decision after the
activation it admitted); nothing in another site's stream."""

import httpx
import redis.asyncio as aioredis

from irrigation.automation.schemas import DecisionOut
from irrigation.settings import Settings
from tests.automation.conftest import Engine, decisions
from tests.support.factories import activate, make_pump, make_zone
from tests.support.feed import events


async def test_every_decision_is_an_event_after_what_it_decided(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    other_admin: dict[str, str],
    engine: Engine,
    settings: Settings,
    redis: aioredis.Redis,
) -> None:
    pump = await make_pump(client, admin)
    elsewhere = await make_zone(client, other_admin)
    first = (await activate(client, admin, pump["id"], 5)).json()
    # Queued, tried at once (the API's dispatch): the pump is busy.
    urgent = await activate(client, admin, pump["id"], 5, queue="append", priority="emergency")
    assert urgent.status_code == 202, urgent.text
    # A manual run outranks it: the emergency gives way (superseded), the manual one waits.
    manual = await activate(client, admin, pump["id"], 5, queue="append")
    assert manual.status_code == 202, manual.text
    stopped = await client.post(f"/v1/pumps/{pump['id']}/stop", headers=admin)
    assert stopped.status_code == 200, stopped.text
    assert await engine.dispatch() == 1  # the worker's dispatch starts it

    found = await events(redis, settings.redis_namespace, pump["site_id"])
    assert [(e["type"], e["data"].get("outcome") or e["data"]["status"]) for e in found] == [
        ("activation", "queued"),
        ("pump", "running"),
        ("decision", "deferred"),
        ("decision", "superseded"),
        ("decision", "deferred"),
        ("activation", "aborted"),
        ("pump", "idle"),
        ("activation", "queued"),
        ("pump", "running"),
        ("decision", "started"),
    ]
    made = [e["data"] for e in found if e["type"] == "decision"]
    for data in made:
        assert set(data) == set(DecisionOut.model_fields)
        assert (data["zone_id"], data["pump_id"]) == (pump["zone_id"], pump["id"])
    urgent_id, manual_id = urgent.json()["id"], manual.json()["id"]
    assert [(d["run_request_id"], d["reason"]) for d in made] == [
        (urgent_id, "pump_busy"),
        (urgent_id, "superseded"),
        (manual_id, "pump_busy"),
        (manual_id, "started"),
    ]
    assert made[-1]["activation_id"] == found[7]["data"]["id"] != first["id"]
    listed = await decisions(client, admin, pump["zone_id"])
    assert list(reversed(listed)) == made  # newest first there
    assert await events(redis, settings.redis_namespace, elsewhere["site_id"]) == []
