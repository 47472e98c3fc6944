"""A site's quotas: the value in force (its own, else the deployment's), the check made under
a per-site lock, and the admin's edits.

A quota counts rows under a transaction-scoped advisory lock of (site, quota), taken before
the count and held to the commit: of two requests racing for a site's last slot, the second
counts after the first has committed, and is refused. An advisory lock, not a row lock on
the site: pausing the site or reading it never waits for a schedule being created."""

import uuid
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from irrigation.common.clock import utcnow
from irrigation.common.errors import DomainError, Invalid
from irrigation.quotas.models import SiteQuota
from irrigation.quotas.schemas import Quota, QuotasOut, QuotasUpdate, QuotaValues
from irrigation.settings import Settings

# The deployment's value of each quota: a setting of the same name (IRRIGATION_QUOTA_*),
# but for the upload size, whose setting predates the quotas.
_SETTING = {quota: f"quota_{quota.value}" for quota in Quota} | {
    Quota.max_upload_bytes: "max_upload_bytes"
}


class QuotaExceeded(DomainError):
    """409 (or 429 with `Retry-After` for concurrent work), naming the quota and its limit."""

    status, code, title = 409, "quota_exceeded", "Quota exceeded"

    def __init__(
        self, quota: Quota, limit: int, detail: str, *, retry_after_s: int | None = None
    ) -> None:
        headers = None
        if retry_after_s is not None:
            self.status = 429
            headers = {"Retry-After": str(retry_after_s)}
        super().__init__(detail, headers=headers, quota=quota.value, limit=limit)


def deployment_value(settings: Settings, quota: Quota) -> int:
    value: int = getattr(settings, _SETTING[quota])
    return value


async def limit_of(
    session: AsyncSession, settings: Settings, site_id: uuid.UUID, quota: Quota
) -> int:
    """The value in force: the site's own where it set one (never above the deployment's,
    even after the deployment lowered its value), else the deployment's."""
    own = (
        await session.execute(
            select(getattr(SiteQuota, quota.value)).where(SiteQuota.site_id == site_id)
        )
    ).scalar_one_or_none()
    deployment = deployment_value(settings, quota)
    return deployment if own is None else min(own, deployment)


async def hold(session: AsyncSession, site_id: uuid.UUID, quota: Quota) -> None:
    """The (site, quota) lock, to the end of the transaction; taken again, it is a no-op.
    Waits at most the session's `lock_timeout` (then 503, like any lock)."""
    key = func.hashtextextended(f"quota:{quota.value}:{site_id}", 0)
    await session.execute(select(func.pg_advisory_xact_lock(key)))


async def ensure_room(
    session: AsyncSession,
    settings: Settings,
    site_id: uuid.UUID,
    quota: Quota,
    count: Select[Any],
    what: str,
    *,
    retry_after_s: int | None = None,
) -> None:
    """Refuse one more when `count` (the site's rows this quota counts) is at the limit:
    409, or 429 with `retry_after_s` for work that ends by itself. Call it inside the
    transaction that adds the row, before adding it."""
    await hold(session, site_id, quota)
    limit = await limit_of(session, settings, site_id, quota)
    used = int((await session.execute(count)).scalar_one())
    if used >= limit:
        detail = f"the site has {used} {what}, its quota {quota}"
        raise QuotaExceeded(quota, limit, detail, retry_after_s=retry_after_s)


def _values(row: Any) -> dict[str, int | None]:
    return {quota.value: getattr(row, quota.value) if row is not None else None for quota in Quota}


async def get_quotas(session: AsyncSession, settings: Settings, site_id: uuid.UUID) -> QuotasOut:
    row = await session.get(SiteQuota, site_id, populate_existing=True)
    return _out(settings, _values(row))


def _out(settings: Settings, own: dict[str, int | None]) -> QuotasOut:
    deployment = {quota.value: deployment_value(settings, quota) for quota in Quota}
    in_force = {
        name: deployment[name] if value is None else min(value, deployment[name])
        for name, value in own.items()
    }
    return QuotasOut(
        **in_force,
        own=[Quota(name) for name, value in own.items() if value is not None],
        deployment=QuotaValues(**deployment),
    )


async def update_quotas(
    session: AsyncSession, settings: Settings, site_id: uuid.UUID, body: QuotasUpdate
) -> QuotasOut:
    """Set the quotas sent (null: back to the deployment's value); a site may lower its
    quotas, never raise them above the deployment's (422 `quota_above_deployment`)."""
    changes: dict[str, int | None] = body.model_dump(exclude_unset=True)
    for name, value in changes.items():
        limit = deployment_value(settings, Quota(name))
        if value is not None and value > limit:
            raise Invalid(
                f"{name} may be at most the deployment's {limit}",
                field=f"body.{name}",
                code="quota_above_deployment",
            )
    async with session.begin():
        if changes:
            stmt = insert(SiteQuota).values(site_id=site_id, updated_at=utcnow(), **changes)
            await session.execute(
                stmt.on_conflict_do_update(
                    index_elements=[SiteQuota.site_id],
                    set_={**changes, "updated_at": stmt.excluded.updated_at},
                )
            )
        row = await session.get(SiteQuota, site_id, populate_existing=True)
        return _out(settings, _values(row))
