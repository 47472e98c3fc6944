"""Webhook subscription use cases: create (with a fresh secret), edit, delete, the delivery
log, and the test ping."""

import secrets
import uuid

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from irrigation.alerts import notify
from irrigation.alerts.models import (
    DeliveryStatus,
    WebhookDelivery,
    WebhookEvent,
    WebhookSubscription,
)
from irrigation.alerts.schemas import WebhookCreate, WebhookUpdate
from irrigation.common import repository as repo
from irrigation.common.pagination import PageParams, page_of, paginate
from irrigation.quotas import service as quotas
from irrigation.quotas.schemas import Quota
from irrigation.settings import Settings


def new_secret() -> str:
    """32 random bytes, URL-safe base64 (43 characters)."""
    return secrets.token_urlsafe(32)


async def create(
    session: AsyncSession, settings: Settings, site_id: uuid.UUID, body: WebhookCreate
) -> WebhookSubscription:
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
) -> WebhookSubscription:
    """Compare-and-set on `version`. Disabling gives up its pending deliveries: a receiver
    switched off is not flooded with stale events when it is switched on again."""
    values = body.changes()
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
                .values(status=DeliveryStatus.failed, last_error="subscription disabled")
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
