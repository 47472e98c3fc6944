"""Who opens a live stream: the key of a ticket (spent by this request, whatever its
answer, unless the database could not be asked) or of the bearer header; counted once in
`read` for that key, like any GET."""

from starlette.requests import HTTPConnection

from irrigation.auth import service as auth_service
from irrigation.auth.deps import Principal, identify
from irrigation.auth.schemas import Scope
from irrigation.common.errors import DomainError, Forbidden, Unauthorized
from irrigation.live import tickets
from irrigation.live.errors import InvalidTicket, feed_unavailable
from irrigation.live.hub import LiveHub
from irrigation.ratelimits.deps import enforce_rate_limit

CHALLENGE = {"WWW-Authenticate": "Bearer"}


async def _ticket_principal(hub: LiveHub, ticket: str) -> Principal | None:
    with feed_unavailable():
        claims = await tickets.read(hub.redis, hub.namespace, ticket)
    if claims is None:
        return None
    # Checked again now: a key revoked since the ticket was issued gets nothing with it.
    async with hub.sessions() as session:
        key = await auth_service.active_key(session, claims.key_id)
    if key is None or key.site_id != claims.site_id:
        return None
    with feed_unavailable():
        if not await tickets.spend(hub.redis, hub.namespace, ticket):
            return None
    return Principal(key_id=key.id, site_id=key.site_id, scopes=frozenset(key.scopes))


async def stream_principal(conn: HTTPConnection, ticket: str | None) -> Principal:
    """The principal of a stream request (an HTTP request or a WebSocket handshake). A
    ticket, when given, is the credential (the header is then not looked at). 401
    `invalid_ticket` or `unauthorized`, 403 without `read`, 429 over the `read` limit."""
    hub: LiveHub = conn.app.state.live
    failure: DomainError | None = None
    if ticket is not None:
        principal = await _ticket_principal(hub, ticket)
        # The rate limiter then counts the request for the ticket's key.
        conn.state.principal = principal
        if principal is None:
            failure = InvalidTicket("the ticket is unknown, used or expired; ask for a new one")
    else:
        principal = await identify(conn)
        if principal is None:
            has_header = bool(conn.headers.get("Authorization"))
            detail = "invalid or revoked API key" if has_header else "missing bearer API key"
            failure = Unauthorized(detail, headers=CHALLENGE)
    await enforce_rate_limit(conn)
    if failure is not None or principal is None:
        raise failure or Unauthorized(headers=CHALLENGE)
    if not principal.has(Scope.read):
        raise Forbidden("this key lacks the scope(s): read", required=["read"])
    return principal
