"""The bases every domain's API shapes share: strict bodies, PATCH bodies, stored rows."""

import uuid
from datetime import datetime
from typing import Annotated, Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.config import JsonDict

Version = Annotated[int, Field(ge=1, le=2**31 - 1)]

# JSON Schema patterns that state what the validators of text fields check, so a client
# knows it (documentation only: the validators' own messages stay the answer). PostgreSQL's
# text refuses NUL (common.text.NoNul); a stripped required text must not be blank.
NO_NUL = r"^[^\u0000]*$"
NOT_BLANK = r"^[^\u0000]*[^\s\u0000][^\u0000]*$"
NoNulText = Field(json_schema_extra={"pattern": NO_NUL})
NotBlankText = Field(json_schema_extra={"pattern": NOT_BLANK})


class Body(BaseModel):
    """A request body: unknown fields are a 422, not silently dropped."""

    model_config = ConfigDict(extra="forbid")


def _update_schema(schema: dict[str, Any], model: type[BaseModel]) -> None:
    """In the JSON Schema, a field that may be left out but not cleared is not nullable; and
    the model's `schema_rules` (keywords between fields) are added."""
    schema.update(getattr(model, "schema_rules", {}))
    nullable: frozenset[str] = getattr(model, "nullable", frozenset())
    for name, field in schema.get("properties", {}).items():
        if name in nullable:
            continue
        if field.get("default", ...) is None:
            del field["default"]
        branches = [b for b in field.get("anyOf", ()) if b != {"type": "null"}]
        if len(branches) == 1:
            del field["anyOf"]
            field.update({**branches[0], **field})


class UpdateBody(Body):
    """PATCH bodies: absent fields stay as they are; `null` clears only what may be empty."""

    model_config = ConfigDict(json_schema_extra=_update_schema)

    nullable: ClassVar[frozenset[str]] = frozenset()
    schema_rules: ClassVar[JsonDict] = {}

    version: Version | None = Field(
        default=None,
        description="The version you read; or send it as `If-Match`. One of the two is "
        "required: without either the answer is 428 `version_required`.",
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
