"""Text PostgreSQL can store: its text types refuse the NUL character, which JSON allows."""

from pydantic import AfterValidator


def _without_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("may not contain the NUL character (\\u0000)")
    return value


# Put in a field's `Annotated[str, ...]`: a 422 naming the field instead of a driver error.
NoNul = AfterValidator(_without_nul)
