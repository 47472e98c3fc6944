"""Webhooks, delivered to a real local HTTP receiver: signed with the secret from the
create answer, retried with backoff, given up after the last attempt, never held up by a
dead endpoint, and logged. The crons are called as the worker calls them."""

import asyncio
import hashlib
import hmac
import json
import time
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from irrigation.alerts.webhooks import deliver_webhooks
from irrigation.common import clock
from irrigation.settings import Settings
from tests.alerts.conftest import WEBHOOK_TIMEOUT_S, Receiver
from tests.alerts.helpers import alerts, evaluate, send
from tests.support.api import Headers, walk
from tests.support.factories import make_sensor
from tests.support.problems import assert_invalid, assert_problem
from tests.support.processes import free_port

Sessions = async_sessionmaker[AsyncSession]


async def subscribe(
    client: httpx.AsyncClient, headers: Headers, url: str, **fields: Any
) -> dict[str, Any]:
    response = await client.post("/v1/webhooks", json={"url": url, **fields}, headers=headers)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def deliveries(
    client: httpx.AsyncClient, headers: Headers, webhook_id: str, **filters: str
) -> list[Any]:
    response = await client.get(
        f"/v1/webhooks/{webhook_id}/deliveries", params=filters, headers=headers
    )
    assert response.status_code == 200, response.text
    items: list[Any] = response.json()["items"]
    return items


async def raise_alert(
    client: httpx.AsyncClient, headers: Headers, sessions: Sessions, settings: Settings
) -> dict[str, Any]:
    sensor = await make_sensor(client, headers, alert_min=10)
    await send(client, headers, sensor["id"], 2)
    await evaluate(sessions, settings)
    return sensor


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """What a receiver does: HMAC-SHA256(secret, "{timestamp}.{raw body}")."""
    signed = headers["x-irrigation-timestamp"].encode() + b"." + body
    expected = "sha256=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, headers["x-irrigation-signature"])


async def test_raised_alert_is_posted_signed_with_the_secret_from_the_create_answer(
    client: httpx.AsyncClient,
    admin: Headers,
    sessions: Sessions,
    settings: Settings,
    ctx: dict[str, Any],
    receiver: Receiver,
) -> None:
    hook = await subscribe(client, admin, f"{receiver.url}/ok")
    assert len(hook["secret"]) == 43  # 32 random bytes, URL-safe base64
    sensor = await raise_alert(client, admin, sessions, settings)
    (alert,) = await alerts(client, admin)

    assert await deliver_webhooks(ctx) == 1

    (request,) = receiver.at("/ok")
    assert verify(hook["secret"], request.headers, request.body)
    assert not verify("another secret", request.headers, request.body)
    assert request.headers["content-type"] == "application/json"
    assert request.headers["x-irrigation-event"] == "alert.raised"
    assert abs(int(request.headers["x-irrigation-timestamp"]) - time.time()) < 60
    body = json.loads(request.body)
    assert body["id"] == request.headers["x-irrigation-delivery"]
    assert body["event"] == "alert.raised"
    assert body["created_at"]
    assert body["data"] == alert
    assert body["data"]["subject_id"] == sensor["id"]
    (logged,) = await deliveries(client, admin, hook["id"])
    assert logged["id"] == body["id"]
    assert (logged["status"], logged["attempts"], logged["last_status_code"]) == (
        "delivered",
        1,
        200,
    )
    assert logged["delivered_at"] is not None
    assert await deliver_webhooks(ctx) == 0  # nothing due any more


