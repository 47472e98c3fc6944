"""HTTP routes for alerts and webhook subscriptions (thin: parse, authorize, shape)."""

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response

from irrigation.alerts import service, subscriptions
from irrigation.alerts.models import (
    Alert,
    AlertKind,
    AlertStatus,
    DeliveryStatus,
    Severity,
    WebhookSubscription,
)
from irrigation.alerts.schemas import (
    AlertOut,
    DeliveryOut,
    PingQueued,
    WebhookCreate,
    WebhookCreated,
    WebhookOut,
    WebhookUpdate,
)
from irrigation.auth.deps import AdminPrincipal, ControlPrincipal, ReadPrincipal
from irrigation.common.deps import SettingsDep
from irrigation.common.http import if_match_version
from irrigation.common.limiter import RateClass, limited_as
from irrigation.common.openapi import problems, quota_409
from irrigation.common.pagination import Page, PageParams, page_params
from irrigation.db import SessionDep
from irrigation.fleet.service import require_version

IfMatch = Annotated[int | None, Depends(if_match_version)]
Params = Annotated[PageParams, Depends(page_params)]

SIGNATURES = """
Each delivery is a `POST` of `{"id", "event", "created_at", "data"}` (`data`: the alert,
as `GET /v1/alerts/{id}` shows it) with the headers `X-Irrigation-Event`,
`X-Irrigation-Delivery` (the delivery id: deliveries are at least once, de-duplicate on it),
`X-Irrigation-Timestamp` (unix seconds) and
`X-Irrigation-Signature: sha256=<hex HMAC-SHA256(secret, "{timestamp}.{raw body}")>`.
Any 2xx answer is success; anything else, or no answer within the timeout, is retried with
exponential backoff until the attempts run out (then the delivery is `failed`). Redirects
are not followed. The URL's host is resolved again at every attempt and the request goes to
the address that was checked (TLS still verifies the host name); an address that is not
public fails the attempt as `forbidden_address`.
"""

URL_RULES = {
    422: "Invalid request (`validation_error`), or the URL's host is or resolves to a "
    "loopback, private, link-local, multicast or reserved address (`webhook_url_forbidden`; "
    "`IRRIGATION_WEBHOOK_ALLOW_NETWORKS` lets chosen networks through)"
}

# Alerts --------------------------------------------------------------------------------

alerts = APIRouter(prefix="/v1", tags=["alerts"])


@alerts.get("/alerts", response_model=Page[AlertOut], responses=problems())
async def list_alerts(
    session: SessionDep,
    who: ReadPrincipal,
    params: Params,
    status: Annotated[AlertStatus | None, Query()] = None,
    kind: Annotated[AlertKind | None, Query()] = None,
    severity: Annotated[Severity | None, Query()] = None,
    subject_id: Annotated[uuid.UUID | None, Query()] = None,
) -> Page[AlertOut]:
    """The site's alerts, newest first."""
    rows, cursor = await service.list_alerts(
        session,
        who.site_id,
        params,
        status=status,
        kind=kind,
        severity=severity,
        subject_id=subject_id,
    )
    return Page(items=[AlertOut.model_validate(r) for r in rows], next_cursor=cursor)


@alerts.get("/alerts/{alert_id}", response_model=AlertOut, responses=problems(404))
async def get_alert(alert_id: uuid.UUID, session: SessionDep, who: ReadPrincipal) -> Alert:
    return await service.get_alert(session, who.site_id, alert_id)


@alerts.post(
    "/alerts/{alert_id}/ack",
    response_model=AlertOut,
    responses=problems(404, 409),
    summary="Acknowledge an alert",
    description="`raised` becomes `acknowledged` (and `alert.acknowledged` is sent to the "
    "webhooks); an acknowledged alert answers as it is. A cleared alert is 409 "
    "`alert_cleared`. The alert clears by itself when its condition goes away.",
)
async def acknowledge_alert(
    alert_id: uuid.UUID, session: SessionDep, who: ControlPrincipal
) -> Alert:
    return await service.acknowledge(session, who.site_id, alert_id, who.key_id)


