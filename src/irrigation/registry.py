"""Imports every domain's models so `Base.metadata` is complete (Alembic, tests)."""

from irrigation.alerts import models as alert_models
from irrigation.auth import models as auth_models
from irrigation.automation import models as automation_models
from irrigation.common import idempotency
from irrigation.common.orm import Base
from irrigation.fleet import models as fleet_models
from irrigation.ingest import models as ingest_models
from irrigation.pumps import models as pump_models
from irrigation.quotas import models as quota_models
from irrigation.ratelimits import models as rate_limit_models
from irrigation.readings import models as readings_models
from irrigation.wateruse import models as water_use_models

metadata = Base.metadata

__all__ = [
    "alert_models",
    "auth_models",
    "automation_models",
    "fleet_models",
    "idempotency",
    "ingest_models",
    "metadata",
    "pump_models",
    "quota_models",
    "rate_limit_models",
    "readings_models",
    "water_use_models",
]