async def test_every_transition_is_delivered_to_the_subscriptions_that_want_it(
    client: httpx.AsyncClient,
    admin: Headers,
    sessions: Sessions,
    settings: Settings,
    ctx: dict[str, Any],
    receiver: Receiver,
) -> None:
    await subscribe(client, admin, f"{receiver.url}/ok-all")
    await subscribe(client, admin, f"{receiver.url}/ok-cleared", events=["alert.cleared"])
    await subscribe(client, admin, f"{receiver.url}/ok-off", enabled=False)
    sensor = await raise_alert(client, admin, sessions, settings)
    (alert,) = await alerts(client, admin)
    await client.post(f"/v1/alerts/{alert['id']}/ack", headers=admin)
    await send(client, admin, sensor["id"], 20)
    await evaluate(sessions, settings)

    assert await deliver_webhooks(ctx) == 4

    events = sorted(json.loads(r.body)["event"] for r in receiver.at("/ok-all"))
    assert events == ["alert.acknowledged", "alert.cleared", "alert.raised"]
    (cleared,) = receiver.at("/ok-cleared")
    data = json.loads(cleared.body)["data"]
    assert (data["id"], data["status"]) == (alert["id"], "cleared")
    assert receiver.at("/ok-off") == []


async def test_another_sites_alerts_never_reach_this_sites_webhooks(
    client: httpx.AsyncClient,
    admin: Headers,
    other_admin: Headers,
    sessions: Sessions,
    settings: Settings,
    ctx: dict[str, Any],
    receiver: Receiver,
) -> None:
    await subscribe(client, admin, f"{receiver.url}/ok-a")
    await raise_alert(client, other_admin, sessions, settings)

    assert await deliver_webhooks(ctx) == 0
    assert receiver.requests == []


async def test_failed_attempts_are_retried_with_exponential_backoff(
    client: httpx.AsyncClient,
    admin: Headers,
    sessions: Sessions,
    settings: Settings,
    ctx: dict[str, Any],
    receiver: Receiver,
) -> None:
    hook = await subscribe(client, admin, f"{receiver.url}/flaky")
    receiver.script("/flaky", [500, 503])
    await raise_alert(client, admin, sessions, settings)

    assert await deliver_webhooks(ctx) == 1  # 500
    (logged,) = await deliveries(client, admin, hook["id"])
    assert (logged["status"], logged["attempts"]) == ("pending", 1)
    assert (logged["last_status_code"], logged["last_error"]) == (500, "http_error")
    assert await deliver_webhooks(ctx) == 0  # not due before its backoff (10 s)

    clock.move(timedelta(seconds=11))
    assert await deliver_webhooks(ctx) == 1  # 503: the next wait is 20 s
    clock.move(timedelta(seconds=11))
    assert await deliver_webhooks(ctx) == 0
    clock.move(timedelta(seconds=10))
    assert await deliver_webhooks(ctx) == 1  # 200

    (logged,) = await deliveries(client, admin, hook["id"])
    assert (logged["status"], logged["attempts"], logged["last_status_code"]) == (
        "delivered",
        3,
        200,
    )
    assert logged["last_error"] is None
    requests = receiver.at("/flaky")
    assert len(requests) == 3
    assert len({r.headers["x-irrigation-delivery"] for r in requests}) == 1
    assert all(verify(hook["secret"], r.headers, r.body) for r in requests)


async def test_delivery_gives_up_after_the_last_attempt(
    client: httpx.AsyncClient,
    admin: Headers,
    sessions: Sessions,
    settings: Settings,
    ctx: dict[str, Any],
    receiver: Receiver,
) -> None:
    hook = await subscribe(client, admin, f"{receiver.url}/fail")
    await raise_alert(client, admin, sessions, settings)

    for _ in range(settings.webhook_max_attempts):
        assert await deliver_webhooks(ctx) == 1
        clock.move(timedelta(seconds=settings.webhook_backoff_max_s + 1))
    assert await deliver_webhooks(ctx) == 0

    (logged,) = await deliveries(client, admin, hook["id"], status="failed")
    assert logged["attempts"] == settings.webhook_max_attempts == 3
    assert len(receiver.at("/fail")) == 3
    assert await deliveries(client, admin, hook["id"], status="pending") == []


