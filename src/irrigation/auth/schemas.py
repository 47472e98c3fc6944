"""API shapes for sites and keys."""

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from irrigation.common.schemas import NotBlankText
from irrigation.common.text import NoNul


class Scope(StrEnum):
    read = "read"
    ingest = "ingest"
    control = "control"
    admin = "admin"


Name = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200),
    NoNul,
    NotBlankText,
]


class ApiKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    scopes: list[Scope] = Field(min_length=1, max_length=4)


class ApiKeyOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    site_id: uuid.UUID
    name: str
    prefix: str
    scopes: list[Scope]
    created_at: datetime
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyOut):
    key: str = Field(description="The secret key. Shown only once: store it now.")


class SiteOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    created_at: datetime
    paused_until: datetime | None = Field(
        description="The site's automation (schedules and rules) is paused until then; "
        "a time in the past means it is not (`POST`/`DELETE /v1/sites/current/pause`)."
    )
    rain_delay_until: datetime | None = Field(
        description="Every zone of the site is on rain delay until then; a time in the past "
        "means it is not (`POST`/`DELETE /v1/sites/current/rain-delay`)."
    )
