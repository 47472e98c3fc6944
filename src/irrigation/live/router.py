"""HTTP routes of the live feed: tickets, Server-Sent Events and the WebSocket."""

import uuid
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Security, WebSocket
from fastapi.security import HTTPAuthorizationCredentials

from irrigation.auth.deps import ReadPrincipal, bearer
from irrigation.common.errors import Invalid
from irrigation.common.limiter import RateClass, limited_as
from irrigation.common.openapi import problems
from irrigation.live import tickets, ws
from irrigation.live.access import stream_principal
from irrigation.live.errors import feed_unavailable
from irrigation.live.hub import Connection, LiveHub
from irrigation.live.schemas import LAST_EVENT_ID, TICKET, TYPES, ZONE_ID, TicketOut
from irrigation.live.sse import MEDIA_TYPE, EventStream
from irrigation.live.stream import ID_PATTERN, TYPES_PATTERN, Filters, StreamId, parse_types

# Behind the app's rate-limit dependency, like every route.
router = APIRouter(prefix="/v1", tags=["live"])
# Not behind it: a stream opened with a ticket is counted for the ticket's key, which only
# the route knows once it has spent the ticket (access.stream_principal counts it).
stream_router = APIRouter(prefix="/v1", tags=["live"])
socket_router = APIRouter(prefix="/v1")

EXAMPLE = (
    ": connected\n\n"
    "id: 1765128000000-0\nevent: pump\ndata: "
    '{"id":"1765128000000-0","type":"pump","site_id":"…","at":"2026-12-07T17:20:00+00:00",'
    '"data":{"id":"…","zone_id":"…","status":"running","…":"…"}}\n\n'
    ": ping\n\n"
)
STREAM_DESCRIPTION = f"""The site's events as they happen, as Server-Sent Events
(`{MEDIA_TYPE}`). Each event is `id: <id>`, `event: <type>` and `data: <the event as
JSON>` (`{{"id", "type", "site_id", "at", "data"}}`; `data` is the resource's REST shape,
see docs/api.md); `: ping` after `IRRIGATION_LIVE_HEARTBEAT_S` (15 s) without one.

Without a resume id the stream starts with the events published after the moment of
connection. With one (the `Last-Event-ID` header, which wins, or `last_event_id`) it
sends what the site's stream still holds after that id, then goes on live: nothing lost,
nothing twice. If events after that id were already trimmed away (the stream keeps
`IRRIGATION_LIVE_STREAM_MAXLEN` per site), it first sends `event: gap` with
`{{"type": "gap", "last_event_id", "first_available_id"}}`: refetch what you show.

The server ends the stream with `event: end` and `{{"type": "end", "reason",
"detail"}}`, `reason` one of `slow_consumer` (more than `IRRIGATION_LIVE_MAX_BACKLOG`
events waited for the client), `shutdown`, `revoked` (the key), `unavailable` (Redis);
reconnect with the last id (a fresh ticket) except after `revoked`.

Counted once in `read` when it opens; at most `IRRIGATION_LIVE_MAX_STREAMS_PER_KEY` (5)
streams per key, SSE and WebSocket together. The same events as JSON messages:
WebSocket `/v1/live` (docs/api.md)."""


@router.post(
    "/live/tickets",
    status_code=201,
    response_model=TicketOut,
    responses=problems(
        described={
            503: "Try again after `Retry-After` seconds: Redis, which keeps tickets, or the "
            "database is unavailable (`unavailable`, `database_unavailable`)"
        }
    ),
)
@limited_as(RateClass.read)
async def create_ticket(request: Request, principal: ReadPrincipal) -> TicketOut:
    """A single-use ticket for `GET /v1/events?ticket=` or `/v1/live?ticket=`, valid for
    `IRRIGATION_LIVE_TICKET_TTL_S` (60 s) and bound to this key, its site and scopes. A
    stream opened with it ends when the key is revoked."""
    hub: LiveHub = request.app.state.live
    with feed_unavailable():
        ticket, expires_at = await tickets.issue(
            hub.redis,
            hub.namespace,
            tickets.Claims(principal.key_id, principal.site_id, principal.scopes),
            hub.settings.live_ticket_ttl_s,
        )
    return TicketOut(ticket=ticket, expires_at=expires_at)


def _resume(header: str | None, query: str | None) -> StreamId | None:
    text, field = (header, "header.Last-Event-ID") if header else (query, "query.last_event_id")
    if not text:
        return None
    try:
        return StreamId.parse(text)
    except ValueError as exc:
        raise Invalid(f"{field}: {exc}", field=field) from None


@stream_router.get(
    "/events",
    status_code=200,
    response_class=EventStream,
    description=STREAM_DESCRIPTION,
    responses={
        200: {
            "description": "The event stream, until the client or the server ends it",
            "content": {MEDIA_TYPE: {"schema": {"type": "string"}, "example": EXAMPLE}},
        },
        **problems(
            429,
            described={
                401: "Missing, invalid or revoked API key (`unauthorized`), or a ticket "
                "that is unknown, used or expired (`invalid_ticket`)",
                403: "The key lacks the `read` scope (`insufficient_scope`)",
                422: "An unknown event type, a zone id that is not a UUID, or a malformed "
                "resume id (`validation_error`)",
                429: "The key already has `IRRIGATION_LIVE_MAX_STREAMS_PER_KEY` streams open "
                "(`too_many_streams`, with `limit`)",
                503: "Try again after `Retry-After` seconds: Redis, which carries the feed, "
                "or the database is unavailable (`unavailable`, `database_unavailable`)",
            },
        ),
    },
)
async def stream_events(
    request: Request,
    types: Annotated[str | None, Query(description=TYPES, pattern=TYPES_PATTERN)] = None,
    zone_id: Annotated[uuid.UUID | None, Query(description=ZONE_ID)] = None,
    last_event_id: Annotated[
        str | None, Query(description=LAST_EVENT_ID, pattern=ID_PATTERN)
    ] = None,
    last_event_id_header: Annotated[
        str | None,
        Header(
            alias="Last-Event-ID",
            description="What a browser's EventSource sends when it reconnects by itself; "
            "wins over `last_event_id`.",
            pattern=ID_PATTERN,
        ),
    ] = None,
    ticket: Annotated[str | None, Query(description=TICKET)] = None,
    # Documents the bearer scheme; the key itself is read by `stream_principal`.
    _credentials: Annotated[
        HTTPAuthorizationCredentials | None, Security(bearer, scopes=["read"])
    ] = None,
) -> EventStream:
    # Everything the request says is checked before the ticket is spent.
    resume = _resume(last_event_id_header, last_event_id)
    filters = Filters(parse_types(types) if types else None, str(zone_id) if zone_id else None)
    principal = await stream_principal(request, ticket)
    hub: LiveHub = request.app.state.live
    begin = await hub.start(principal.site_id, resume)
    lease = await hub.take_lease(principal.key_id)
    connection = Connection(hub, principal, filters, lease, "sse")
    return EventStream(connection, begin, hub.settings.live_heartbeat_s)


@socket_router.websocket("/live")
async def live_socket(websocket: WebSocket) -> None:
    await ws.serve(websocket)
