"""A delivery whose processing raises here (not at its receiver) is that delivery's failed
attempt only: recorded as `internal_error`, backed off, and alerted for its site
(`automation_failure`), while the batch's other deliveries go out and are recorded. And one
site's backlog never fills the claim of a run: every site's oldest goes first."""

from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from irrigation.alerts import webhooks
from irrigation.alerts.webhooks import deliver_webhooks
from irrigation.common import clock
from irrigation.settings import Settings
from tests.alerts.conftest import Receiver
from tests.alerts.helpers import alerts, evaluate, open_alerts
from tests.alerts.test_webhooks import Sessions, deliveries, raise_alert, subscribe
from tests.support.api import Headers


def poison_bodies_of(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    """Building the body of a delivery to `url` raises: any bug of ours with one row."""
    body = webhooks.Claimed.body

    def poisoned(self: webhooks.Claimed) -> bytes:
        if self.url == url:
            raise RuntimeError("injected: this delivery cannot be built")
        return body(self)

    monkeypatch.setattr(webhooks.Claimed, "body", poisoned)


async def site_of(client: httpx.AsyncClient, headers: Headers) -> str:
    site: str = (await alerts(client, headers))[0]["site_id"]
    return site


async def test_a_delivery_that_raises_is_backed_off_and_alerted_and_the_others_go_out(
    client: httpx.AsyncClient,
    admin: Headers,
    other_admin: Headers,
    sessions: Sessions,
    settings: Settings,
    ctx: dict[str, Any],
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bad = await subscribe(client, admin, f"{receiver.url}/ok-a")
    good = await subscribe(client, other_admin, f"{receiver.url}/ok-b")
    await raise_alert(client, admin, sessions, settings)
    await raise_alert(client, other_admin, sessions, settings)
    bad_site = await site_of(client, admin)
    poison_bodies_of(monkeypatch, f"{receiver.url}/ok-a")

    assert await deliver_webhooks(ctx) == 2
    assert receiver.at("/ok-a") == []
    assert len(receiver.at("/ok-b")) == 1
    (delivered,) = await deliveries(client, other_admin, good["id"])
    assert (delivered["status"], delivered["attempts"]) == ("delivered", 1)
    (failed,) = await deliveries(client, admin, bad["id"])
    assert (failed["status"], failed["attempts"], failed["last_error"]) == (
        "pending",
        1,
        "internal_error",
    )
    assert failed["last_status_code"] is None
    # Backed off like any failed attempt (10 s here), not retried by the next run.
    assert await deliver_webhooks(ctx) == 0

    await evaluate(sessions, settings)
    (alert,) = await open_alerts(client, admin, "automation_failure")
    assert (alert["subject_type"], alert["subject_id"]) == ("site", bad_site)
    assert f"webhook delivery {failed['id']}" in alert["message"]
    assert "injected" not in alert["message"]
    assert await open_alerts(client, other_admin, "automation_failure") == []

    # Repaired: the next attempt after the back-off goes out, and the alert clears.
    monkeypatch.undo()
    clock.move(timedelta(seconds=settings.webhook_backoff_base_s + 1))
    # The first delivery, and the one of the `automation_failure` alert itself.
    assert await deliver_webhooks(ctx) == 2
    assert len(receiver.at("/ok-a")) == 2
    (retried,) = [d for d in await deliveries(client, admin, bad["id"]) if d["id"] == failed["id"]]
    assert (retried["status"], retried["attempts"], retried["last_error"]) == (
        "delivered",
        2,
        None,
    )
    await evaluate(sessions, settings)
    assert await open_alerts(client, admin, "automation_failure") == []


async def test_a_delivery_whose_outcome_cannot_be_recorded_does_not_lose_the_others(
    client: httpx.AsyncClient,
    admin: Headers,
    other_admin: Headers,
    sessions: Sessions,
    settings: Settings,
    ctx: dict[str, Any],
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bad = await subscribe(client, admin, f"{receiver.url}/ok-a")
    good = await subscribe(client, other_admin, f"{receiver.url}/ok-b")
    await raise_alert(client, admin, sessions, settings)
    await raise_alert(client, other_admin, sessions, settings)
    record_params = webhooks._record_params

    def unrecordable(settings: Settings, outcomes: list[webhooks.Outcome]) -> Any:
        # The delivery to /ok-a went out, but its outcome cannot be written.
        if any(o.delivery.url.endswith("/ok-a") and o.error is None for o in outcomes):
            raise RuntimeError("injected: this outcome cannot be recorded")
        return record_params(settings, outcomes)

    monkeypatch.setattr(webhooks, "_record_params", unrecordable)

    assert await deliver_webhooks(ctx) == 2
    (delivered,) = await deliveries(client, other_admin, good["id"])
    assert (delivered["status"], delivered["attempts"]) == ("delivered", 1)
    # Counted and backed off as a failure of ours, not left to its lease (resent at once).
    (failed,) = await deliveries(client, admin, bad["id"])
    assert (failed["status"], failed["attempts"], failed["last_error"]) == (
        "pending",
        1,
        "internal_error",
    )
    assert await deliver_webhooks(ctx) == 0


async def test_one_sites_backlog_never_fills_a_delivery_run(
    client: httpx.AsyncClient,
    admin: Headers,
    other_admin: Headers,
    sessions: Sessions,
    settings: Settings,
    receiver: Receiver,
) -> None:
    small = settings.model_copy(update={"webhook_batch_size": 3})
    ctx = {"irrigation": SimpleNamespace(settings=small, sessions=sessions)}
    for path in ("/ok-a1", "/ok-a2"):
        await subscribe(client, admin, f"{receiver.url}{path}")
    await subscribe(client, other_admin, f"{receiver.url}/ok-b")
    # Site A: 2 alerts x 2 subscriptions, all older than site B's one delivery.
    await raise_alert(client, admin, sessions, settings)
    clock.move(timedelta(seconds=1))
    await raise_alert(client, admin, sessions, settings)
    clock.move(timedelta(seconds=1))
    await raise_alert(client, other_admin, sessions, settings)

    assert await deliver_webhooks(ctx) == 3
    assert len(receiver.at("/ok-b")) == 1
    assert len(receiver.at("/ok-a1")) + len(receiver.at("/ok-a2")) == 2
    assert await deliver_webhooks(ctx) == 2
    assert len(receiver.at("/ok-a1")) + len(receiver.at("/ok-a2")) == 4
