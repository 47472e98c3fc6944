"""The demo site that `irrigation up` prepares, so a new user can act at once."""

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from irrigation.auth import service as auth
from irrigation.auth.schemas import Scope
from irrigation.fleet import service as fleet
from irrigation.fleet.models import Zone
from irrigation.fleet.schemas import PumpCreate, SensorCreate, SensorKind, ZoneCreate
from irrigation.settings import Settings

DEMO_SITE = "demo"


async def ensure_demo(session: AsyncSession, settings: Settings, saved_key: str | None) -> str:
    """The demo site with a zone, pump and sensor, and an admin key for it: the saved key
    if it still works, else a new one (keys are stored hashed, so they cannot be reprinted)."""
    async with session.begin():
        site = await auth.get_or_create_site(session, DEMO_SITE, create=True)
        site_id = site.id
        has_zone = (await session.execute(select(Zone.id).where(Zone.site_id == site_id))).first()
        if saved_key and await auth.authenticate(session, saved_key) is not None:
            key = saved_key
        else:
            _, key = await auth.create_key(session, site_id, "demo admin (up)", [Scope.admin])
    if not has_zone:
        zone = await fleet.create_zone(
            session, site_id, ZoneCreate(name="Demo field", timezone="Europe/Berlin")
        )
        await fleet.create_pump(
            session,
            settings,
            site_id,
            PumpCreate(zone_id=zone.id, name="Demo pump", hardware_id="demo-pump-1"),
        )
        await fleet.create_sensor(
            session,
            site_id,
            SensorCreate(
                zone_id=zone.id, name="Demo moisture", kind=SensorKind.soil_moisture, unit="%"
            ),
        )
    return key
