"""A small fleet per site, built through the API as a client would."""

from typing import Any

import httpx
import pytest

from tests.conftest import MakeKey, bearer
from tests.fleet.helpers import Headers, make_pump, make_sensor, make_water_source, make_zone

Fleet = dict[str, dict[str, Any]]


async def build_fleet(client: httpx.AsyncClient, headers: Headers) -> Fleet:
    zone = await make_zone(client, headers)
    source = await make_water_source(client, headers)
    pump = await make_pump(client, headers, zone["id"], water_source_id=source["id"])
    sensor = await make_sensor(client, headers, zone["id"])
    return {"zone": zone, "water_source": source, "pump": pump, "sensor": sensor}


@pytest.fixture
async def reader(make_key: MakeKey) -> Headers:
    """Headers of a read-only key of site A."""
    return bearer(await make_key("read"))


@pytest.fixture
async def fleet(client: httpx.AsyncClient, admin: Headers) -> Fleet:
    """Site A: one zone, water source, pump (on that source) and sensor."""
    return await build_fleet(client, admin)


@pytest.fixture
async def other_fleet(client: httpx.AsyncClient, other_admin: Headers) -> Fleet:
    """Site B: the same shapes and names as site A's fleet."""
    return await build_fleet(client, other_admin)
