"""Imports every domain's models so `Base.metadata` is complete (Alembic, tests)."""

from irrigation.auth import models as auth_models
from irrigation.db import Base
from irrigation.fleet import models as fleet_models

metadata = Base.metadata

__all__ = ["auth_models", "fleet_models", "metadata"]