async def test_a_dead_or_hanging_endpoint_does_not_hold_up_a_live_one(
    client: httpx.AsyncClient,
    admin: Headers,
    sessions: Sessions,
    settings: Settings,
    ctx: dict[str, Any],
    receiver: Receiver,
) -> None:
    hanging = await subscribe(client, admin, f"{receiver.url}/hang")
    closed = await subscribe(client, admin, f"http://127.0.0.1:{free_port()}/nobody")
    live = await subscribe(client, admin, f"{receiver.url}/ok")
    await raise_alert(client, admin, sessions, settings)

    started = time.monotonic()
    assert await deliver_webhooks(ctx) == 3
    elapsed = time.monotonic() - started

    assert elapsed < WEBHOOK_TIMEOUT_S + 1.0  # concurrent: one timeout, not one each
    assert len(receiver.at("/ok")) == 1
    assert (await deliveries(client, admin, live["id"]))[0]["status"] == "delivered"
    (hung,) = await deliveries(client, admin, hanging["id"])
    assert (hung["status"], hung["attempts"], hung["last_status_code"]) == ("pending", 1, None)
    assert hung["last_error"] == "timeout"
    (refused,) = await deliveries(client, admin, closed["id"])
    assert (refused["status"], refused["attempts"]) == ("pending", 1)
    assert (refused["last_error"], refused["last_status_code"]) == ("connection_refused", None)


async def test_concurrent_runs_send_each_delivery_once(
    client: httpx.AsyncClient,
    admin: Headers,
    sessions: Sessions,
    settings: Settings,
    ctx: dict[str, Any],
    receiver: Receiver,
) -> None:
    await subscribe(client, admin, f"{receiver.url}/slow")
    for i in range(3):
        sensor = await make_sensor(client, admin, name=f"Probe {i}", alert_min=10)
        await send(client, admin, sensor["id"], 2)
    await evaluate(sessions, settings)

    counts = await asyncio.gather(*(deliver_webhooks(ctx) for _ in range(3)))

    assert sum(counts) == 3
    ids = [r.headers["x-irrigation-delivery"] for r in receiver.at("/slow")]
    assert len(ids) == len(set(ids)) == 3


async def test_ping_is_queued_and_delivered(
    client: httpx.AsyncClient, admin: Headers, ctx: dict[str, Any], receiver: Receiver
) -> None:
    hook = await subscribe(client, admin, f"{receiver.url}/ok", events=["alert.raised"])

    response = await client.post(f"/v1/webhooks/{hook['id']}/test", headers=admin)
    assert response.status_code == 202, response.text
    assert await deliver_webhooks(ctx) == 1

    (request,) = receiver.at("/ok")
    assert request.headers["x-irrigation-event"] == "ping"
    assert request.headers["x-irrigation-delivery"] == response.json()["delivery_id"]
    assert verify(hook["secret"], request.headers, request.body)
    assert json.loads(request.body)["data"]["subscription_id"] == hook["id"]


async def test_disabling_a_subscription_gives_up_its_pending_deliveries(
    client: httpx.AsyncClient,
    admin: Headers,
    sessions: Sessions,
    settings: Settings,
    ctx: dict[str, Any],
    receiver: Receiver,
) -> None:
    hook = await subscribe(client, admin, f"{receiver.url}/ok")
    await raise_alert(client, admin, sessions, settings)

    response = await client.patch(
        f"/v1/webhooks/{hook['id']}", json={"enabled": False}, headers={**admin, "If-Match": "1"}
    )

    assert response.status_code == 200, response.text
    assert await deliver_webhooks(ctx) == 0
    (logged,) = await deliveries(client, admin, hook["id"])
    assert (logged["status"], logged["last_error"]) == ("failed", "subscription_disabled")


# Subscriptions API ---------------------------------------------------------------------


