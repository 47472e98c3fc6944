"""Swagger UI renders the API from assets the service itself serves: in a real
browser that can reach nothing but the service, as on a farm network without internet."""

from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from playwright.async_api import Browser

from tests.support.browser import offline_page
from tests.support.servers import serve

pytestmark = pytest.mark.slow

METHODS = {"get", "put", "post", "patch", "delete", "head", "options"}


def operations(schema: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in schema["paths"].items()
        for method in item
        if method in METHODS
    }


async def test_the_docs_pages_load_no_asset_from_another_host(
    client: httpx.AsyncClient,
) -> None:
    html = (await client.get("/docs")).text
    assert "cdn.jsdelivr.net" not in html
    assert "/docs-assets/swagger-ui-bundle.js" in html
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        response = await client.get(f"/docs-assets/{asset}")
        assert response.status_code == 200, asset
        assert len(response.content) > 10_000, asset


async def test_swagger_ui_renders_every_operation_offline(app: FastAPI, chromium: Browser) -> None:
    expected = operations(app.openapi())
    blocked: list[str] = []
    async with serve(app) as base_url, offline_page(chromium, base_url, blocked) as page:
        await page.goto("/docs")
        await page.wait_for_selector(".opblock", timeout=20_000)
        shown = await page.eval_on_selector_all(
            ".opblock",
            """blocks => blocks.map(b => [
                b.querySelector('.opblock-summary-method').textContent.trim(),
                b.querySelector('.opblock-summary-path').getAttribute('data-path'),
            ])""",
        )
        title = await page.text_content(".information-container .title")
    assert {(method, path) for method, path in shown} == expected
    assert title is not None
    assert "irrigation" in title
    assert blocked == []
