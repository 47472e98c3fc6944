"""Liveness, readiness and Prometheus metrics."""

import asyncio
import os
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from pydantic import BaseModel
from sqlalchemy import text

from irrigation.common.errors import PROBLEM_JSON, problem_response
from irrigation.common.http import bearer_matches
from irrigation.migrate import head_revision
from irrigation.settings import MULTIPROCESS_METRICS, Settings

router = APIRouter(tags=["operations"])


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    checks: dict[str, str]


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    return Health(status="ok")


async def _check_database(request: Request) -> str:
    async with request.app.state.engine.connect() as conn:
        current = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar()
    head = head_revision()
    return "ok" if current == head else f"migrations at {current}, head is {head}"


async def _check_redis(request: Request) -> str:
    await request.app.state.redis.ping()
    return "ok"


async def _run(check: Any, request: Request, limit_s: float) -> str:
    try:
        result: str = await asyncio.wait_for(check(request), limit_s)
        return result
    except TimeoutError:
        return "timeout"
    except Exception as exc:  # any failure of a dependency is a "not ready", never a 500
        return f"error: {type(exc).__name__}"


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "A dependency is not ready"}},
)
async def readyz(request: Request) -> JSONResponse:
    database, redis = await asyncio.gather(
        _run(_check_database, request, 2.0), _run(_check_redis, request, 2.0)
    )
    checks = {"database": database, "redis": redis}
    ready = all(v == "ok" for v in checks.values())
    body = Readiness(status="ok" if ready else "unavailable", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "description": "Prometheus text exposition format",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        },
        401: {
            "description": "`IRRIGATION_METRICS_TOKEN` is set and the request did not carry "
            "it as `Authorization: Bearer <token>` (`unauthorized`)",
            "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        },
    },
    summary="Prometheus metrics of this process (of every worker under `--workers N`)",
)
async def metrics(request: Request) -> Response:
    settings: Settings = request.app.state.settings
    token = settings.metrics_token.get_secret_value()
    if not bearer_matches(request.headers.get("authorization"), token):
        return problem_response(
            401,
            "unauthorized",
            "the metrics need the metrics token as a bearer token",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return Response(generate_latest(_registry()), media_type=CONTENT_TYPE_LATEST)


def _registry() -> CollectorRegistry:
    """Every worker's counts when several share the port (`irrigation serve --workers N`
    sets the directory), else this process's own."""
    if MULTIPROCESS_METRICS not in os.environ:
        return REGISTRY
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry
