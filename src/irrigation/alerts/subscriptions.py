"""Webhook subscription use cases: create (with a fresh secret), edit, delete, the delivery
log, and the test ping."""

import secrets
import uuid

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from irrigation.alerts import notify, targets
from irrigation.alerts.models import (
    DeliveryError,
    DeliveryStatus,
    WebhookDelivery,
    WebhookEvent,
    WebhookSubscription,
)
from irrigation.alerts.schemas import WebhookCreate, WebhookUpdate
from irrigation.common import repository as repo
from irrigation.common.errors import Invalid
from irrigation.common.pagination import PageParams, page_of, paginate
from irrigation.quotas import service as quotas
from irrigation.quotas.schemas import Quota
from irrigation.settings import Settings

URL_FORBIDDEN = "webhook_url_forbidden"


def new_secret() -> str:
    """32 random bytes, URL-safe base64 (43 characters)."""
    return secrets.token_urlsafe(32)


async def check_url(url: str, settings: Settings) -> None:
    """422 `webhook_url_forbidden` when the host is or resolves to a non-public address.
    A name that does not resolve (yet) is accepted: every delivery checks again, and the
    delivery log then says `dns_error`."""
    try:
        await targets.checked_addresses(
            url, settings.webhook_allow_networks, settings.webhook_timeout_s
        )
    except targets.Unresolvable:
        return
    except targets.ForbiddenTarget as exc:
        # Not the address it resolved to: the API is no window on internal DNS.
        raise Invalid(
            f"webhooks may not reach {exc.host}: it is or resolves to a loopback, private, "
            "link-local, multicast or reserved address",
            field="body.url",
            code=URL_FORBIDDEN,
        ) from None


async def create(
    session: AsyncSession, site_id: uuid.UUID, body: WebhookCreate, settings: Settings
) -> WebhookSubscription:
    await check_url(body.url, settings)
    async with session.begin():
        count = (
            select(func.count())
            .select_from(WebhookSubscription)
            .where(WebhookSubscription.site_id == site_id)
        )
        await quotas.ensure_room(session, settings, site_id, Quota.max_webhooks, count, "webhooks")
        subscription = WebhookSubscription(
            site_id=site_id,
            url=body.url,
            secret=new_secret(),
            events=[e.value for e in body.events],
            enabled=body.enabled,
            description=body.description,
        )
        await repo.flush_new(session, subscription)
    return subscription


async def get(
    session: AsyncSession, site_id: uuid.UUID, subscription_id: uuid.UUID
) -> WebhookSubscription:
    return await repo.get_owned(session, WebhookSubscription, site_id, subscription_id)


async def list_subscriptions(
    session: AsyncSession, site_id: uuid.UUID, params: PageParams
) -> tuple[list[WebhookSubscription], str | None]:
    return await repo.list_owned(session, WebhookSubscription, site_id, params)


async def update_subscription(
    session: AsyncSession,
    site_id: uuid.UUID,
    subscription_id: uuid.UUID,
    version: int,
    body: WebhookUpdate,
    settings: Settings,
) -> WebhookSubscription:
    """Compare-and-set on `version`. Disabling gives up its pending deliveries: a receiver
    switched off is not flooded with stale events when it is switched on again."""
    values = body.changes()
    if values.get("url") is not None:
        await check_url(values["url"], settings)
    if "events" in values:
        values["events"] = [str(e) for e in values["events"]]
    async with session.begin():
        subscription = await repo.update_versioned(
            session, WebhookSubscription, site_id, subscription_id, version, values
        )
        if values.get("enabled") is False:
            await session.execute(
                update(WebhookDelivery)
                .where(
                    WebhookDelivery.subscription_id == subscription_id,
                    WebhookDelivery.status == DeliveryStatus.pending,
                )
                .values(
                    status=DeliveryStatus.failed,
                    last_error=DeliveryError.subscription_disabled.value,
                )
            )
    return subscription


async def delete(session: AsyncSession, site_id: uuid.UUID, subscription_id: uuid.UUID) -> None:
    """Its delivery log goes with it (ON DELETE CASCADE)."""
    async with session.begin():
        await repo.delete_owned(session, WebhookSubscription, site_id, subscription_id)


async def list_deliveries(
    session: AsyncSession,
    site_id: uuid.UUID,
    subscription_id: uuid.UUID,
    params: PageParams,
    status: DeliveryStatus | None = None,
) -> tuple[list[WebhookDelivery], str | None]:
    """The delivery log, newest first; another site's subscription is 404."""
    await get(session, site_id, subscription_id)
    stmt = select(WebhookDelivery).where(WebhookDelivery.subscription_id == subscription_id)
    if status is not None:
        stmt = stmt.where(WebhookDelivery.status == status)
    stmt = paginate(stmt, WebhookDelivery.created_at, WebhookDelivery.id, params, descending=True)
    return page_of((await session.execute(stmt)).scalars().all(), params)


async def ping(session: AsyncSession, site_id: uuid.UUID, subscription_id: uuid.UUID) -> uuid.UUID:
    """Queue a `ping` delivery to this subscription (even if disabled or filtered)."""
    async with session.begin():
        subscription = await get(session, site_id, subscription_id)
        event = notify.Event(
            site_id,
            WebhookEvent.ping,
            {"subscription_id": str(subscription.id), "message": "Webhook test from irrigation."},
        )
        return await notify.enqueue_for(session, subscription.id, event)
