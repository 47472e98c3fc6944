"""The live feed's API shapes: the ticket, and the query every stream takes."""

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator

from irrigation.live.stream import ID_PATTERN, TYPES_PATTERN, StreamId, parse_types

TICKET = (
    "A ticket from `POST /v1/live/tickets` instead of the `Authorization` header (a "
    "browser's EventSource and WebSocket cannot set headers; an API key never goes in a "
    "URL). Spent by the request that presents it, whatever its answer; when given, the "
    "header is not looked at."
)
TYPES = (
    "Only these event types, comma-separated (`reading`, `activation`, `pump`, `alert`, "
    "`decision`, `ingest_job`), e.g. `reading,pump`; an unknown type is 422."
)
ZONE_ID = "Only events whose `data.zone_id` is this zone."
LAST_EVENT_ID = (
    "Resume after this event id (`<milliseconds>-<sequence>`): what the stream holds after "
    "it, then live. A browser reconnecting with a fresh ticket puts its last id here."
)


class TicketOut(BaseModel):
    ticket: str = Field(
        description="Single use; put it in the stream's URL as `?ticket=`.",
        examples=["lt_3q2-7wEvA1fPqYk0cZ2nVxRj9s8uHbDgKmLtNoQpW4e"],
    )
    expires_at: datetime = Field(description="Unused by then, it is refused (401).")


class StreamQuery(BaseModel):
    """The WebSocket's query (the SSE route declares the same parameters itself)."""

    model_config = ConfigDict(extra="ignore")

    ticket: str | None = None
    types: str | None = Field(default=None, pattern=TYPES_PATTERN)
    zone_id: uuid.UUID | None = None
    last_event_id: str | None = Field(default=None, pattern=ID_PATTERN)

    @field_validator("last_event_id")
    @classmethod
    def _in_range(cls, value: str | None) -> str | None:
        if value is not None:
            StreamId.parse(value)  # the pattern passes 20 digits; a part is 64 bits
        return value

    def type_set(self) -> frozenset[str] | None:
        return parse_types(self.types) if self.types is not None else None

    def zone(self) -> str | None:
        return str(self.zone_id) if self.zone_id is not None else None

    def resume(self) -> StreamId | None:
        return StreamId.parse(self.last_event_id) if self.last_event_id is not None else None
