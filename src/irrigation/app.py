"""create_app(): routers, error handlers, middleware and the lifespan of shared clients."""

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI
from fastapi.routing import APIRoute
from fastapi_offline import FastAPIOffline
from starlette.middleware.cors import CORSMiddleware

from irrigation import __version__
from irrigation.alerts.router import routers as alert_routers
from irrigation.auth.deps import PrincipalCache
from irrigation.auth.router import router as auth_router
from irrigation.automation.activation_router import router as activation_router
from irrigation.automation.router import router as automation_router
from irrigation.common.balance import WorkerLoad
from irrigation.common.errors import install_error_handlers
from irrigation.common.limiter import RateLimiter, default_limit_texts, deployment_limits
from irrigation.common.middleware import (
    BodyLimitMiddleware,
    LateHeadersMiddleware,
    MetricsMiddleware,
    ReadRetryMiddleware,
)
from irrigation.common.openapi import install_openapi, operation_id
from irrigation.dashboard import install_dashboard
from irrigation.db import create_engine, create_read_sessionmaker, create_sessionmaker
from irrigation.feed import create_publisher
from irrigation.fleet.router import routers as fleet_routers
from irrigation.health import router as health_router
from irrigation.ingest.cache import HotCache
from irrigation.ingest.import_router import UPLOAD_PATH
from irrigation.ingest.import_router import router as import_router
from irrigation.ingest.review_router import router as review_router
from irrigation.ingest.router import router as ingest_router
from irrigation.live.hub import LiveHub
from irrigation.live.router import router as live_router
from irrigation.live.router import socket_router as live_socket_router
from irrigation.live.router import stream_router as live_stream_router
from irrigation.logging import configure_logging
from irrigation.pumps.router import router as pumps_router
from irrigation.queue import create_redis
from irrigation.quotas.router import router as quotas_router
from irrigation.ratelimits.deps import SiteLimitsCache, enforce_rate_limit
from irrigation.ratelimits.router import router as rate_limits_router
from irrigation.readings.calibration_router import router as calibration_router
from irrigation.readings.router import router as readings_router
from irrigation.settings import Settings, get_settings
from irrigation.wateruse.router import router as water_use_router

DESCRIPTION = """
Irrigation control: fleet configuration, sensor readings and safe pump activation.

Authenticate with an API key (`Authorization: Bearer irr_...`; *Authorize* above).
Every error is an RFC 9457 `application/problem+json` body with a stable `code`.

Every `/v1` route counts requests in one rate-limit class (`x-rate-limit-class`), per API
key, or per client address for requests without a valid key. Over the limit: 429
`rate_limited` with `Retry-After`; every answer of such a route carries the IETF
`RateLimit-Policy` and `RateLimit` headers. Default limits (a deployment sets its own with
`IRRIGATION_RATE_LIMIT_<CLASS>`, a site's admin lower ones with
`PUT /v1/sites/current/rate-limits`): {defaults}. `ingest` counts one per request plus one
per reading.
"""

