"""API shapes of a site's rate limits."""

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from irrigation.settings import parse_rate_limit


def _parseable(text: str) -> str:
    parse_rate_limit(text)  # its ValueError is the 422's message
    return text


LimitText = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=64),
    AfterValidator(_parseable),
    Field(
        description="`N/second`, `N/minute`, `N/hour` or `N/day` (also `N per 2 minutes`)",
        examples=["100/minute"],
    ),
]
_SITE = "The site's own limit; null: the deployment's."


class ClassLimits(BaseModel):
    """One limit per class."""

    read: str
    write: str
    ingest: str
    control: str
    expensive: str


class SiteLimits(BaseModel):
    """A site's own limits; null where it uses the deployment's."""

    model_config = ConfigDict(extra="forbid")

    read: LimitText | None = Field(default=None, description=_SITE)
    write: LimitText | None = Field(default=None, description=_SITE)
    ingest: LimitText | None = Field(
        default=None,
        description=_SITE + " A batch of N readings costs N + 1: below 10,001 the largest "
        "batches are always refused.",
    )
    control: LimitText | None = Field(default=None, description=_SITE)
    expensive: LimitText | None = Field(default=None, description=_SITE)


class RateLimitsOut(BaseModel):
    site: SiteLimits = Field(description="What the site's admin has set (PUT replaces it).")
    deployment: ClassLimits = Field(description="This deployment's, `IRRIGATION_RATE_LIMIT_*`.")
    effective: ClassLimits = Field(description="What each API key of the site gets.")
