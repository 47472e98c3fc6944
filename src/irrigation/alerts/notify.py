"""Webhook deliveries for events, written in the caller's transaction (the outbox pattern):
a rolled-back transition sends nothing, a committed one is not lost. Alert transitions go
to the live feed too, published when that transaction commits."""

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from irrigation import feed
from irrigation.alerts.models import (
    DeliveryStatus,
    SubjectType,
    WebhookDelivery,
    WebhookSubscription,
)
from irrigation.alerts.schemas import AlertOut
from irrigation.common.clock import utcnow
from irrigation.fleet.models import Pump, Sensor


@dataclass(frozen=True)
class Event:
    site_id: uuid.UUID
    name: str
    data: dict[str, Any]


def alert_event(name: str, alert: object) -> Event:
    out = AlertOut.model_validate(alert)
    return Event(out.site_id, name, out.model_dump(mode="json"))


async def alert_changes(session: AsyncSession, events: Sequence[Event]) -> int:
    """Alert transitions (`alert_event`s) to the live feed and to the webhooks that want
    them; returns the deliveries written."""
    await _to_feed(session, events)
    return await enqueue(session, events)


async def _to_feed(session: AsyncSession, events: Sequence[Event]) -> None:
    """Each event's AlertOut with `change` (raised, acknowledged, cleared) and `zone_id`:
    the zone of the sensor or pump it is about, null for the site's own alerts, a water
    source's (a source has no zone) or a subject deleted since."""
    if not events:
        return
    zones = await _zones_of(
        session,
        {
            uuid.UUID(e.data["subject_id"])
            for e in events
            if e.data["subject_type"] != SubjectType.site
        },
    )
    for e in events:
        zone_id = zones.get(uuid.UUID(e.data["subject_id"]))
        data = {
            **e.data,
            "change": e.name.removeprefix("alert."),
            "zone_id": str(zone_id) if zone_id else None,
        }
        feed.emit(session, feed.EventType.alert, e.site_id, data)


async def _zones_of(session: AsyncSession, subjects: set[uuid.UUID]) -> dict[uuid.UUID, uuid.UUID]:
    if not subjects:
        return {}
    sensors = select(Sensor.id, Sensor.zone_id).where(Sensor.id.in_(subjects))
    pumps = select(Pump.id, Pump.zone_id).where(Pump.id.in_(subjects))
    return dict((await session.execute(sensors.union_all(pumps))).all())


async def enqueue(session: AsyncSession, events: Sequence[Event]) -> int:
    """One delivery per event and enabled subscription of its site that wants it."""
    if not events:
        return 0
    subscriptions = (
        await session.execute(
            select(
                WebhookSubscription.id, WebhookSubscription.site_id, WebhookSubscription.events
            ).where(
                WebhookSubscription.enabled,
                WebhookSubscription.site_id.in_({e.site_id for e in events}),
            )
        )
    ).all()
    if not subscriptions:
        return 0
    now = utcnow()
    rows = [
        _row(sub_id, event, now)
        for event in events
        for sub_id, site_id, wanted in subscriptions
        if site_id == event.site_id and (not wanted or event.name in wanted)
    ]
    if rows:
        await session.execute(insert(WebhookDelivery), rows)
    return len(rows)


async def enqueue_for(session: AsyncSession, subscription_id: uuid.UUID, event: Event) -> uuid.UUID:
    """A delivery to one subscription whatever its filter (the test ping)."""
    row = _row(subscription_id, event, utcnow())
    await session.execute(insert(WebhookDelivery), [row])
    delivery_id: uuid.UUID = row["id"]
    return delivery_id


def _row(subscription_id: uuid.UUID, event: Event, now: Any) -> dict[str, Any]:
    return {
        "id": uuid.uuid4(),
        "created_at": now,
        "subscription_id": subscription_id,
        "site_id": event.site_id,
        "event": event.name,
        "payload": event.data,
        "status": DeliveryStatus.pending,
        "attempts": 0,
        "next_attempt_at": now,
    }
