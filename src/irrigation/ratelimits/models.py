"""A site's own rate limits, one row per class it has set (no row: the deployment's)."""

import uuid
from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKey, String, func
from sqlalchemy.orm import Mapped, mapped_column

from irrigation.common.clock import utcnow
from irrigation.common.limiter import RateClass
from irrigation.common.orm import Base

_CLASSES = ", ".join(f"'{c.value}'" for c in RateClass)


class SiteRateLimit(Base):
    __tablename__ = "site_rate_limits"
    __table_args__ = (CheckConstraint(f"rate_class IN ({_CLASSES})", name="rate_class_known"),)

    site_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("sites.id", ondelete="CASCADE"), primary_key=True
    )
    rate_class: Mapped[str] = mapped_column(String(16), primary_key=True)
    # `limits`' notation as the admin wrote it, e.g. "100/minute".
    rate_limit: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, server_default=func.now())
