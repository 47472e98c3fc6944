"""Per-site quotas: the deployment's values, a site's own lower ones, and the 409 that names
the quota, for schedules, threshold rules and webhooks; one site's quota never limits
another; two creates racing for the last slot never both win."""

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import asyncpg
import httpx
import pytest

from irrigation.app import create_app
from irrigation.settings import Settings
from irrigation.stack import plain_url
from tests.support.api import Headers, bearer
from tests.support.factories import MakeKey, make_zone
from tests.support.problems import assert_invalid, assert_problem

QUOTAS = "/v1/sites/current/quotas"
QUOTA_NAMES = {
    "max_concurrent_imports": "quota_max_concurrent_imports",
    "max_upload_bytes": "max_upload_bytes",
    "waiting_run_requests_per_pump": "quota_waiting_run_requests_per_pump",
    "waiting_run_requests_per_site": "quota_waiting_run_requests_per_site",
    "max_schedules": "quota_max_schedules",
    "max_rules": "quota_max_rules",
    "max_webhooks": "quota_max_webhooks",
    "max_pending_quarantine": "quota_max_pending_quarantine",
}

AppClient = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
def app_client(settings: Settings) -> AppClient:
    """`async with app_client(quota_max_schedules=1) as c`: the API with other settings."""

    @asynccontextmanager
    async def make(**changes: Any) -> AsyncIterator[httpx.AsyncClient]:
        application = create_app(settings.model_copy(update=changes))
        transport = httpx.ASGITransport(app=application)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
                yield c
        finally:
            await application.state.redis.aclose()
            await application.state.engine.dispose()

    return make


