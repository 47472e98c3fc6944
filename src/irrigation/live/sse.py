"""`GET /v1/events` as it streams: the Server-Sent Events response.

Its own ASGI response rather than Starlette's StreamingResponse, because the stream must
be able to stop while a send is blocked: a client that stopped reading holds the writer in
`send` once the socket's buffers are full, and the reader then ends the connection
(`slow_consumer`). The writer is cancelled, a last `end` event is offered for a short
while, and if the client takes nothing the response is abandoned (the server closes the
connection)."""

import asyncio
import json

import structlog
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from irrigation.live.hub import Connection
from irrigation.live.stream import Backlog, End, Ended, Item, Start, deliver

log = structlog.get_logger(__name__)

MEDIA_TYPE = "text/event-stream"
PING = b": ping\n\n"
# Sent first, so a client (and a proxy) sees the stream open at once.
OPENING = b": connected\n\n"
# Events sent in one write, at most, when several wait.
BATCH = 64
# How long the last words of a stream that the server ends may take to leave.
CLOSE_GRACE_S = 2.0
DETAILS = {
    End.slow_consumer: "the client fell too far behind; reconnect with the last event id",
    End.shutdown: "the server is stopping; reconnect with the last event id",
    End.revoked: "the API key was revoked",
    End.unavailable: "the live feed is unavailable; reconnect with the last event id",
}


def frame(item: Item) -> bytes:
    lines = f"id: {item.id}\n" if item.id is not None else ""
    return f"{lines}event: {item.type}\ndata: {item.json}\n\n".encode()


def end_frame(reason: End) -> bytes:
    body = {"type": "end", "reason": reason.value, "detail": DETAILS.get(reason, "")}
    return f"event: end\ndata: {json.dumps(body, separators=(',', ':'))}\n\n".encode()


def _chunk(body: bytes, more: bool = True) -> Message:
    return {"type": "http.response.body", "body": body, "more_body": more}


class EventStream(Response):
    media_type = MEDIA_TYPE

    def __init__(self, connection: Connection, begin: Start, heartbeat_s: float) -> None:
        # As Starlette's StreamingResponse does: no body, so no Content-Length.
        self.status_code = 200
        self.background = None
        self.init_headers(
            {
                "Cache-Control": "no-store",
                # nginx buffers proxied responses unless told not to.
                "X-Accel-Buffering": "no",
            }
        )
        self.connection = connection
        self.begin = begin
        self.heartbeat_s = heartbeat_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with self.connection as connection:
            connection.open(self.begin)
            backlog = connection.backlog
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            await send(_chunk(OPENING))
            await deliver(backlog, self._write(send, backlog), _listen(receive, backlog))
        reason = backlog.ended or End.client_gone
        if reason is End.client_gone:
            return
        try:
            async with asyncio.timeout(CLOSE_GRACE_S):
                await send(_chunk(end_frame(reason)))
                await send(_chunk(b"", more=False))
        except TimeoutError:
            # The client reads nothing: the server closes the connection instead.
            log.info("live_stream_abandoned", reason=reason.value)

    async def _write(self, send: Send, backlog: Backlog) -> None:
        try:
            while True:
                items = await backlog.take(self.heartbeat_s, BATCH)
                body = b"".join(frame(item) for item in items) if items else PING
                await send(_chunk(body))
        except Ended:
            return
        except OSError:  # the client is gone
            backlog.end(End.client_gone)
        except Exception:
            log.exception("live_write_failed")
            backlog.end(End.client_gone)


async def _listen(receive: Receive, backlog: Backlog) -> None:
    """A client that goes away is only seen by reading (uvicorn's `send` to a closed
    connection returns quietly)."""
    while (await receive())["type"] != "http.disconnect":
        pass
    backlog.end(End.client_gone)
