"""Building response models from ORM rows that also carry computed fields."""

from typing import Any

from pydantic import BaseModel


def columns_of(row: object, model: type[BaseModel], *computed: str) -> dict[str, Any]:
    """The model's fields read from the row, except the computed ones.

    Attribute access, not `__dict__`: a fresh row's defaults live only in its columns."""
    return {name: getattr(row, name) for name in model.model_fields if name not in computed}
