"""One factory per thing a test needs, built as a client or the CLI would: a site's key,
zones, water sources, pumps, sensors, threshold rules, schedules, and activations.
Each takes the fields a test cares about and fills in the rest."""

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from irrigation.auth import service as auth_service
from irrigation.auth.schemas import Scope
from tests.support.api import Headers

# The `make_key` fixture: `await make_key("admin", site="farm-a")`.
MakeKey = Callable[..., Awaitable[str]]


async def make_key(
    sessions: async_sessionmaker[AsyncSession], *scopes: str, site: str = "site-a"
) -> str:
    """A real key of `site` (created if new) with `scopes`, made as `irrigation keys create`
    makes it; returns its secret."""
    async with sessions() as session, session.begin():
        owner = await auth_service.get_or_create_site(session, site, create=True)
        _, secret = await auth_service.create_key(
            session, owner.id, "test", [Scope(s) for s in scopes]
        )
    return secret


async def created(
    client: httpx.AsyncClient, path: str, body: dict[str, Any], headers: Headers
) -> dict[str, Any]:
    """POST `body` to `path`, which must answer 201; returns what it created."""
    response = await client.post(path, json=body, headers=headers)
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


def _unique(prefix: str) -> str:
    return f"{prefix} {uuid.uuid4().hex[:8]}"


async def make_zone(
    client: httpx.AsyncClient,
    headers: Headers,
    name: str | None = None,
    *,
    timezone: str = "Europe/Berlin",
) -> dict[str, Any]:
    """A zone; named uniquely unless `name` is given (zone names are unique per site)."""
    body = {"name": name or _unique("Zone"), "timezone": timezone}
    return await created(client, "/v1/zones", body, headers)


async def make_water_source(
    client: httpx.AsyncClient, headers: Headers, name: str = "Well", **fields: Any
) -> dict[str, Any]:
    body = {"name": name, "max_concurrent_pumps": 2}
    return await created(client, "/v1/water-sources", {**body, **fields}, headers)


async def make_pump(
    client: httpx.AsyncClient,
    headers: Headers,
    hardware_id: str | None = None,
    *,
    zone_id: str | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """A pump named after its hardware id (a fresh one unless given), in `zone_id` or else
    in a UTC zone of its own; `fields` (water_source_id, cooldown_s, ...) go in the body."""
    hardware_id = hardware_id or f"hw-{uuid.uuid4().hex[:8]}"
    if zone_id is None:
        zone = await make_zone(client, headers, f"zone {hardware_id}", timezone="UTC")
        zone_id = zone["id"]
    body = {"zone_id": zone_id, "name": hardware_id, "hardware_id": hardware_id}
    return await created(client, "/v1/pumps", {**body, **fields}, headers)


async def make_sensor(
    client: httpx.AsyncClient, headers: Headers, zone_id: str | None = None, **fields: Any
) -> dict[str, Any]:
    """A soil moisture sensor in `zone_id`, or else in a zone of its own; `fields` (name,
    kind, unit, alert_min, ...) go in the body."""
    if zone_id is None:
        zone_id = (await make_zone(client, headers))["id"]
    body = {"zone_id": zone_id, "name": "North moisture", "kind": "soil_moisture", "unit": "%"}
    return await created(client, "/v1/sensors", {**body, **fields}, headers)


async def make_rule(
    client: httpx.AsyncClient, headers: Headers, zone_id: str, **fields: Any
) -> dict[str, Any]:
    """A threshold rule: start below 20, stop above 30, for 60 s."""
    body = {"zone_id": zone_id, "start_below": 20.0, "stop_above": 30.0, "duration_s": 60}
    return await created(client, "/v1/threshold-rules", {**body, **fields}, headers)


async def make_schedule(
    client: httpx.AsyncClient, headers: Headers, zone_id: str, **fields: Any
) -> dict[str, Any]:
    """A schedule: 60 s at 06:00 every day."""
    body = {"zone_id": zone_id, "duration_s": 60, "start_times": ["06:00"]}
    return await created(client, "/v1/schedules", {**body, **fields}, headers)


async def activate(
    client: httpx.AsyncClient,
    headers: Headers,
    pump_id: str,
    duration_s: int = 2,
    **extra: Any,
) -> httpx.Response:
    """Requests a manual activation (`idempotency_key=` sends the header); returns the
    answer as it is, since refusals are what many tests check."""
    idem = extra.pop("idempotency_key", None)
    h = {**headers, **({"Idempotency-Key": idem} if idem else {})}
    return await client.post(
        f"/v1/pumps/{pump_id}/activations",
        json={"duration_s": duration_s, "priority": "manual", **extra},
        headers=h,
    )
