"""Small request-parsing helpers shared by routers."""

import hmac
from typing import Annotated

from fastapi import Header

from irrigation.common.errors import Invalid


async def if_match_version(
    if_match: Annotated[
        str | None,
        Header(
            max_length=40,
            description='The version you read (`3`, `"3"` or `W/"3"`); or send `version`.',
            # The form parsed below, for versions up to 999,999,999 (the check allows 2**31-1).
            json_schema_extra={"pattern": r'^(W/)?"?[1-9][0-9]{0,8}"?$'},
        ),
    ] = None,
) -> int | None:
    if if_match is None:
        return None
    raw = if_match.strip().removeprefix("W/").strip('"')
    # isascii(): str.isdigit() also accepts "²", which int() refuses.
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) < 2**31:
        raise Invalid("If-Match must carry a version number", field="header.if-match")
    return int(raw)


def bearer_matches(authorization: str | None, token: str) -> bool:
    """Whether an `Authorization` header carries `Bearer <token>` (compared in constant
    time); an empty token lets everyone in."""
    if not token:
        return True
    scheme, _, given = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), token.encode()
    )
