"""HTTP routes for the caller's site and its API keys."""

import uuid

from fastapi import APIRouter, Depends, Request

from irrigation.auth import service
from irrigation.auth.deps import AdminPrincipal, ReadPrincipal
from irrigation.auth.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyOut, SiteOut
from irrigation.common.openapi import problems
from irrigation.common.pagination import Page, PageParams, page_params
from irrigation.db import SessionDep

router = APIRouter(prefix="/v1", tags=["keys"])


@router.get("/sites/current", response_model=SiteOut, responses=problems())
async def get_current_site(session: SessionDep, principal: ReadPrincipal) -> SiteOut:
    return SiteOut.model_validate(await service.get_site(session, principal.site_id))


@router.post("/api-keys", status_code=201, response_model=ApiKeyCreated, responses=problems(413))
async def create_api_key(
    body: ApiKeyCreate, session: SessionDep, principal: AdminPrincipal
) -> ApiKeyCreated:
    async with session.begin():
        key, secret = await service.create_key(session, principal.site_id, body.name, body.scopes)
    return ApiKeyCreated.model_validate(
        {**ApiKeyOut.model_validate(key).model_dump(), "key": secret}
    )


@router.get("/api-keys", response_model=Page[ApiKeyOut], responses=problems())
async def list_api_keys(
    session: SessionDep,
    principal: AdminPrincipal,
    params: PageParams = Depends(page_params),
) -> Page[ApiKeyOut]:
    keys, cursor = await service.list_keys(session, principal.site_id, params)
    return Page(items=[ApiKeyOut.model_validate(k) for k in keys], next_cursor=cursor)


@router.delete("/api-keys/{key_id}", response_model=ApiKeyOut, responses=problems(404))
async def revoke_api_key(
    key_id: uuid.UUID, request: Request, session: SessionDep, principal: AdminPrincipal
) -> ApiKeyOut:
    async with session.begin():
        key = await service.revoke_key(session, principal.site_id, key_id)
    request.app.state.principals.forget(key_id)
    return ApiKeyOut.model_validate(key)
