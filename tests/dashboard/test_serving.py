"""The dashboard is served by the app itself: `/` is its page, `/dashboard/...` its files,
with nothing from another host; the API's own paths answer as before; CORS headers only for
the origins a deployment names."""

import re
from pathlib import Path

import httpx
import pytest

from irrigation.dashboard import STATIC_DIR
from irrigation.settings import Settings
from tests.support.api import app_client
from tests.support.problems import assert_problem

IMPORT = re.compile(r"""^\s*import\s[^"']*["']([^"']+)["'];?""", re.MULTILINE)
ASSET = re.compile(r"""(?:src|href)="(/dashboard/[^"]+)\"""")


async def test_the_root_is_the_dashboard_page(client: httpx.AsyncClient) -> None:
    response = await client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="/dashboard/js/main.js">' in response.text
    policy = response.headers["content-security-policy"]
    assert "default-src 'self'" in policy
    assert "script-src 'self'" in policy
    assert response.headers["referrer-policy"] == "no-referrer"
    assert (await client.head("/")).status_code == 200


async def test_every_file_the_page_loads_is_served_from_here(client: httpx.AsyncClient) -> None:
    """The page's assets and, module by module, every import: all on this host (no CDN),
    all present, each with a type the browser accepts for it."""
    page = (await client.get("/")).text
    pending = ASSET.findall(page)
    assert "/dashboard/js/main.js" in pending
    seen: set[str] = set()
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        response = await client.get(path)
        assert response.status_code == 200, path
        assert response.headers["cache-control"] == "no-cache", path
        kind = response.headers["content-type"]
        if path.endswith(".js"):
            assert "javascript" in kind, (path, kind)
            for target in IMPORT.findall(response.text):
                assert target.startswith("."), f"{path} imports {target} from elsewhere"
                base = path.rsplit("/", 1)[0]
                pending.append(str(Path(base, target)).replace("\\", "/"))
                # Normalise "a/b/../c".
                pending[-1] = re.sub(r"[^/]+/\.\./", "", pending[-1])
        elif path.endswith(".css"):
            assert kind.startswith("text/css"), path
    assert len(seen) >= 10, seen  # shell, styles, chart library, every page module
    assert "/dashboard/vendor/uplot/uPlot.esm.js" in seen
    # Our own files name no other host at all (the vendored library's comments may).
    own = [p for p in seen if "/vendor/" not in p]
    for text in [page, *[(STATIC_DIR / p.removeprefix("/dashboard/")).read_text() for p in own]]:
        assert "http://" not in text
        assert "https://" not in text


def test_the_chart_library_is_vendored_with_its_licence() -> None:
    vendored = STATIC_DIR / "vendor" / "uplot"
    assert "MIT License" in (vendored / "LICENSE").read_text()
    assert "uPlot.js (μPlot)" in (vendored / "uPlot.esm.js").read_text()[:400]


async def test_the_api_paths_are_not_shadowed(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).status_code == 200
    assert (await client.get("/docs")).status_code == 200
    assert_problem(await client.get("/v1/zones"), 401, "unauthorized")
    # An unknown path is the API's 404 problem, whatever the method: no catch-all mount.
    for method in ("GET", "POST", "DELETE"):
        assert_problem(await client.request(method, "/v1/no-such-thing"), 404, "not_found")
        assert_problem(await client.request(method, "/no-such-page"), 404, "not_found")
    assert_problem(await client.get("/dashboard/no-such-file.js"), 404, "not_found")
    assert_problem(await client.get("/dashboard/../settings.py"), 404, "not_found")
    assert (await client.post("/")).status_code == 405


async def test_the_dashboard_can_be_turned_off(settings: Settings) -> None:
    async with app_client(settings, dashboard_enabled=False) as client:
        assert_problem(await client.get("/"), 404, "not_found")
        assert_problem(await client.get("/dashboard/js/main.js"), 404, "not_found")
        assert (await client.get("/healthz")).status_code == 200


# CORS -------------------------------------------------------------------------------------

ORIGIN = "https://farm-frontend.example"


async def test_no_cors_headers_by_default(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    preflight = await client.options(
        "/v1/zones",
        headers={"Origin": ORIGIN, "Access-Control-Request-Method": "GET"},
    )
    assert not any(h.lower().startswith("access-control-") for h in preflight.headers)
    answer = await client.get("/v1/zones", headers={**admin, "Origin": ORIGIN})
    assert answer.status_code == 200
    assert not any(h.lower().startswith("access-control-") for h in answer.headers)


async def test_cors_for_the_configured_origins(settings: Settings, admin: dict[str, str]) -> None:
    async with app_client(settings, cors_origins=[ORIGIN]) as client:
        preflight = await client.options(
            "/v1/pumps/00000000-0000-0000-0000-000000000000/activations",
            headers={
                "Origin": ORIGIN,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type, idempotency-key",
            },
        )
        assert preflight.status_code == 200, preflight.text
        assert preflight.headers["access-control-allow-origin"] == ORIGIN
        allowed = preflight.headers["access-control-allow-methods"]
        assert "POST" in allowed
        assert "DELETE" in allowed
        headers = preflight.headers["access-control-allow-headers"].lower()
        assert "authorization" in headers
        assert "idempotency-key" in headers
        assert "access-control-allow-credentials" not in preflight.headers

        answer = await client.get("/v1/zones", headers={**admin, "Origin": ORIGIN})
        assert answer.status_code == 200
        assert answer.headers["access-control-allow-origin"] == ORIGIN
        exposed = answer.headers["access-control-expose-headers"].lower()
        assert "ratelimit" in exposed
        assert "retry-after" in exposed
        # A refusal carries the headers too, or the page could not read the problem.
        refused = await client.get("/v1/zones", headers={"Origin": ORIGIN})
        assert_problem(refused, 401, "unauthorized")
        assert refused.headers["access-control-allow-origin"] == ORIGIN

        other = await client.options(
            "/v1/zones",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
        )
        assert other.status_code == 400
        assert "access-control-allow-origin" not in other.headers


@pytest.mark.parametrize(
    ("raw", "parsed"),
    [
        ("", []),
        ("https://a.example", ["https://a.example"]),
        (
            " https://a.example/ , http://10.0.0.5:8080",
            ["https://a.example", "http://10.0.0.5:8080"],
        ),
        ("*", ["*"]),
        ("http://[::1]:3000", ["http://[::1]:3000"]),
    ],
)
def test_cors_origins_setting(raw: str, parsed: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IRRIGATION_CORS_ORIGINS", raw)
    assert Settings().cors_origins == parsed


@pytest.mark.parametrize("raw", ["a.example", "https://a.example/path", "ftp://a.example"])
def test_a_cors_origin_must_be_an_origin(raw: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IRRIGATION_CORS_ORIGINS", raw)
    with pytest.raises(ValueError, match="not an origin"):
        Settings()