DOCS_ASSETS = "/docs-assets"
# What a frontend on another origin may send and read (IRRIGATION_CORS_ORIGINS); a browser
# hides every other response header from it.
CORS_REQUEST_HEADERS = [
    "Authorization",
    "Content-Type",
    "Idempotency-Key",
    "If-Match",
    "Last-Event-ID",
]
CORS_RESPONSE_HEADERS = ["Location", "Retry-After", "RateLimit", "RateLimit-Policy"]


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings.log_level, settings.log_format)
    # Clients are made here, not in the lifespan: neither connects until first used, and
    # tests can then drive the app through ASGI without running the lifespan.
    engine = create_engine(settings)
    redis = create_redis(
        settings.effective_redis_url, settings.redis_timeout_s, settings.queue_name
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        live: LiveHub = app.state.live
        live.watch_signals()
        yield
        live.stop()
        await redis.aclose()
        await engine.dispose()

    tags = [
        {"name": "zones"},
        {"name": "water-sources"},
        {"name": "pumps"},
        {"name": "activations", "description": "Pump runs: the safety core"},
        {"name": "readings", "description": "Sensor readings in, latest values out"},
        {"name": "sensors"},
        {"name": "keys", "description": "The caller's site and its API keys"},
        {"name": "quotas", "description": "What the caller's site may hold or run at once"},
        {"name": "alerts", "description": "Raised, acknowledged, cleared"},
        {"name": "webhooks", "description": "Alert events POSTed to your URL, signed"},
        {"name": "live", "description": "The site's events as they happen (SSE, WebSocket)"},
        {"name": "operations"},
    ]
    common: dict[str, Any] = {
        "title": "irrigation",
        "version": __version__,
        "description": DESCRIPTION.format(
            defaults=", ".join(f"`{c}` {text}" for c, text in default_limit_texts().items())
        ),
        "lifespan": lifespan,
        "generate_unique_id_function": operation_id,
        "openapi_tags": tags,
        # FastAPI's native OpenTelemetry off: the service configures no OTel provider (its
        # metrics are Prometheus', its access log its own), and asking on every request
        # whether one was configured since cost 4 - 5 % of a refused activation's CPU
        # (three global lookups reading os.environ; issue 20, docs/benchmarks.md).
        "telemetry": {"tracing": False, "metrics": False, "logs": False},
    }
    app: FastAPI
    if settings.docs_enabled:
        # Swagger UI from assets inside the installed package (fastapi-offline ships them),
        # not a CDN: a farm network without internet still gets its docs. No ReDoc: its
        # bundle fetches its own logo from cdn.redoc.ly.
        app = FastAPIOffline(
            static_url=DOCS_ASSETS,
            redoc_url=None,
            # Swagger UI would otherwise ask validator.swagger.io about our document.
            swagger_ui_parameters={"validatorUrl": None},
            **common,
        )
    else:
        # Neither the pages nor the document: `irrigation openapi` still writes it.
        app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None, **common)
    app.state.settings = settings
    app.state.engine = engine
    app.state.feed = create_publisher(settings, redis)
    app.state.sessionmaker = create_sessionmaker(engine, app.state.feed)
    app.state.read_sessionmaker = create_read_sessionmaker(engine)
    app.state.redis = redis
    app.state.principals = PrincipalCache(settings.auth_cache_ttl_s, settings.auth_unknown_ttl_s)
    app.state.hot_cache = HotCache.of(settings, redis)
    app.state.worker_load = WorkerLoad(settings.web_concurrency)
    app.state.rate_limits = deployment_limits(settings)
    app.state.rate_limiter = (
        RateLimiter(redis.connection_pool, settings.redis_namespace)
        if settings.rate_limits_enabled
        else None
    )
    app.state.site_rate_limits = SiteLimitsCache(settings.rate_limit_site_cache_ttl_s)
    app.state.live = LiveHub(settings, redis, app.state.sessionmaker)

    api_routers: list[APIRouter] = [
        auth_router,
        rate_limits_router,
        quotas_router,
        *fleet_routers,
        # Before the pumps' router, so the OpenAPI document lists POST before GET as it did.
        activation_router,
        pumps_router,
        ingest_router,
        import_router,
        review_router,
        readings_router,
        calibration_router,
        water_use_router,
        *alert_routers,
        automation_router,
        live_router,
    ]
    # Counted by the routes themselves, once they know the key (a ticket names it).
    self_counted: list[APIRouter] = [live_stream_router]
    install_error_handlers(app)
    install_openapi(
        app,
        limited_routes=[
            r for x in [*api_routers, *self_counted] for r in x.routes if isinstance(r, APIRoute)
        ],
    )
    app.include_router(health_router)
    if settings.dashboard_enabled:
        install_dashboard(app)
    for router in api_routers:
        # First of every route's dependencies: a request over its limit costs nothing more.
        app.include_router(router, dependencies=[Depends(enforce_rate_limit)])
    for router in self_counted:
        app.include_router(router)
    app.include_router(live_socket_router)
    # Starlette wraps each added middleware around the ones added before it, so the last
    # added is outermost: metrics, added last, see the 413s that the body limit answers,
    # and only the final answer of a read that was run twice.
    app.add_middleware(ReadRetryMiddleware)
    app.add_middleware(LateHeadersMiddleware)
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        path_limits={UPLOAD_PATH: settings.max_upload_bytes},
    )
    app.add_middleware(MetricsMiddleware)
    if settings.cors_origins:
        # Outermost: a refusal (401, 413, 429) must carry the CORS headers too, or the
        # other origin's page sees a network error instead of the problem document.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=CORS_REQUEST_HEADERS,
            expose_headers=CORS_RESPONSE_HEADERS,
            # Keys travel in the Authorization header, never in cookies.
            allow_credentials=False,
            max_age=600,
        )
    return app


def create_served_app() -> FastAPI:
    """The app as `irrigation serve` runs it: with the garbage collector tuned for batches.

    A 10,000-reading batch leaves tens of thousands of tracked objects and triggered full
    collections over the whole app; freezing what start-up made and raising the first
    threshold cut the API's CPU per batch by a quarter (docs/benchmarks.md, Ingestion)."""
    app = create_app()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    return app