async def test_the_secret_is_shown_only_in_the_create_answer(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    hook = await subscribe(client, admin, "https://example.com/hook", description="Ops")
    shown = (await client.get(f"/v1/webhooks/{hook['id']}", headers=admin)).json()

    assert "secret" not in shown
    assert shown == {k: v for k, v in hook.items() if k != "secret"}
    assert (shown["events"], shown["enabled"], shown["version"]) == ([], True, 1)
    other = await subscribe(client, admin, "https://example.com/hook")
    assert other["secret"] != hook["secret"]


async def test_urls_that_are_not_http_are_422(client: httpx.AsyncClient, admin: Headers) -> None:
    for url in ("ftp://example.com/x", "example.com/hook", "javascript:alert(1)", "http://"):
        response = await client.post("/v1/webhooks", json={"url": url}, headers=admin)
        assert_invalid(response, "body.url")
    too_long = "https://example.com/" + "a" * 2000
    assert_invalid(await client.post("/v1/webhooks", json={"url": too_long}, headers=admin))
    response = await client.post(
        "/v1/webhooks", json={"url": "https://e.com", "events": ["nope"]}, headers=admin
    )
    assert_invalid(response, "body.events.0")


async def test_patch_is_compare_and_set_on_the_version(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    hook = await subscribe(client, admin, "https://example.com/hook")
    path = f"/v1/webhooks/{hook['id']}"

    assert_problem(
        await client.patch(path, json={"enabled": False}, headers=admin), 428, "version_required"
    )
    updated = await client.patch(
        path,
        json={"version": 1, "url": "https://example.org/new", "events": ["alert.cleared"]},
        headers=admin,
    )
    assert updated.status_code == 200, updated.text
    assert (updated.json()["version"], updated.json()["url"]) == (2, "https://example.org/new")
    assert updated.json()["events"] == ["alert.cleared"]
    stale = await client.patch(path, json={"version": 1, "enabled": False}, headers=admin)
    assert_problem(stale, 409, "stale_version")
    assert_invalid(await client.patch(path, json={"version": 2, "url": None}, headers=admin))


async def test_delete_removes_the_subscription_and_its_log(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    hook = await subscribe(client, admin, "https://example.com/hook")
    await client.post(f"/v1/webhooks/{hook['id']}/test", headers=admin)

    assert (await client.delete(f"/v1/webhooks/{hook['id']}", headers=admin)).status_code == 204

    response = await client.get(f"/v1/webhooks/{hook['id']}/deliveries", headers=admin)
    assert_problem(response, 404, "not_found")
    response = await client.delete(f"/v1/webhooks/{hook['id']}", headers=admin)
    assert_problem(response, 404, "not_found")


async def test_lists_page_with_cursors(client: httpx.AsyncClient, admin: Headers) -> None:
    hook = await subscribe(client, admin, "https://example.com/0")
    for i in range(1, 5):
        await subscribe(client, admin, f"https://example.com/{i}")
    for _ in range(5):
        await client.post(f"/v1/webhooks/{hook['id']}/test", headers=admin)

    hooks = await walk(client, "/v1/webhooks", admin, limit=2)
    log = await walk(client, f"/v1/webhooks/{hook['id']}/deliveries", admin, limit=2)

    assert [len(p) for p in hooks] == [2, 2, 1]
    assert len({h["id"] for page in hooks for h in page}) == 5
    assert [len(p) for p in log] == [2, 2, 1]
    assert len({d["id"] for page in log for d in page}) == 5


async def test_webhooks_need_the_admin_scope_and_another_sites_are_404(
    client: httpx.AsyncClient, admin: Headers, other_admin: Headers, reader: Headers
) -> None:
    hook = await subscribe(client, admin, "https://example.com/hook")
    path = f"/v1/webhooks/{hook['id']}"

    assert_problem(await client.get("/v1/webhooks", headers=reader), 403, "insufficient_scope")
    response = await client.post("/v1/webhooks", json={"url": "https://e.com"}, headers=reader)
    assert_problem(response, 403, "insufficient_scope")
    assert (await client.get("/v1/webhooks", headers=other_admin)).json()["items"] == []
    for method, suffix in (("GET", ""), ("DELETE", ""), ("GET", "/deliveries"), ("POST", "/test")):
        response = await client.request(method, path + suffix, headers=other_admin)
        assert_problem(response, 404, "not_found")
    response = await client.patch(path, json={"version": 1}, headers=other_admin)
    assert_problem(response, 404, "not_found")
    assert (await client.get(path, headers=admin)).status_code == 200
