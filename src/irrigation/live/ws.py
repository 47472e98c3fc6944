"""`/v1/live`: the same events over a WebSocket, one JSON text message each.

Every refusal is told after the handshake, as a close frame whose reason starts with the
problem code (`invalid_ticket: ...`): a browser sees a close code and reason, never the
status of a refused handshake. Close codes: 1008 refused (`unauthorized`,
`invalid_ticket`, `insufficient_scope`, `validation_error`) or the key was revoked
(`revoked`); 1013 try again later (`too_many_streams`, `rate_limited`, `slow_consumer`);
1012 the server is stopping (`shutdown`); 1011 the feed is unavailable (`unavailable`)."""

import asyncio
import json
from typing import Any

import structlog
from pydantic import ValidationError
from starlette.websockets import WebSocket, WebSocketDisconnect

from irrigation.common.errors import DomainError, Invalid, RateLimited, Unavailable
from irrigation.live.access import stream_principal
from irrigation.live.errors import TooManyStreams
from irrigation.live.hub import Connection, LiveHub
from irrigation.live.schemas import StreamQuery
from irrigation.live.stream import Backlog, End, Ended, Filters, StreamId, deliver

log = structlog.get_logger(__name__)

# How long the server waits for the first message (`{"resume_from": id}` or `{}`) before
# it starts at the position it took when the connection opened.
FIRST_MESSAGE_WAIT_S = 1.0
CLOSE_GRACE_S = 2.0
POLICY_VIOLATION, INTERNAL_ERROR, SERVICE_RESTART, TRY_AGAIN_LATER = 1008, 1011, 1012, 1013
END_CODES = {
    End.slow_consumer: (TRY_AGAIN_LATER, "the client fell too far behind; resume from its last id"),
    End.shutdown: (SERVICE_RESTART, "the server is stopping; resume from the last id"),
    End.revoked: (POLICY_VIOLATION, "the API key was revoked"),
    End.unavailable: (INTERNAL_ERROR, "the live feed is unavailable; resume from the last id"),
}
# A close frame's reason is at most 123 bytes of UTF-8.
MAX_REASON = 123


def _reason(code: str, detail: str) -> str:
    text = f"{code}: {detail}"
    while len(text.encode()) > MAX_REASON:
        text = text[:-1]
    return text


def _refusal_code(error: DomainError) -> int:
    if isinstance(error, TooManyStreams | RateLimited):
        return TRY_AGAIN_LATER
    if isinstance(error, Unavailable):
        return INTERNAL_ERROR
    return POLICY_VIOLATION


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    # A client that reads nothing never takes the close frame: then the server just
    # drops the connection.
    try:
        async with asyncio.timeout(CLOSE_GRACE_S):
            await websocket.close(code, reason)
    except (TimeoutError, RuntimeError, OSError, WebSocketDisconnect):
        pass


def _query(websocket: WebSocket) -> StreamQuery:
    try:
        return StreamQuery.model_validate(dict(websocket.query_params))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()))
        raise Invalid(f"query.{where}: {first.get('msg', 'invalid')}", field=where) from None


def _resume_from(text: str | None) -> StreamId | None:
    """The first message: `{}` or `{"resume_from": "<id>"}`."""
    shape = 'the first message is {} or {"resume_from": "<event id>"}'
    if text is None:
        raise Invalid(shape)
    try:
        body: Any = json.loads(text)
    except ValueError:
        raise Invalid(shape) from None
    if not isinstance(body, dict) or set(body) - {"resume_from"}:
        raise Invalid(shape)
    resume = body.get("resume_from")
    if resume is None:
        return None
    if not isinstance(resume, str):
        raise Invalid(shape)
    try:
        return StreamId.parse(resume)
    except ValueError as exc:
        raise Invalid(f"resume_from: {exc}") from None


async def _first_message(websocket: WebSocket) -> StreamId | None:
    """The client's resume id, if its first message brings one within the wait."""
    try:
        async with asyncio.timeout(FIRST_MESSAGE_WAIT_S):
            message = await websocket.receive()
    except TimeoutError:
        return None
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    return _resume_from(message.get("text"))


async def serve(websocket: WebSocket) -> None:
    hub: LiveHub = websocket.app.state.live
    try:
        query = _query(websocket)
        principal = await stream_principal(websocket, query.ticket)
        # Taken before the handshake completes: without a resume id, the stream starts
        # after what was there when the client connected.
        begin = await hub.start(principal.site_id, query.resume())
        lease = await hub.take_lease(principal.key_id)
    except DomainError as refusal:
        await websocket.accept()
        await _close(websocket, _refusal_code(refusal), _reason(refusal.code, refusal.detail))
        return
    except Exception as exc:  # the database or Redis: what an HTTP request hears as 503
        log.warning("live_socket_refused", error=type(exc).__name__)
        await websocket.accept()
        detail = "the live feed is unavailable; try again"
        await _close(websocket, INTERNAL_ERROR, _reason("unavailable", detail))
        return
    filters = Filters(query.type_set(), query.zone())
    async with Connection(hub, principal, filters, lease, "websocket") as connection:
        await websocket.accept()
        if query.last_event_id is None:
            try:
                resume = await _first_message(websocket)
                if resume is not None:
                    begin = await hub.start(principal.site_id, resume)
            except DomainError as error:
                await _close(websocket, _refusal_code(error), _reason(error.code, error.detail))
                return
            except WebSocketDisconnect:
                return
        connection.open(begin)
        backlog = connection.backlog
        await deliver(backlog, _write(websocket, backlog), _listen(websocket, backlog))
    reason = backlog.ended or End.client_gone
    if reason is not End.client_gone:
        code, detail = END_CODES[reason]
        await _close(websocket, code, _reason(reason.value, detail))


async def _write(websocket: WebSocket, backlog: Backlog) -> None:
    try:
        while True:
            for item in await backlog.take(None, 1):
                await websocket.send_text(item.json)
    except Ended:
        return
    except (WebSocketDisconnect, OSError, RuntimeError):  # the client is gone
        backlog.end(End.client_gone)
    except Exception:
        log.exception("live_write_failed")
        backlog.end(End.client_gone)


async def _listen(websocket: WebSocket, backlog: Backlog) -> None:
    """Reads (and ignores) what the client sends after its first message: a disconnect
    is only seen by reading."""
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
    except (WebSocketDisconnect, RuntimeError, OSError):
        pass
    backlog.end(End.client_gone)
