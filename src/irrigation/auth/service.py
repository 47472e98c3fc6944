"""Site and API key use cases: shared by the HTTP API and the CLI."""

import hashlib
import re
import secrets
import uuid
from collections.abc import Iterable

from sqlalchemy import Row, bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from irrigation.auth.models import ApiKey, Site
from irrigation.auth.schemas import Scope
from irrigation.common.clock import utcnow
from irrigation.common.errors import NotFound
from irrigation.common.pagination import PageParams, page_of, paginate

KEY_PREFIX = "irr_"
# What `create_key` makes: the prefix and 32 random bytes in URL-safe base64, unpadded.
KEY_FORMAT = re.compile(re.escape(KEY_PREFIX) + r"[A-Za-z0-9_-]{43}")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


async def get_or_create_site(session: AsyncSession, name: str, *, create: bool) -> Site:
    site = (await session.execute(select(Site).where(Site.name == name))).scalar_one_or_none()
    if site is None:
        if not create:
            raise NotFound(f"site {name!r} does not exist (use --create-site)")
        site = Site(name=name)
        session.add(site)
        await session.flush()
    return site


async def create_key(
    session: AsyncSession, site_id: uuid.UUID, name: str, scopes: Iterable[Scope]
) -> tuple[ApiKey, str]:
    """Returns the stored key and its secret, which is never stored nor shown again."""
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(
        site_id=site_id,
        name=name,
        prefix=secret[:12],
        key_hash=hash_key(secret),
        scopes=sorted({Scope(s).value for s in scopes}),
    )
    session.add(key)
    await session.flush()
    return key, secret


async def authenticate(session: AsyncSession, secret: str) -> ApiKey | None:
    stmt = select(ApiKey).where(ApiKey.key_hash == hash_key(secret), ApiKey.revoked_at.is_(None))
    return (await session.execute(stmt)).scalar_one_or_none()


# Built once: every request whose key is not cached runs it (in every API process).
_FIND_KEY = select(ApiKey.id, ApiKey.site_id, ApiKey.scopes).where(
    ApiKey.key_hash == bindparam("key_hash"), ApiKey.revoked_at.is_(None)
)


async def find_key(
    conn: AsyncConnection, key_hash: str
) -> Row[uuid.UUID, uuid.UUID, list[str]] | None:
    """The unrevoked key with this hash (`id`, `site_id`, `scopes`), or None. On a bare
    connection: the API authenticates every request, and needs no mapped object for it."""
    return (await conn.execute(_FIND_KEY, {"key_hash": key_hash})).one_or_none()


async def active_key(session: AsyncSession, key_id: uuid.UUID) -> ApiKey | None:
    """The key, unless it was revoked (or its site deleted)."""
    stmt = select(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
    return (await session.execute(stmt)).scalar_one_or_none()


async def list_keys(
    session: AsyncSession, site_id: uuid.UUID, params: PageParams
) -> tuple[list[ApiKey], str | None]:
    stmt = paginate(
        select(ApiKey).where(ApiKey.site_id == site_id), ApiKey.created_at, ApiKey.id, params
    )
    return page_of((await session.execute(stmt)).scalars().all(), params)


async def revoke_key(session: AsyncSession, site_id: uuid.UUID, key_id: uuid.UUID) -> ApiKey:
    stmt = (
        update(ApiKey)
        .where(ApiKey.id == key_id, ApiKey.site_id == site_id)
        .values(revoked_at=func.coalesce(ApiKey.revoked_at, utcnow()))
        .returning(ApiKey)
    )
    key = (await session.execute(stmt)).scalar_one_or_none()
    if key is None:
        raise NotFound("api key not found")
    return key


async def get_site(session: AsyncSession, site_id: uuid.UUID) -> Site:
    site = await session.get(Site, site_id)
    if site is None:
        raise NotFound("site not found")
    return site
