"""The operator's dashboard: static files inside the package, served by the API as they are
(no build step, no CDN). `GET /` is its page; its modules, styles and the vendored chart
library are under `/dashboard/`. Everything it shows and does goes through the public API
with the key the operator signed in with; the key never leaves the browser but in the
`Authorization` header (a `#key=` sign-in link is a fragment, which no browser sends)."""

import os
from pathlib import Path

from fastapi import FastAPI
from starlette.responses import FileResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

STATIC_DIR = Path(__file__).parent / "static"
ASSETS_PATH = "/dashboard"

# Only our own origin: no inline script, nothing from another host. Styles may be set from
# script (the chart library sizes its canvas that way), which `style-src 'self'` allows.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    # The address bar may hold a sign-in link's key for a moment: never hand it on.
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    # Always asked again (an ETag makes that a 304): an upgraded service serves its new
    # modules at once, never a mix of old and new ones from the browser's cache.
    "Cache-Control": "no-cache",
}


class _Assets(StaticFiles):
    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response


def install_dashboard(app: FastAPI) -> None:
    """`GET /` and `/dashboard/...`; nothing else, so `/v1`, `/docs`, `/healthz` and an
    unknown path answer as they did (a catch-all mount at `/` would turn an unknown API path
    into the static files' 404 or 405)."""

    async def dashboard() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers=PAGE_HEADERS)

    app.add_api_route(
        "/", dashboard, methods=["GET", "HEAD"], include_in_schema=False, name="dashboard"
    )
    app.mount(ASSETS_PATH, _Assets(directory=STATIC_DIR), name="dashboard-assets")
