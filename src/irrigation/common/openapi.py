"""OpenAPI documentation of problem responses, so clients see every status we return."""

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field

from irrigation.common.errors import PROBLEM_JSON
from irrigation.common.limiter import rule_of


class FieldError(BaseModel):
    path: str = Field(description="Dotted location of the bad field, e.g. `body.timezone`.")
    message: str
    type: str


class Problem(BaseModel):
    """RFC 9457 problem details, with a stable machine-readable `code`."""

    type: str
    title: str
    status: int
    detail: str
    code: str = Field(description="Stable machine-readable error code.")
    errors: list[FieldError] | None = Field(default=None, description="422 only: the fields.")
    quota: str | None = Field(
        default=None, description="`quota_exceeded` only: the site quota that refused it."
    )
    limit: int | None = Field(
        default=None, description="`quota_exceeded` and `too_many_streams` only: its value."
    )


_DESCRIPTIONS = {
    400: "The body could not be read as JSON text (`bad_request`)",
    401: "Missing, invalid or revoked API key (`unauthorized`)",
    403: "The key lacks the required scope (`insufficient_scope`)",
    404: "Not found in the caller's site (`not_found`)",
    409: "Conflict (`stale_version`, `in_use`, `duplicate`, ...)",
    413: "Request body too large (`payload_too_large`)",
    422: "Invalid request (`validation_error`), with the field paths in `errors`",
    428: "`version` missing from both body and `If-Match` (`version_required`)",
    503: "Try again after `Retry-After` seconds: the database connection was lost "
    "(`database_unavailable`: a restart or failover; a GET was already retried once), or a "
    "dependency is busy or a lock could not be taken in time (`unavailable`)",
}

_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before asking again.",
        "schema": {"type": "integer"},
    }
}

_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}


def problems(
    *codes: int, authenticated: bool = True, described: dict[int, str] | None = None
) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: the given statuses plus 422 (and 401/403 when authenticated),
    each with its usual description unless `described` gives the route's own."""
    wanted = set(codes) | {422}
    if authenticated:
        # Any route that reads the database can find it overloaded or unreachable.
        wanted |= {401, 403, 503}
    descriptions = {**_DESCRIPTIONS, **(described or {})}
    return {
        code: {
            "description": descriptions.get(code, "Error"),
            **({"headers": _RETRY_AFTER} if code == 503 else {}),
            "content": {PROBLEM_JSON: {"schema": _PROBLEM_REF}},
        }
        for code in sorted(wanted)
    }


def quota_409(quota: str, what: str) -> str:
    """The 409 of a route that adds what a site quota counts."""
    return (
        f"`quota_exceeded`: the site already has as many {what} as its quota `{quota}` "
        "allows (`quota` names it, `limit` gives it; see GET /v1/sites/current/quotas)"
    )


# The 409 of an idempotent route, added to what else it may mean there.
IN_FLIGHT = (
    "`idempotency_in_flight`: a request with this `Idempotency-Key` is still in flight; "
    "retry after `Retry-After` seconds to get its answer"
)


# Models of request bodies that routes read themselves (streamed, or parsed from the raw
# bytes), so FastAPI does not see them: added to the components when the document is built.
_BODY_MODELS: dict[str, type[BaseModel]] = {}


def body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """`{"schema": {"$ref": ...}}` for a requestBody content: a named component, which client
    generators turn into a class of that name (an inline schema gets a made-up one)."""
    _BODY_MODELS[model.__name__] = model
    return {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}


def operation_id(route: APIRoute) -> str:
    """`{first tag}_{function name}`, e.g. `zones_create_zone`: generated clients name their
    methods after it, so it must read as one (FastAPI's default appends path and method)."""
    tag = str(route.tags[0]) if route.tags else "default"
    return f"{tag}_{route.name}".replace("-", "_").lower()


def _absent_not_null(schema: dict[str, Any]) -> None:
    """A query or header parameter is absent or has a value; FastAPI documents `str | None`
    as "string or null", which clients then send as the text `null`."""
    branches = [b for b in schema.get("anyOf", ()) if b != {"type": "null"}]
    if len(branches) == 1:
        del schema["anyOf"]
        schema.update({**branches[0], **schema})


