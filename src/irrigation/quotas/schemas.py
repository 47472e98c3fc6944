"""API shapes of a site's quotas."""

from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, Field

from irrigation.common.schemas import Body


class Quota(StrEnum):
    """The quotas, by the name a 409/429 `quota_exceeded` gives in its `quota` field."""

    max_concurrent_imports = "max_concurrent_imports"
    max_upload_bytes = "max_upload_bytes"
    waiting_run_requests_per_pump = "waiting_run_requests_per_pump"
    waiting_run_requests_per_site = "waiting_run_requests_per_site"
    max_schedules = "max_schedules"
    max_rules = "max_rules"
    max_webhooks = "max_webhooks"
    max_pending_quarantine = "max_pending_quarantine"


_ABOUT = {
    Quota.max_concurrent_imports: "History imports queued or running at once; one more "
    "upload is 429 `quota_exceeded` with `Retry-After`.",
    Quota.max_upload_bytes: "Largest import file, in bytes; a larger one is 413 "
    "`payload_too_large`.",
    Quota.waiting_run_requests_per_pump: "Run requests waiting for one pump; one more is 409 "
    "`quota_exceeded` (a schedule or rule skips its run with reason `quota_exceeded`).",
    Quota.waiting_run_requests_per_site: "Run requests waiting in the whole site; one more "
    "is 409 `quota_exceeded` (a schedule or rule skips its run, as above).",
    Quota.max_schedules: "Schedules; one more is 409 `quota_exceeded`.",
    Quota.max_rules: "Threshold rules; one more is 409 `quota_exceeded`.",
    Quota.max_webhooks: "Webhook subscriptions; one more is 409 `quota_exceeded`.",
    Quota.max_pending_quarantine: "Quarantined items awaiting review. Bad items beyond it "
    "are still refused and reported, but not kept for review (`quarantine_not_kept`).",
}


def _value(quota: Quota) -> object:
    return Field(ge=0, description=_ABOUT[quota])


class QuotaValues(BaseModel):
    max_concurrent_imports: Annotated[int, _value(Quota.max_concurrent_imports)]
    max_upload_bytes: Annotated[int, _value(Quota.max_upload_bytes)]
    waiting_run_requests_per_pump: Annotated[int, _value(Quota.waiting_run_requests_per_pump)]
    waiting_run_requests_per_site: Annotated[int, _value(Quota.waiting_run_requests_per_site)]
    max_schedules: Annotated[int, _value(Quota.max_schedules)]
    max_rules: Annotated[int, _value(Quota.max_rules)]
    max_webhooks: Annotated[int, _value(Quota.max_webhooks)]
    max_pending_quarantine: Annotated[int, _value(Quota.max_pending_quarantine)]


class QuotasOut(QuotaValues):
    """The site's quotas in force: its own where it set one, else the deployment's."""

    own: list[Quota] = Field(description="The quotas this site set itself.")
    deployment: QuotaValues = Field(
        description="The deployment's values: every site's default, and the highest a site may set."
    )


_SET = (
    "At most the deployment's value (422 `quota_above_deployment` above it); null: back to "
    "the deployment's value."
)
Setting = Annotated[int | None, Field(default=None, ge=0, le=2**63 - 1, description=_SET)]


class QuotasUpdate(Body):
    """Only the quotas sent change."""

    max_concurrent_imports: Setting = None
    max_upload_bytes: Setting = None
    waiting_run_requests_per_pump: Setting = None
    waiting_run_requests_per_site: Setting = None
    max_schedules: Setting = None
    max_rules: Setting = None
    max_webhooks: Setting = None
    max_pending_quarantine: Setting = None
