"""The bases every domain's API shapes share: strict bodies, PATCH bodies, stored rows."""

import uuid
from datetime import datetime
from typing import Annotated, Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

Version = Annotated[int, Field(ge=1, le=2**31 - 1)]


class Body(BaseModel):
    """A request body: unknown fields are a 422, not silently dropped."""

    model_config = ConfigDict(extra="forbid")


class UpdateBody(Body):
    """PATCH bodies: absent fields stay as they are; `null` clears only what may be empty."""

    nullable: ClassVar[frozenset[str]] = frozenset()

    version: Version | None = Field(
        default=None, description="The version you read; or send it as `If-Match`."
    )

    @model_validator(mode="after")
    def _no_null_for_required(self) -> Self:
        for name in self.model_fields_set - self.nullable:
            if getattr(self, name) is None:
                raise ValueError(f"{name} may not be null")
        return self

    def changes(self) -> dict[str, Any]:
        """The fields sent, to set on the row (`version` is the compare-and-set's, not a
        change); an explicit null only where `nullable` allows clearing."""
        sent = self.model_dump(exclude_unset=True, exclude={"version"})
        return {k: v for k, v in sent.items() if v is not None or k in self.nullable}


class StoredOut(BaseModel):
    """A site-owned, versioned row as the API shows it."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    site_id: uuid.UUID
    version: int
    created_at: datetime
