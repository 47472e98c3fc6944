"""A small fleet per site, built through the API as a client would."""

from typing import Any

import httpx
import pytest

from tests.support.api import Headers, bearer
from tests.support.factories import MakeKey, make_pump, make_sensor, make_water_source, make_zone

Fleet = dict[str, dict[str, Any]]


async def build_fleet(client: httpx.AsyncClient, headers: Headers) -> Fleet:
    """The same names in every site (hardware ids differ): what one site may not see of
    another's objects can be searched for by name."""
    zone = await make_zone(client, headers, "North field")
    source = await make_water_source(client, headers)
    pump = await make_pump(
        client, headers, zone_id=zone["id"], water_source_id=source["id"], name="Pump"
    )
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
