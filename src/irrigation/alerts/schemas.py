"""API shapes of alerts, webhook subscriptions and their delivery log."""

import uuid
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
)

from irrigation.alerts.models import (
    AlertKind,
    AlertStatus,
    DeliveryError,
    DeliveryStatus,
    Severity,
    SubjectType,
    WebhookEvent,
)
from irrigation.common.schemas import Body, NoNulText, StoredOut, UpdateBody
from irrigation.common.text import NoNul


class AlertOut(BaseModel):
    """An alert as the API shows it and as webhooks carry it (`data`)."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    site_id: uuid.UUID
    kind: AlertKind
    severity: Severity
    subject_type: SubjectType
    subject_id: uuid.UUID = Field(
        description="The sensor, the pump, the water source, or the site itself."
    )
    status: AlertStatus
    message: str
    detail: dict[str, Any] = Field(description="The observed values behind the message.")
    raised_at: datetime
    acknowledged_at: datetime | None
    acknowledged_by: str | None = Field(description="The id of the API key that acknowledged.")
    cleared_at: datetime | None
    last_seen_at: datetime = Field(description="When the condition was last observed to hold.")


def _http_url(value: str) -> str:
    # Checked by hand, not with AnyHttpUrl: the URL is stored and sent exactly as given.
    scheme, sep, rest = value.partition("://")
    if not sep or scheme.lower() not in ("http", "https") or not rest.split("/", 1)[0]:
        raise ValueError("must be an absolute http:// or https:// URL")
    if any(c.isspace() for c in value):
        raise ValueError("may not contain whitespace")
    # urllib, not httpx: the API process loads no HTTP client (tests/test_migrations.py).
    try:
        parts = urlsplit(value)
        host = parts.hostname
        _ = parts.port  # a port that is no number, or out of range, raises here
    except ValueError:
        raise ValueError("is not a valid URL") from None
    if not host:
        raise ValueError("must name a host")
    return value


WebhookUrl = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=2000),
    NoNul,
    AfterValidator(_http_url),
    Field(
        examples=["https://example.com/hooks/irrigation"],
        description="An absolute `http://` or `https://` URL, without whitespace. Its host "
        "must be, and resolve only to, public addresses (422 `webhook_url_forbidden`), unless "
        "`IRRIGATION_WEBHOOK_ALLOW_NETWORKS` covers them.",
        # What _http_url checks: a scheme, a non-empty host part, no whitespace, no NUL.
        json_schema_extra={"pattern": r"^[Hh][Tt][Tt][Pp][Ss]?://[^\s/\u0000]+([/][^\s\u0000]*)?$"},
    ),
]
Description = Annotated[
    str,
    StringConstraints(strip_whitespace=True, max_length=500),
    NoNul,
    NoNulText,
]
Events = Annotated[
    list[WebhookEvent],
    Field(
        max_length=10,
        description="Events to deliver; empty means every event. `ping` is sent by the test "
        "endpoint whatever this says.",
    ),
]


class WebhookCreate(Body):
    url: WebhookUrl
    events: Events = Field(default_factory=list)
    enabled: bool = True
    description: Description | None = None


class WebhookUpdate(UpdateBody):
    nullable = frozenset({"description"})

    url: WebhookUrl | None = None
    events: Events | None = None
    enabled: bool | None = None
    description: Description | None = None


class WebhookOut(StoredOut):
    url: str
    events: list[WebhookEvent]
    enabled: bool
    description: str | None


class WebhookCreated(WebhookOut):
    secret: str = Field(
        description="The signing secret: shown this once. Verify `X-Irrigation-Signature` with it."
    )


def _error_class(value: object) -> object:
    """Rows written before the log kept classes only held free text: shown as a class."""
    if value is None or value in DeliveryError.__members__:
        return value
    text = str(value)
    if text.startswith("HTTP "):
        return DeliveryError.http_error
    if text.startswith("no answer within") or "Timeout" in text:
        return DeliveryError.timeout
    if text == "subscription disabled":
        return DeliveryError.subscription_disabled
    if text.startswith("ConnectError"):
        return DeliveryError.connect_error
    return DeliveryError.error


class DeliveryOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    subscription_id: uuid.UUID
    event: WebhookEvent
    status: DeliveryStatus
    attempts: int
    created_at: datetime
    next_attempt_at: datetime
    last_attempt_at: datetime | None
    last_status_code: int | None = Field(description="The receiver's status code, if it answered.")
    last_error: Annotated[DeliveryError | None, BeforeValidator(_error_class)] = Field(
        description="Why the last attempt failed, as a fixed class: `http_error` (answered, "
        "not 2xx: see `last_status_code`; redirects are not followed), `timeout`, "
        "`dns_error`, `forbidden_address` (resolved to a non-public address), "
        "`connection_refused`, `connect_error`, `tls_error`, `protocol_error` (not HTTP), "
        "`network_error`, `subscription_disabled`, `error`, `internal_error` (sending or "
        "recording it failed here, not at the receiver). Never the receiver's own text."
    )
    delivered_at: datetime | None
    payload: dict[str, Any]


class PingQueued(BaseModel):
    delivery_id: uuid.UUID
