"""HTTP routes for the caller's site's own rate limits (scope admin)."""

from fastapi import APIRouter, Request

from irrigation.auth.deps import AdminPrincipal
from irrigation.common.deps import SettingsDep
from irrigation.common.limiter import RateClass
from irrigation.common.openapi import problems
from irrigation.db import SessionDep
from irrigation.ratelimits import service
from irrigation.ratelimits.deps import SiteLimitsCache
from irrigation.ratelimits.schemas import ClassLimits, RateLimitsOut, SiteLimits
from irrigation.settings import Settings

router = APIRouter(prefix="/v1", tags=["keys"])
PATH = "/sites/current/rate-limits"


def _out(settings: Settings, own: dict[RateClass, str]) -> RateLimitsOut:
    deployment = {c.value: str(getattr(settings, f"rate_limit_{c.value}")) for c in RateClass}
    site = {c.value: own.get(c) for c in RateClass}
    return RateLimitsOut(
        site=SiteLimits.model_validate(site),
        deployment=ClassLimits.model_validate(deployment),
        effective=ClassLimits.model_validate(
            {name: site[name] or text for name, text in deployment.items()}
        ),
    )


@router.get(
    PATH,
    response_model=RateLimitsOut,
    responses=problems(),
    summary="The site's rate limits per class: its own, the deployment's, and in effect",
)
async def get_rate_limits(
    session: SessionDep, settings: SettingsDep, principal: AdminPrincipal
) -> RateLimitsOut:
    return _out(settings, await service.site_limits(session, principal.site_id))


@router.put(
    PATH,
    response_model=RateLimitsOut,
    responses=problems(
        413,
        described={
            422: "A limit that cannot be read (`validation_error`), or one above what the "
            "deployment allows a site (`rate_limit_too_high`); `errors` names the class"
        },
    ),
    summary="Set the site's own rate limits (null or absent: the deployment's)",
    description=(
        "Replaces all of the site's own limits. A limit is `N/second`, `N/minute`, `N/hour` "
        "or `N/day`; one that cannot be read is 422 `validation_error`, one above what the "
        "deployment allows a site (`IRRIGATION_RATE_LIMIT_SITE_MAX_FACTOR` times its own) "
        "422 `rate_limit_too_high`. Every API key of the site gets the new limits at once "
        "on this API process, within `IRRIGATION_RATE_LIMIT_SITE_CACHE_TTL_S` on others."
    ),
)
async def set_rate_limits(
    body: SiteLimits,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    principal: AdminPrincipal,
) -> RateLimitsOut:
    async with session.begin():
        own = await service.replace_site_limits(
            session,
            principal.site_id,
            body,
            request.app.state.rate_limits,
            settings.rate_limit_site_max_factor,
        )
    cache: SiteLimitsCache = request.app.state.site_rate_limits
    cache.forget(principal.site_id)
    return _out(settings, own)
