"""A site's own quotas: one row per site whose admin set any; a null column (or no row)
means the deployment's value."""

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, func
from sqlalchemy.orm import Mapped, mapped_column

from irrigation.common.clock import utcnow
from irrigation.common.orm import Base


class SiteQuota(Base):
    __tablename__ = "site_quotas"

    site_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("sites.id", ondelete="CASCADE"), primary_key=True
    )
    max_concurrent_imports: Mapped[int | None] = mapped_column(BigInteger, default=None)
    max_upload_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    waiting_run_requests_per_pump: Mapped[int | None] = mapped_column(BigInteger, default=None)
    waiting_run_requests_per_site: Mapped[int | None] = mapped_column(BigInteger, default=None)
    max_schedules: Mapped[int | None] = mapped_column(BigInteger, default=None)
    max_rules: Mapped[int | None] = mapped_column(BigInteger, default=None)
    max_webhooks: Mapped[int | None] = mapped_column(BigInteger, default=None)
    max_pending_quarantine: Mapped[int | None] = mapped_column(BigInteger, default=None)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, server_default=func.now())
