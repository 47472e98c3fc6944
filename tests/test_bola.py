"""The cross-site (BOLA) matrix, generated from openapi.yaml: every operation whose path
names an object is called with site B's object and site A's admin key, and must answer
404 `not_found`, the same answer as for an id that names nothing, and leave B's object as
it was (a GET shows B its own object). A new route with an id in its path joins the
matrix by itself; it fails here until the table below gives a valid body for it, so that
the 404 is the ownership check's and not a validation error's (FastAPI validates the
body before the route runs)."""

import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from irrigation.alerts.evaluate import evaluate_alerts
from irrigation.common.clock import utcnow
from irrigation.db import create_engine, create_sessionmaker
from irrigation.settings import Settings
from tests.support.api import Headers
from tests.support.factories import (
    activate,
    created,
    make_pump,
    make_rule,
    make_schedule,
    make_sensor,
    make_water_source,
    make_zone,
)
from tests.support.problems import assert_problem

SPEC = yaml.safe_load((Path(__file__).resolve().parents[1] / "openapi.yaml").read_text())
METHODS = ("get", "post", "put", "patch", "delete")
# A public address: the webhook is never delivered to in this test.
WEBHOOK_URL = "https://93.184.216.34/hook"
SOON = (utcnow() + timedelta(days=1)).isoformat()
BACKFILL = {"from": (utcnow() - timedelta(hours=2)).isoformat(), "to": utcnow().isoformat()}

# A valid body per operation that takes one (as B could send it for its own object).
BODIES: dict[tuple[str, str], Any] = {
    ("PATCH", "/v1/zones/{zone_id}"): {"version": 1, "name": "hijacked"},
    ("PATCH", "/v1/water-sources/{water_source_id}"): {"version": 1, "name": "hijacked"},
    ("PATCH", "/v1/pumps/{pump_id}"): {"version": 1, "name": "hijacked"},
    ("PATCH", "/v1/sensors/{sensor_id}"): {"version": 1, "name": "hijacked"},
    ("POST", "/v1/pumps/{pump_id}/activations"): {"duration_s": 5, "priority": "manual"},
    ("POST", "/v1/quarantine/{item_id}/approve"): None,
    ("PATCH", "/v1/webhooks/{webhook_id}"): {"version": 1, "description": "hijacked"},
    ("PATCH", "/v1/threshold-rules/{rule_id}"): {"version": 1, "name": "hijacked"},
    ("PATCH", "/v1/schedules/{schedule_id}"): {"version": 1, "name": "hijacked"},
    ("POST", "/v1/zones/{zone_id}/rain-delay"): {"until": SOON},
    ("POST", "/v1/sensors/{sensor_id}/calibrations"): {"gain": 2},
    ("POST", "/v1/sensors/{sensor_id}/calibrations/backfill"): BACKFILL,
}


def _operations() -> list[tuple[str, str, dict[str, Any]]]:
    found = []
    for path, item in SPEC["paths"].items():
        if "{" not in path:
            continue
        for method, operation in item.items():
            if method in METHODS:
                found.append((method.upper(), path, operation))
    return found


OPERATIONS = _operations()


def _query(operation: dict[str, Any]) -> dict[str, str]:
    """A value for each required query parameter, from its schema."""
    values: dict[str, str] = {}
    now = utcnow()
    for param in operation.get("parameters", []):
        if param["in"] != "query" or not param.get("required"):
            continue
        schema = param.get("schema", {})
        options = schema.get("anyOf", [schema])
        kinds = {o.get("format") or o.get("type") for o in options}
        if "enum" in schema:
            values[param["name"]] = schema["enum"][0]
        elif "date-time" in kinds:
            start = param["name"] in ("from", "start", "since")
            values[param["name"]] = (now - timedelta(hours=2 if start else 0)).isoformat()
        elif kinds & {"integer", "number"}:
            values[param["name"]] = "1"
        else:
            values[param["name"]] = "x"
    return values


@pytest.fixture
async def sessions(settings: Settings) -> Any:
    engine = create_engine(settings)
    yield create_sessionmaker(engine)
    await engine.dispose()


