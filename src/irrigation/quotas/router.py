"""HTTP routes of the caller's site's quotas (admin scope)."""

from fastapi import APIRouter

from irrigation.auth.deps import AdminPrincipal
from irrigation.common.deps import SettingsDep
from irrigation.common.openapi import problems
from irrigation.db import SessionDep
from irrigation.quotas import service
from irrigation.quotas.schemas import QuotasOut, QuotasUpdate

router = APIRouter(prefix="/v1", tags=["quotas"])

PATH = "/sites/current/quotas"


@router.get(
    PATH,
    response_model=QuotasOut,
    responses=problems(),
    summary="The site's quotas in force, its own and the deployment's",
)
async def get_quotas(session: SessionDep, settings: SettingsDep, who: AdminPrincipal) -> QuotasOut:
    return await service.get_quotas(session, settings, who.site_id)


@router.patch(
    PATH,
    response_model=QuotasOut,
    responses=problems(
        413,
        described={
            422: "A value below 0 (`validation_error`) or above the deployment's "
            "(`quota_above_deployment`)"
        },
    ),
    summary="Lower the site's own quotas (null: back to the deployment's value)",
    description=(
        "Only the quotas sent change. A site may set any quota from 0 up to the "
        "deployment's value, never above it. Rows the site already has above a lowered "
        "quota stay; only new ones are refused until the site is below it again."
    ),
)
async def update_quotas(
    body: QuotasUpdate, session: SessionDep, settings: SettingsDep, who: AdminPrincipal
) -> QuotasOut:
    return await service.update_quotas(session, settings, who.site_id, body)