_HEADERS: dict[str, dict[str, Any]] = {
    "RateLimit-Policy": {
        "description": "The caller's limit of each class this request was counted in "
        '(draft-ietf-httpapi-ratelimit-headers), e.g. `"read";q=1200;w=60`: a quota of `q` '
        "per `w` seconds. On every answer of a limited route, errors too; absent while the "
        "limiter is unavailable (the request is then not limited).",
        "schema": {"type": "string"},
    },
    "RateLimit": {
        "description": 'What is left of each, e.g. `"read";r=1199;t=60`: `r` more within '
        "`t` seconds.",
        "schema": {"type": "string"},
    },
    "Retry-After": {
        "description": "Seconds to wait before trying again",
        "schema": {"type": "integer"},
    },
}


def _header_refs(*names: str) -> dict[str, Any]:
    # Fresh dicts each time: YAML would otherwise write shared ones as anchors and aliases.
    return {name: {"$ref": f"#/components/headers/{name}"} for name in names}


def _document_rate_limit(operation: dict[str, Any], route: APIRoute, method: str) -> None:
    rule = rule_of(route.endpoint, method)
    operation["x-rate-limit-class"] = rule.rate_class.value
    responses = operation.setdefault("responses", {})
    # Every answer carries them, errors too; documented where a client reads them: on
    # success and on 429 (on every error they would add 4,000 lines of repetition).
    for status, response in responses.items():
        if str(status).startswith("2"):
            response.setdefault("headers", {}).update(_header_refs("RateLimit-Policy", "RateLimit"))
    if not rule.refuses:
        return  # counted, never refused
    counted = f"`{rule.rate_class}`"
    if rule.also is not None:
        operation["x-rate-limit-also"] = rule.also.value
        counted += f" (or `{rule.also}`, for the requests the description names)"
    limited = (
        f"Over the caller's {counted} rate limit (`rate_limited`): retry after `Retry-After` "
        "seconds"
    )
    # A 429 the route describes itself (a cap on open streams) stays documented beside it.
    own = responses.get("429", {}).get("description", "Error")
    responses["429"] = {
        "description": limited
        if own == "Error"
        else f"{own}; or {limited[0].lower()}{limited[1:]}",
        "headers": _header_refs("Retry-After", "RateLimit-Policy", "RateLimit"),
        "content": {PROBLEM_JSON: {"schema": dict(_PROBLEM_REF)}},
    }
    operation["responses"] = dict(sorted(responses.items()))


def install_openapi(app: FastAPI, limited_routes: list[APIRoute] | None = None) -> None:
    """`limited_routes`: the routes that count requests against a rate limit, documented
    with their class, the 429 and the `RateLimit` headers."""

    def build() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
            tags=app.openapi_tags,
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        models: list[type[BaseModel]] = [Problem, *_BODY_MODELS.values()]
        for model in models:
            components[model.__name__] = model.model_json_schema(
                ref_template="#/components/schemas/{model}"
            )
            components.update(components[model.__name__].pop("$defs", {}))
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                if not isinstance(operation, dict):
                    continue
                for parameter in operation.get("parameters", ()):
                    _absent_not_null(parameter["schema"])
                # A body that is not even text (bad UTF-8) is refused before validation.
                if "requestBody" in operation:
                    operation.setdefault("responses", {}).setdefault(
                        "400",
                        {
                            "description": _DESCRIPTIONS[400],
                            "content": {PROBLEM_JSON: {"schema": _PROBLEM_REF}},
                        },
                    )
        paths = schema.get("paths", {})
        if limited_routes:
            schema["components"]["headers"] = {k: dict(v) for k, v in _HEADERS.items()}
        for route in limited_routes or ():
            for method in route.methods or ():
                operation = paths.get(route.path_format, {}).get(method.lower())
                if operation is not None:
                    _document_rate_limit(operation, route, method)
        # FastAPI's default 422 body is not what we send: drop its unused schemas.
        for name in ("HTTPValidationError", "ValidationError"):
            components.pop(name, None)
        app.openapi_schema = schema
        return schema

    app.openapi = build  # type: ignore[method-assign]
