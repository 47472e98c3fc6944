"""The soak's fleet, built as a customer would build it: a site and an admin key each
(made as `irrigation keys create` makes them), then zones, water sources, pumps and a
schedule through the API. Sites are named after the soak, so soaks may share a database."""

from dataclasses import dataclass, field
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from irrigation import registry
from irrigation.auth import service as auth
from irrigation.auth.schemas import Scope
from irrigation.soak import history
from irrigation.soak.plan import Plan

# Every model mapped before the first flush: foreign keys resolve across domains.
assert registry.metadata.tables

Headers = dict[str, str]


@dataclass
class SiteFleet:
    id: str
    name: str
    headers: Headers
    pump_ids: list[str] = field(default_factory=list)
    schedule_ids: list[str] = field(default_factory=list)


@dataclass
class Fleet:
    sites: list[SiteFleet]
    config: history.Config

    def pump(self, site: int, pump: int) -> history.Pump:
        pump_id = self.sites[site].pump_ids[pump]
        return next(p for p in self.config.pumps if p.id == pump_id)


async def _created(
    api: httpx.AsyncClient, path: str, body: dict[str, Any], headers: Headers
) -> dict[str, Any]:
    response = await api.post(path, json=body, headers=headers)
    if response.status_code != 201:
        raise RuntimeError(f"POST {path} answered {response.status_code}: {response.text[:500]}")
    created: dict[str, Any] = response.json()
    return created


async def build_fleet(
    api: httpx.AsyncClient,
    sessions: async_sessionmaker[AsyncSession],
    plan: Plan,
    prefix: str,
    *,
    schedules: bool,
) -> Fleet:
    sites: list[SiteFleet] = []
    config = history.Config(sites=[], water_sources=[], pumps=[])
    for site_plan in plan.sites:
        name = f"{prefix} {site_plan.name}"
        async with sessions() as session, session.begin():
            owner = await auth.get_or_create_site(session, name, create=True)
            _, secret = await auth.create_key(session, owner.id, "soak", [Scope.admin])
        site = SiteFleet(str(owner.id), name, {"Authorization": f"Bearer {secret}"})
        sites.append(site)
        config.sites.append(history.Site(site.id, name))
        zone = await _created(api, "/v1/zones", {"name": "soak", "timezone": "UTC"}, site.headers)
        sources = []
        flows = site_plan.source_flows or [None] * len(site_plan.source_capacities)
        for i, (capacity, max_flow) in enumerate(
            zip(site_plan.source_capacities, flows, strict=True)
        ):
            body = {"name": f"source {i}", "max_concurrent_pumps": capacity}
            if max_flow is not None:
                body["max_flow_lpm"] = max_flow
            source = await _created(api, "/v1/water-sources", body, site.headers)
            sources.append(source["id"])
            config.water_sources.append(
                history.WaterSource(
                    source["id"], site.id, source["name"], capacity, source["max_flow_lpm"]
                )
            )
        for pump_plan in site_plan.pumps:
            body = {
                "zone_id": zone["id"],
                "water_source_id": sources[pump_plan.source],
                "name": pump_plan.name,
                "hardware_id": pump_plan.hardware_id,
                "max_runtime_s": pump_plan.max_runtime_s,
                "cooldown_s": pump_plan.cooldown_s,
                "nominal_flow_lpm": pump_plan.nominal_flow_lpm,
            }
            pump = await _created(api, "/v1/pumps", body, site.headers)
            site.pump_ids.append(pump["id"])
            config.pumps.append(
                history.Pump(
                    id=pump["id"],
                    site_id=site.id,
                    name=pump["name"],
                    hardware_id=pump["hardware_id"],
                    max_runtime_s=pump["max_runtime_s"],
                    cooldown_s=pump["cooldown_s"],
                    water_source_id=pump["water_source_id"],
                    nominal_flow_lpm=pump["nominal_flow_lpm"],
                )
            )
        if schedules:
            # Automation's own requests: every pump of the zone, one after another, each
            # minute; they wait in the run queue like a person's queued request.
            body = {"zone_id": zone["id"], "cron": "* * * * *", "duration_s": 1, "max_delay_s": 60}
            schedule = await _created(api, "/v1/schedules", body, site.headers)
            site.schedule_ids.append(schedule["id"])
    return Fleet(sites, config)
