"""The bridge's own small HTTP server: `/healthz`, `/readyz` (connected to the broker, and the
database answers) and `/metrics` (Prometheus). Plain asyncio, not an ASGI app: three fixed
answers do not need a framework in a process whose memory is measured."""

import asyncio
import json
from collections.abc import Awaitable, Callable

import httpx
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from irrigation.common.http import bearer_matches

Checks = Callable[[], Awaitable[dict[str, str]]]
"""What readiness depends on, each "ok" or why not."""

_REASONS = {
    200: "OK",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}


async def serve_probe(
    host: str, port: int, checks: Checks, metrics_token: str = ""
) -> asyncio.Server:
    """`metrics_token`: when set, /metrics wants it as `Authorization: Bearer <token>`."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            first, _, rest = request.decode("latin-1").partition("\r\n")
            method, path, *_ = first.split(" ")
            path = path.split("?", 1)[0]
            authorization = _header(rest, "authorization")
            if path == "/metrics" and not bearer_matches(authorization, metrics_token):
                status, body, media_type = 401, b"", "text/plain"
            else:
                status, body, media_type = await _answer(method, path, checks)
            head = (
                f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {media_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        except (OSError, ValueError, TimeoutError, asyncio.IncompleteReadError):
            pass  # a probe that hung up or spoke no HTTP gets nothing
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port)


def _header(head: str, name: str) -> str | None:
    for line in head.split("\r\n"):
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() == name:
            return value.strip()
    return None


async def _answer(method: str, path: str, checks: Checks) -> tuple[int, bytes, str]:
    if method != "GET":
        return 405, b"", "text/plain"
    if path == "/healthz":
        return 200, b'{"status":"ok"}', "application/json"
    if path == "/readyz":
        results = await checks()
        ready = all(v == "ok" for v in results.values())
        body = {"status": "ok" if ready else "unavailable", "checks": results}
        return (200 if ready else 503), json.dumps(body).encode(), "application/json"
    if path == "/metrics":
        return 200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST
    return 404, b"", "text/plain"


def is_ready(port: int, host: str = "127.0.0.1") -> bool:
    """`irrigation mqtt --check`: the running bridge's /readyz."""
    try:
        return httpx.get(f"http://{host}:{port}/readyz", timeout=3).status_code == 200
    except httpx.HTTPError:
        return False
