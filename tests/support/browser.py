"""Debian's Chromium, driven by Playwright (no browser download): skipped on a machine
without it, except in CI, where a missing browser is a failure."""

import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import pytest
from playwright.async_api import Browser, Page, Route, async_playwright

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
# Without these, Chromium phones home at start (update checks, sync), and on a closed
# network each refused connection slows it down.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str:
    path = os.environ.get("IRRIGATION_TEST_CHROMIUM") or next(
        (found for name in CHROMIUM_NAMES if (found := shutil.which(name))), None
    )
    if path is None:
        message = "no Chromium on this machine (apt install chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@asynccontextmanager
async def browser() -> AsyncIterator[Browser]:
    executable = chromium_path()
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=executable, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            await launched.close()


@asynccontextmanager
async def offline_page(browser: Browser, base_url: str, blocked: list[str]) -> AsyncIterator[Page]:
    """A page in a context of its own (cookies, storage: nothing from another test's) that
    may reach `base_url`'s host and port only: every other request is aborted and its URL
    appended to `blocked`, as on a farm network without internet. The context is closed on
    exit, the browser stays (one browser a session: a launch takes seconds)."""
    allowed = urlsplit(base_url).netloc

    async def only_local(route: Route) -> None:
        url = route.request.url
        if urlsplit(url).netloc == allowed or url.startswith(("data:", "blob:")):
            await route.continue_()
        else:
            blocked.append(url)
            await route.abort("internetdisconnected")

    context = await browser.new_context(base_url=base_url)
    try:
        await context.route("**/*", only_local)
        yield await context.new_page()
    finally:
        await context.close()