async def set_quotas(client: httpx.AsyncClient, headers: Headers, **values: Any) -> dict[str, Any]:
    response = await client.patch(QUOTAS, json=values, headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def schedule_body(zone_id: str) -> dict[str, Any]:
    return {"zone_id": zone_id, "duration_s": 10, "start_times": ["06:00"]}


def rule_body(zone_id: str) -> dict[str, Any]:
    return {"zone_id": zone_id, "start_below": 20, "stop_above": 30, "duration_s": 10}


WEBHOOK = {"url": "https://example.com/hook"}


async def count_rows(settings: Settings, table: str) -> int:
    conn = await asyncpg.connect(plain_url(settings.database_url or ""))
    try:
        count: int = await conn.fetchval(f"SELECT count(*) FROM {table}")
    finally:
        await conn.close()
    return count


# The quotas resource -------------------------------------------------------------------


async def test_a_site_sees_the_deployments_quotas_until_it_sets_its_own(
    client: httpx.AsyncClient, admin: Headers, settings: Settings
) -> None:
    response = await client.get(QUOTAS, headers=admin)
    assert response.status_code == 200, response.text
    body = response.json()
    deployment = {name: getattr(settings, setting) for name, setting in QUOTA_NAMES.items()}
    assert body == {**deployment, "own": [], "deployment": deployment}


async def test_a_site_lowers_a_quota_and_null_gives_it_back_the_deployments(
    client: httpx.AsyncClient, admin: Headers, other_admin: Headers, settings: Settings
) -> None:
    lowered = await set_quotas(client, admin, max_schedules=2, max_webhooks=0)
    assert (lowered["max_schedules"], lowered["max_webhooks"]) == (2, 0)
    assert sorted(lowered["own"]) == ["max_schedules", "max_webhooks"]
    assert lowered["deployment"]["max_schedules"] == settings.quota_max_schedules
    assert (await client.get(QUOTAS, headers=admin)).json() == lowered
    # Another site keeps the deployment's.
    theirs = (await client.get(QUOTAS, headers=other_admin)).json()
    assert (theirs["max_schedules"], theirs["own"]) == (settings.quota_max_schedules, [])

    # Only what is sent changes; null goes back to the deployment's value.
    back = await set_quotas(client, admin, max_schedules=None)
    assert back["max_schedules"] == settings.quota_max_schedules
    assert (back["max_webhooks"], back["own"]) == (0, ["max_webhooks"])


async def test_a_quota_above_the_deployments_or_below_zero_is_422(
    client: httpx.AsyncClient, admin: Headers, settings: Settings
) -> None:
    above = {"max_rules": settings.quota_max_rules + 1}
    body = assert_invalid(
        await client.patch(QUOTAS, json=above, headers=admin),
        "body.max_rules",
        code="quota_above_deployment",
    )
    assert str(settings.quota_max_rules) in body["detail"]
    negative = await client.patch(QUOTAS, json={"max_rules": -1}, headers=admin)
    assert_invalid(negative, "body.max_rules")
    unknown = await client.patch(QUOTAS, json={"max_pumps": 1}, headers=admin)
    assert_invalid(unknown, "body.max_pumps")
    assert (await client.get(QUOTAS, headers=admin)).json()["own"] == []


async def test_the_quotas_need_the_admin_scope(
    client: httpx.AsyncClient, make_key: MakeKey
) -> None:
    for scope in ("read", "control", "ingest"):
        headers = bearer(await make_key(scope))
        assert_problem(await client.get(QUOTAS, headers=headers), 403, "insufficient_scope")
        patched = await client.patch(QUOTAS, json={"max_rules": 1}, headers=headers)
        assert_problem(patched, 403, "insufficient_scope")
    assert_problem(await client.get(QUOTAS), 401, "unauthorized")


async def test_a_deployment_lowered_below_a_sites_own_value_wins(
    app_client: AppClient, client: httpx.AsyncClient, admin: Headers
) -> None:
    await set_quotas(client, admin, max_rules=5)
    async with app_client(quota_max_rules=1) as strict:
        shown = (await strict.get(QUOTAS, headers=admin)).json()
        assert (shown["max_rules"], shown["deployment"]["max_rules"]) == (1, 1)
        zone = await make_zone(strict, admin)
        assert (
            await strict.post("/v1/threshold-rules", json=rule_body(zone["id"]), headers=admin)
        ).status_code == 201
        refused = await strict.post(
            "/v1/threshold-rules", json=rule_body(zone["id"]), headers=admin
        )
        assert assert_problem(refused, 409, "quota_exceeded")["limit"] == 1


# Schedules, rules, webhooks ------------------------------------------------------------


CREATES = [
    ("max_schedules", "/v1/schedules", schedule_body, "schedules"),
    ("max_rules", "/v1/threshold-rules", rule_body, "threshold_rules"),
    ("max_webhooks", "/v1/webhooks", lambda _: WEBHOOK, "webhook_subscriptions"),
]


@pytest.mark.parametrize(("quota", "path", "body", "table"), CREATES, ids=[c[0] for c in CREATES])
async def test_one_more_than_the_sites_quota_is_409_naming_it(
    client: httpx.AsyncClient,
    admin: Headers,
    other_admin: Headers,
    settings: Settings,
    quota: str,
    path: str,
    body: Callable[[str], dict[str, Any]],
    table: str,
) -> None:
    await set_quotas(client, admin, **{quota: 2})
    zone = await make_zone(client, admin)
    made = [await client.post(path, json=body(zone["id"]), headers=admin) for _ in range(2)]
    assert [r.status_code for r in made] == [201, 201]

    refused = await client.post(path, json=body(zone["id"]), headers=admin)
    problem = assert_problem(refused, 409, "quota_exceeded")
    assert (problem["quota"], problem["limit"]) == (quota, 2)
    assert quota in problem["detail"]
    assert await count_rows(settings, table) == 2

    # Another site is not limited by this site's quota.
    theirs = await make_zone(client, other_admin)
    for _ in range(3):
        created = await client.post(path, json=body(theirs["id"]), headers=other_admin)
        assert created.status_code == 201, created.text

    # Room again once one is deleted.
    deleted = await client.delete(f"{path}/{made[0].json()['id']}", headers=admin)
    assert deleted.status_code == 204, deleted.text
    again = await client.post(path, json=body(zone["id"]), headers=admin)
    assert again.status_code == 201, again.text


async def test_the_deployments_quota_applies_to_a_site_without_its_own(
    app_client: AppClient, admin: Headers
) -> None:
    async with app_client(quota_max_schedules=1, quota_max_webhooks=1) as strict:
        zone = await make_zone(strict, admin)
        first = await strict.post("/v1/schedules", json=schedule_body(zone["id"]), headers=admin)
        assert first.status_code == 201, first.text
        second = await strict.post("/v1/schedules", json=schedule_body(zone["id"]), headers=admin)
        assert assert_problem(second, 409, "quota_exceeded")["quota"] == "max_schedules"
        assert (await strict.post("/v1/webhooks", json=WEBHOOK, headers=admin)).status_code == 201
        hook = await strict.post("/v1/webhooks", json=WEBHOOK, headers=admin)
        assert assert_problem(hook, 409, "quota_exceeded")["quota"] == "max_webhooks"


@pytest.mark.parametrize(("quota", "path", "body", "table"), CREATES, ids=[c[0] for c in CREATES])
async def test_concurrent_creates_never_both_take_the_last_slot(
    client: httpx.AsyncClient,
    admin: Headers,
    settings: Settings,
    quota: str,
    path: str,
    body: Callable[[str], dict[str, Any]],
    table: str,
) -> None:
    await set_quotas(client, admin, **{quota: 3})
    # A zone each: creates in one zone already wait for each other on the zone's row lock.
    zones = [await make_zone(client, admin) for _ in range(10)]
    answers = await asyncio.gather(
        *(client.post(path, json=body(zone["id"]), headers=admin) for zone in zones)
    )
    statuses = sorted(r.status_code for r in answers)
    assert statuses == [201] * 3 + [409] * 7, [r.text for r in answers]
    assert await count_rows(settings, table) == 3
