"""Plain ASGI middleware (not BaseHTTPMiddleware: it can leak a cancelled request's
connection, and with it a row lock): body size limit, late headers, metrics and access log,
and the retry of reads that met a lost database connection."""

import json
import time
from collections.abc import Mapping
from typing import Any

import structlog
from prometheus_client import Counter, Histogram
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from irrigation.common.errors import (
    DATABASE_UNAVAILABLE_SCOPE_KEY,
    PROBLEM_JSON,
    problem_body,
)

log = structlog.get_logger("irrigation.access")

REQUESTS = Counter("irrigation_http_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram(
    "irrigation_http_request_duration_seconds",
    "HTTP request latency",
    ["method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
READ_RETRIES = Counter(
    "irrigation_database_read_retries_total",
    "GET/HEAD requests run again after meeting a lost database connection",
)
READ_METHODS = frozenset({"GET", "HEAD"})


# The `ASGI scope` entry where `LateHeadersMiddleware` keeps the headers to add.
LATE_HEADERS = "irrigation.late_headers"


class _TooLarge(HTTPException):
    """An HTTPException because FastAPI re-raises those met while reading a body (anything
    else becomes a 400) and the app's handler then answers a problem+json 413."""

    def __init__(self, detail: str) -> None:
        super().__init__(status_code=413, detail=detail)


async def _send_problem(send: Send, status: int, code: str, detail: str) -> None:
    body = json.dumps(problem_body(status, code, "Payload too large", detail)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", PROBLEM_JSON.encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    """413 for bodies above the limit, judged by Content-Length and by the bytes that arrive.

    `path_limits` gives exact paths their own limit: file uploads (streamed to disk, never
    held in memory) need far more than the JSON endpoints, whose bodies are parsed whole."""

    def __init__(
        self, app: ASGIApp, max_bytes: int, path_limits: Mapping[str, int] | None = None
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.path_limits = dict(path_limits or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self.path_limits.get(scope["path"], self.max_bytes)
        detail = f"request body is limited to {max_bytes} bytes"
        for name, value in scope["headers"]:
            if name == b"content-length" and (not value.isdigit() or int(value) > max_bytes):
                await _send_problem(send, 413, "payload_too_large", detail)
                return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    raise _TooLarge(detail)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await _send_problem(send, 413, "payload_too_large", detail)


class LateHeadersMiddleware:
    """Adds the headers that a dependency decided (the rate limits) to whatever response
    the request gets: a model, a streamed file, or a problem from an error handler, none of
    which FastAPI would give a dependency's `Response` headers. A header the response sets
    itself is kept."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        late: dict[str, str] = {}
        scope[LATE_HEADERS] = late

        async def adding_send(message: Message) -> None:
            if message["type"] == "http.response.start" and late:
                headers = list(message.get("headers", ()))
                present = {name.lower() for name, _ in headers}
                for name, value in late.items():
                    if name.lower().encode() not in present:
                        headers.append((name.lower().encode(), value.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, adding_send)


class MetricsMiddleware:
    """Counts and times every request by route template (not raw path: bounded labels)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def tracking_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        finally:
            elapsed = time.perf_counter() - start
            route: Any = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            labels = (scope["method"], template, str(status))
            REQUESTS.labels(*labels).inc()
            LATENCY.labels(*labels).observe(elapsed)
            log.info(
                "request",
                method=scope["method"],
                path=scope["path"],
                route=template,
                status=status,
                duration_ms=round(elapsed * 1000, 2),
            )


class ReadRetryMiddleware:
    """A GET or HEAD answered 503 `database_unavailable` is run once more, whole.

    Whole, and so here rather than around the session: the lost connection is often met
    by the API-key lookup, a dependency the handler never sees, and a second run needs
    fresh dependencies, a fresh session and a fresh connection (SQLAlchemy recycled the
    pool's connections when it met the dead one). Only reads: a write that lost its
    connection may or may not have committed, so it is answered 503 and its client
    decides (an `Idempotency-Key` makes asking again safe). The first answer is held
    back, never half sent: the error handler marks the request before answering."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in READ_METHODS:
            await self.app(scope, receive, send)
            return
        received: list[Message] = []
        held: list[Message] = []

        async def recording_receive() -> Message:
            message = await receive()
            received.append(message)
            return message

        async def holding_send(message: Message) -> None:
            if held or (
                message["type"] == "http.response.start"
                and scope.get(DATABASE_UNAVAILABLE_SCOPE_KEY)
            ):
                held.append(message)
                return
            await send(message)

        await self.app(scope, recording_receive, holding_send)
        if not held:
            return
        scope.pop(DATABASE_UNAVAILABLE_SCOPE_KEY, None)
        READ_RETRIES.inc()
        log.info("database_read_retry", method=scope["method"], path=scope["path"])
        replay = list(received)

        async def replaying_receive() -> Message:
            return replay.pop(0) if replay else await receive()

        await self.app(scope, replaying_receive, send)
