"""Domain errors and their one mapping to RFC 9457 problem responses."""

from http import HTTPStatus
from typing import Any

import asyncpg
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from irrigation.common.dberrors import (
    LOCK_NOT_AVAILABLE,
    QUERY_CANCELED,
    connection_lost,
    pg_error,
)

PROBLEM_JSON = "application/problem+json"
log = structlog.get_logger(__name__)

# Set in the request's scope when it was answered 503 `database_unavailable`: the read
# retry (common/middleware.py) then runs a GET once more instead of sending that answer.
DATABASE_UNAVAILABLE_SCOPE_KEY = "irrigation.database_unavailable"
DATABASE_RETRY_AFTER_S = 1


class DomainError(Exception):
    """Raised by services; `install_error_handlers` turns it into a problem response."""

    status: int = 400
    code: str = "bad_request"
    title: str = "Bad request"

    def __init__(
        self,
        detail: str | None = None,
        *,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        if code:
            self.code = code
        self.detail = detail or self.title
        self.headers = headers or {}
        self.extra = extra
        super().__init__(self.detail)


class NotFound(DomainError):
    status, code, title = 404, "not_found", "Not found"


class StaleVersion(DomainError):
    status, code, title = 409, "stale_version", "Stale version"


class VersionRequired(DomainError):
    status, code, title = 428, "version_required", "Version required"


class InUse(DomainError):
    status, code, title = 409, "in_use", "Still referenced"


class Duplicate(DomainError):
    status, code, title = 409, "duplicate", "Already exists"


class Invalid(DomainError):
    """A semantic validation failure that Pydantic cannot see (needs settings or the DB)."""

    status, code, title = 422, "validation_error", "Invalid request"

    def __init__(
        self, detail: str, *, field: str | None = None, code: str | None = None, **extra: Any
    ) -> None:
        errors = [{"path": field, "message": detail, "type": "value_error"}] if field else []
        super().__init__(detail, code=code, errors=errors, **extra)


class Unauthorized(DomainError):
    status, code, title = 401, "unauthorized", "Unauthorized"


class Forbidden(DomainError):
    status, code, title = 403, "insufficient_scope", "Forbidden"


class PayloadTooLarge(DomainError):
    status, code, title = 413, "payload_too_large", "Payload too large"


class RateLimited(DomainError):
    status, code, title = 429, "rate_limited", "Too many requests"


class Unavailable(DomainError):
    status, code, title = 503, "unavailable", "Service unavailable"


def database_unavailable(request: Request, exc: BaseException) -> JSONResponse:
    """503 `database_unavailable`: the connection was lost (restart, failover, terminated
    backend) or none could be made. Never a 500: the client only has to ask again."""
    request.scope[DATABASE_UNAVAILABLE_SCOPE_KEY] = True
    # The class only: the driver's text can carry the server's address.
    log.warning("database_unavailable", error=type(exc).__name__, path=request.url.path)
    return problem_response(
        503,
        "database_unavailable",
        "the database connection was lost; try again",
        title="Database unavailable",
        headers={"Retry-After": str(DATABASE_RETRY_AFTER_S)},
    )


def problem_body(status: int, code: str, title: str, detail: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": f"https://irrigation.dev/problems/{code.replace('_', '-')}",
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        **extra,
    }


def problem_response(
    status: int,
    code: str,
    detail: str,
    *,
    title: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    title = title or HTTPStatus(status).phrase
    return JSONResponse(
        problem_body(status, code, title, detail, **extra),
        status_code=status,
        media_type=PROBLEM_JSON,
        headers=headers,
    )


def _path(loc: tuple[Any, ...] | list[Any]) -> str:
    return ".".join(str(part) for part in loc)


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
    503: "unavailable",
}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(DomainError)
    async def _domain(_: Request, exc: DomainError) -> JSONResponse:
        return problem_response(
            exc.status, exc.code, exc.detail, title=exc.title, headers=exc.headers, **exc.extra
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {
                "path": _path(err.get("loc", ())),
                "message": str(err.get("msg", "")),
                "type": str(err.get("type", "")),
            }
            for err in exc.errors()
        ]
        first = errors[0] if errors else {"path": "", "message": "invalid request"}
        return problem_response(
            422,
            "validation_error",
            f"{first['path']}: {first['message']}" if first["path"] else first["message"],
            title="Invalid request",
            errors=errors,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return problem_response(
            exc.status_code, code, str(exc.detail), headers=dict(exc.headers or {})
        )

    @app.exception_handler(DBAPIError)
    async def _database(request: Request, exc: DBAPIError) -> JSONResponse:
        # The safety net behind validation: a value the database refuses is the client's
        # error (22xxx, 23xxx), a lock or statement timeout is ours to retry (503).
        if connection_lost(exc):
            return database_unavailable(request, exc)
        state = pg_error(exc).sqlstate or ""
        if state.startswith("22"):
            return problem_response(422, "invalid_value", "a value is out of range or malformed")
        if state.startswith("23"):
            return problem_response(409, "conflict", "the change conflicts with existing data")
        # Busy or unreachable (lock/statement timeout, too many clients, connection lost).
        if state in (LOCK_NOT_AVAILABLE, QUERY_CANCELED) or state[:2] in ("53", "08", "57"):
            return problem_response(
                503, "unavailable", "the database is busy; try again", headers={"Retry-After": "1"}
            )
        log.exception("database_error", sqlstate=state)
        return problem_response(500, "internal_error", "An unexpected error occurred.")

    @app.exception_handler(SQLAlchemyTimeout)
    async def _overloaded(_: Request, exc: Exception) -> JSONResponse:
        # The connection pool stayed empty: every connection busy for the pool timeout.
        log.warning("database_pool_exhausted", error=repr(exc))
        return problem_response(
            503, "unavailable", "the service is busy; try again", headers={"Retry-After": "1"}
        )

    # The driver's own errors, where code talks to asyncpg directly (the readings store):
    # a closed or broken connection, a server shutting down.
    @app.exception_handler(ConnectionError)
    @app.exception_handler(asyncpg.InterfaceError)
    @app.exception_handler(asyncpg.PostgresConnectionError)
    @app.exception_handler(asyncpg.AdminShutdownError)
    @app.exception_handler(asyncpg.CrashShutdownError)
    @app.exception_handler(asyncpg.CannotConnectNowError)
    async def _driver(request: Request, exc: Exception) -> JSONResponse:
        if connection_lost(exc):
            return database_unavailable(request, exc)
        log.exception("database_driver_error", error=repr(exc))
        return problem_response(500, "internal_error", "An unexpected error occurred.")

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        # A bug, never bad input: log it whole, tell the client nothing internal.
        log.exception("unhandled_error", error=repr(exc))
        return problem_response(500, "internal_error", "An unexpected error occurred.")
