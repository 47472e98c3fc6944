"""A site's own rate limits: read, replace, and the limits its keys get."""

import uuid
from collections.abc import Mapping

from limits import RateLimitItem
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from irrigation.common.errors import Invalid
from irrigation.common.limiter import RateClass
from irrigation.ratelimits.models import SiteRateLimit
from irrigation.ratelimits.schemas import SiteLimits
from irrigation.settings import parse_rate_limit


def per_second(limit: RateLimitItem) -> float:
    return limit.amount / limit.get_expiry()


async def site_limits(session: AsyncSession, site_id: uuid.UUID) -> dict[RateClass, str]:
    rows = await session.execute(
        select(SiteRateLimit.rate_class, SiteRateLimit.rate_limit).where(
            SiteRateLimit.site_id == site_id
        )
    )
    return {RateClass(rate_class): text for rate_class, text in rows}


def effective_limits(
    deployment: Mapping[RateClass, RateLimitItem], own: Mapping[RateClass, str]
) -> dict[RateClass, RateLimitItem]:
    return {c: parse_rate_limit(own[c]) if c in own else deployment[c] for c in RateClass}


async def replace_site_limits(
    session: AsyncSession,
    site_id: uuid.UUID,
    wanted: SiteLimits,
    deployment: Mapping[RateClass, RateLimitItem],
    max_factor: float,
) -> dict[RateClass, str]:
    """The site's limits become `wanted` (null: the deployment's). A site may not go above
    `max_factor` times the deployment's rate: the limits protect the other sites too."""
    own = {RateClass(name): text for name, text in wanted.model_dump().items() if text is not None}
    for rate_class, text in own.items():
        ceiling = deployment[rate_class]
        if per_second(parse_rate_limit(text)) > per_second(ceiling) * max_factor * (1 + 1e-9):
            allowed = "its own" if max_factor == 1 else f"{max_factor:g} times its own"
            raise Invalid(
                f"{text!r} is above what this deployment allows a site for `{rate_class}` "
                f"({allowed}, {ceiling})",
                field=f"body.{rate_class}",
                code="rate_limit_too_high",
            )
    await session.execute(delete(SiteRateLimit).where(SiteRateLimit.site_id == site_id))
    session.add_all(
        SiteRateLimit(site_id=site_id, rate_class=c.value, rate_limit=text)
        for c, text in own.items()
    )
    await session.flush()
    return own