async def _objects_of(
    client: httpx.AsyncClient,
    owner: Headers,
    sessions: async_sessionmaker[AsyncSession],
    settings: Settings,
) -> dict[str, str]:
    """One object of each kind a path can name, all of the `owner`'s site."""
    zone = await make_zone(client, owner)
    source = await make_water_source(client, owner)
    pump = await make_pump(client, owner, zone_id=zone["id"], water_source_id=source["id"])
    other_pump = await make_pump(client, owner, zone_id=zone["id"])
    sensor = await make_sensor(client, owner, zone["id"], alert_max=50)
    activation = (await activate(client, owner, pump["id"], 5)).json()
    queued = (await activate(client, owner, pump["id"], 5, queue="append", deadline=SOON)).json()
    assert queued["kind"] == "run_request", queued
    key = await created(client, "/v1/api-keys", {"name": "victim", "scopes": ["read"]}, owner)
    now = utcnow()
    sent = await client.post(
        "/v1/readings",
        json={
            "readings": [
                {"sensor_id": sensor["id"], "ts": now.isoformat(), "value": 90},
                {"sensor_id": sensor["id"], "ts": now.isoformat(), "value": 250},
            ]
        },
        headers=owner,
    )
    assert sent.status_code == 200, sent.text
    job_id = sent.json()["job_id"]
    items = (await client.get("/v1/quarantine", params={"job_id": job_id}, headers=owner)).json()
    async with sessions() as session:
        await evaluate_alerts(session, settings)
    alerts = (await client.get("/v1/alerts", headers=owner)).json()["items"]
    assert alerts, "the sensor's reading above alert_max raised no alert"
    webhook = await created(
        client, "/v1/webhooks", {"url": WEBHOOK_URL, "events": ["alert.raised"]}, owner
    )
    calibrations = f"/v1/sensors/{sensor['id']}/calibrations"
    # Not yet in effect, so that B could delete it (A's DELETE must not).
    calibration = await created(client, calibrations, {"gain": 2, "effective_from": SOON}, owner)
    backfill = await client.post(f"{calibrations}/backfill", json=BACKFILL, headers=owner)
    assert backfill.status_code == 202, backfill.text
    return {
        "zone_id": zone["id"],
        "water_source_id": source["id"],
        "pump_id": other_pump["id"],
        "sensor_id": sensor["id"],
        "activation_id": activation["id"],
        "request_id": queued["id"],
        "key_id": key["id"],
        "job_id": job_id,
        "item_id": items["items"][0]["id"],
        "alert_id": alerts[0]["id"],
        "webhook_id": webhook["id"],
        "calibration_id": calibration["id"],
        "backfill_id": backfill.json()["id"],
        "rule_id": (await make_rule(client, owner, zone["id"]))["id"],
        "schedule_id": (await make_schedule(client, owner, zone["id"]))["id"],
    }


async def test_every_route_that_names_an_object_hides_another_sites_object(
    client: httpx.AsyncClient,
    admin: Headers,
    other_admin: Headers,
    sessions: async_sessionmaker[AsyncSession],
    settings: Settings,
    subtests: pytest.Subtests,
) -> None:
    assert len(OPERATIONS) >= 40
    missing = [(m, p) for m, p, op in OPERATIONS if "requestBody" in op and (m, p) not in BODIES]
    assert not missing, f"add a valid body for {missing}"
    theirs = await _objects_of(client, other_admin, sessions, settings)
    # Site A has objects too: its key is not simply empty-handed.
    await make_pump(client, admin)
    for method, path, operation in OPERATIONS:
        names = [p["name"] for p in operation.get("parameters", []) if p["in"] == "path"]
        unknown = [n for n in names if n not in theirs]
        with subtests.test(method=method, path=path):
            assert not unknown, f"no object of site B for {unknown}"
            url = path.format(**{n: theirs[n] for n in names})
            nobody = path.format(**{n: uuid.uuid4() for n in names})
            kwargs: dict[str, Any] = {"params": _query(operation)}
            if (method, path) in BODIES:
                kwargs["json"] = BODIES[(method, path)]
            # The object itself, where a route shows it (an action's path starts with it).
            shown = path[: path.index("}") + 1].format(**{n: theirs[n] for n in names})
            before = await client.get(shown, headers=other_admin)
            answer = await client.request(method, url, headers=admin, **kwargs)
            empty = await client.request(method, nobody, headers=admin, **kwargs)
            problem = assert_problem(answer, 404, "not_found")
            assert problem == assert_problem(empty, 404, "not_found")
            for value in theirs.values():
                assert value not in answer.text
            if method == "GET":
                # The object is there for its owner: the 404 above is the ownership check.
                own = await client.get(url, headers=other_admin, params=kwargs["params"])
                assert own.status_code == 200, own.text
            if before.status_code == 200:
                after = await client.get(shown, headers=other_admin)
                assert after.json() == before.json(), f"{method} {path} changed B's object"