# Webhooks ------------------------------------------------------------------------------

webhooks = APIRouter(prefix="/v1", tags=["webhooks"])


def _out(subscription: WebhookSubscription) -> WebhookOut:
    return WebhookOut.model_validate(subscription)


@webhooks.post(
    "/webhooks",
    status_code=201,
    response_model=WebhookCreated,
    responses=problems(
        409, 413, described={**URL_RULES, 409: quota_409("max_webhooks", "webhooks")}
    ),
    summary="Subscribe a URL to alert events",
    description="The answer carries the signing `secret`, shown this once.\n" + SIGNATURES,
)
async def create_webhook(
    body: WebhookCreate, session: SessionDep, who: AdminPrincipal, settings: SettingsDep
) -> WebhookCreated:
    subscription = await subscriptions.create(session, who.site_id, body, settings)
    return WebhookCreated.model_validate(subscription)


@webhooks.get("/webhooks", response_model=Page[WebhookOut], responses=problems())
async def list_webhooks(
    session: SessionDep, who: AdminPrincipal, params: Params
) -> Page[WebhookOut]:
    rows, cursor = await subscriptions.list_subscriptions(session, who.site_id, params)
    return Page(items=[_out(r) for r in rows], next_cursor=cursor)


@webhooks.get("/webhooks/{webhook_id}", response_model=WebhookOut, responses=problems(404))
async def get_webhook(
    webhook_id: uuid.UUID, session: SessionDep, who: AdminPrincipal
) -> WebhookOut:
    return _out(await subscriptions.get(session, who.site_id, webhook_id))


@webhooks.patch(
    "/webhooks/{webhook_id}",
    response_model=WebhookOut,
    responses=problems(404, 409, 413, 428, described=URL_RULES),
    description="Compare-and-set on `version` (body or `If-Match`). Disabling a "
    "subscription gives up its pending deliveries. A new `url` is checked as at creation.",
)
async def update_webhook(
    webhook_id: uuid.UUID,
    body: WebhookUpdate,
    if_match: IfMatch,
    session: SessionDep,
    who: AdminPrincipal,
    settings: SettingsDep,
) -> WebhookOut:
    version = require_version(body.version, if_match)
    subscription = await subscriptions.update_subscription(
        session, who.site_id, webhook_id, version, body, settings
    )
    return _out(subscription)


@webhooks.delete("/webhooks/{webhook_id}", status_code=204, responses=problems(404))
async def delete_webhook(
    webhook_id: uuid.UUID, session: SessionDep, who: AdminPrincipal
) -> Response:
    await subscriptions.delete(session, who.site_id, webhook_id)
    return Response(status_code=204)


@webhooks.get(
    "/webhooks/{webhook_id}/deliveries",
    response_model=Page[DeliveryOut],
    responses=problems(404),
    summary="The delivery log, newest first",
)
async def list_deliveries(
    webhook_id: uuid.UUID,
    session: SessionDep,
    who: AdminPrincipal,
    params: Params,
    status: Annotated[DeliveryStatus | None, Query()] = None,
) -> Page[DeliveryOut]:
    rows, cursor = await subscriptions.list_deliveries(
        session, who.site_id, webhook_id, params, status
    )
    return Page(items=[DeliveryOut.model_validate(r) for r in rows], next_cursor=cursor)


@webhooks.post(
    "/webhooks/{webhook_id}/test",
    status_code=202,
    response_model=PingQueued,
    responses=problems(404),
    summary="Queue a `ping` delivery to this subscription",
    description="Sent by the worker within a second or so, signed like every delivery; "
    "follow it in the delivery log.",
)
@limited_as(RateClass.expensive)
async def test_webhook(
    webhook_id: uuid.UUID, session: SessionDep, who: AdminPrincipal
) -> PingQueued:
    return PingQueued(delivery_id=await subscriptions.ping(session, who.site_id, webhook_id))


# Included into the app one by one, like the fleet's (full path templates for the metrics).
routers = (alerts, webhooks)
