"""Sites and their API keys."""

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, String
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column

from irrigation.common.orm import Base, IdMixin


class Site(IdMixin, Base):
    __tablename__ = "sites"

    name: Mapped[str] = mapped_column(String(200), unique=True)
    # Automation switches of the whole site (thresholds and schedules; people are unaffected).
    paused_until: Mapped[datetime | None] = mapped_column(default=None)
    rain_delay_until: Mapped[datetime | None] = mapped_column(default=None)


class ApiKey(IdMixin, Base):
    __tablename__ = "api_keys"

    site_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("sites.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(16))
    # Only a SHA-256 of the key is kept: keys are 256-bit random, so a slow hash adds nothing.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[list[str]] = mapped_column(ARRAY(String(16)))
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)
