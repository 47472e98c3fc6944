"""Alert use cases of the API: list, read, acknowledge."""

import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from irrigation.alerts import notify
from irrigation.alerts.models import Alert, AlertKind, AlertStatus, Severity, WebhookEvent
from irrigation.common import repository as repo
from irrigation.common.clock import utcnow
from irrigation.common.errors import DomainError
from irrigation.common.pagination import PageParams, page_of, paginate


class AlertCleared(DomainError):
    status, code, title = 409, "alert_cleared", "Alert already cleared"


async def list_alerts(
    session: AsyncSession,
    site_id: uuid.UUID,
    params: PageParams,
    *,
    status: AlertStatus | None = None,
    kind: AlertKind | None = None,
    severity: Severity | None = None,
    subject_id: uuid.UUID | None = None,
) -> tuple[list[Alert], str | None]:
    """Newest first."""
    stmt = select(Alert).where(Alert.site_id == site_id)
    if status is not None:
        stmt = stmt.where(Alert.status == status)
    if kind is not None:
        stmt = stmt.where(Alert.kind == kind)
    if severity is not None:
        stmt = stmt.where(Alert.severity == severity)
    if subject_id is not None:
        stmt = stmt.where(Alert.subject_id == subject_id)
    stmt = paginate(stmt, Alert.created_at, Alert.id, params, descending=True)
    return page_of((await session.execute(stmt)).scalars().all(), params)


async def get_alert(session: AsyncSession, site_id: uuid.UUID, alert_id: uuid.UUID) -> Alert:
    return await repo.get_owned(session, Alert, site_id, alert_id)


async def acknowledge(
    session: AsyncSession, site_id: uuid.UUID, alert_id: uuid.UUID, key_id: uuid.UUID
) -> Alert:
    """raised -> acknowledged; again is a no-op (200); a cleared alert is 409 `alert_cleared`."""
    async with session.begin():
        # Locked: the evaluation may be clearing it right now.
        alert = await repo.get_owned(session, Alert, site_id, alert_id, for_update=True)
        if alert.status == AlertStatus.cleared:
            cleared_at = alert.cleared_at.isoformat() if alert.cleared_at else None
            raise AlertCleared(
                "the alert is cleared: its condition no longer holds", cleared_at=cleared_at
            )
        if alert.status == AlertStatus.raised:
            alert.status = AlertStatus.acknowledged
            alert.acknowledged_at = utcnow()
            alert.acknowledged_by = str(key_id)
            await session.flush()
            await notify.alert_changes(
                session, [notify.alert_event(WebhookEvent.alert_acknowledged, alert)]
            )
    return alert
