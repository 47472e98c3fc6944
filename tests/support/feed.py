"""The live feed as the tests read it: a site's stream, decoded, oldest first."""

import uuid
from typing import Any

import redis.asyncio as aioredis

from irrigation import feed


async def events(
    redis: aioredis.Redis, namespace: str, site_id: uuid.UUID | str, *types: str
) -> list[dict[str, Any]]:
    """Every event of the site's stream (only those of `types`, if given)."""
    entries = await redis.xrange(feed.stream_key(namespace, site_id))
    decoded = [feed.decode(entry_id, fields) for entry_id, fields in entries]
    return [e for e in decoded if not types or e["type"] in types]


async def data_of(
    redis: aioredis.Redis, namespace: str, site_id: uuid.UUID | str, type_: str
) -> list[dict[str, Any]]:
    """The `data` of every event of one type, oldest first."""
    return [e["data"] for e in await events(redis, namespace, site_id, type_)]
