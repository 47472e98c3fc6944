"""What the service shows to anyone who asks: the docs can be turned off, and /metrics (the
API's and the MQTT bridge's) can require a token."""

import httpx
from pydantic import SecretStr

from irrigation.ingest.mqtt_probe import serve_probe
from irrigation.settings import Settings
from tests.support.api import app_client
from tests.support.problems import assert_problem

TOKEN = "s3cret-metrics-token"


async def test_the_docs_are_public_by_default(client: httpx.AsyncClient) -> None:
    assert (await client.get("/docs")).status_code == 200
    document = await client.get("/openapi.json")
    assert document.status_code == 200
    assert document.json()["info"]["title"] == "irrigation"


async def test_the_docs_can_be_turned_off(settings: Settings) -> None:
    async with app_client(settings, docs_enabled=False) as client:
        for path in ("/docs", "/openapi.json", "/docs-assets/swagger-ui.css", "/redoc"):
            assert_problem(await client.get(path), 404, "not_found")
        assert (await client.get("/healthz")).status_code == 200


async def test_metrics_are_public_without_a_token(client: httpx.AsyncClient) -> None:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert "irrigation_http_requests_total" in response.text


async def test_metrics_want_the_token_when_one_is_set(settings: Settings) -> None:
    async with app_client(settings, metrics_token=SecretStr(TOKEN)) as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            response = await client.get("/metrics", headers=headers)
            assert_problem(response, 401, "unauthorized")
            assert response.headers["WWW-Authenticate"] == "Bearer"
        allowed = await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert allowed.status_code == 200
        assert "irrigation_http_requests_total" in allowed.text
        assert (await client.get("/healthz")).status_code == 200  # probes stay open


async def test_the_bridge_metrics_want_the_token_too() -> None:
    async def checks() -> dict[str, str]:
        return {"broker": "ok"}

    server = await serve_probe("127.0.0.1", 0, checks, TOKEN)
    port = server.sockets[0].getsockname()[1]
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            assert (await http.get("/metrics")).status_code == 401
            wrong = await http.get("/metrics", headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
            right = await http.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
            assert right.status_code == 200
            assert (await http.get("/readyz")).status_code == 200
    finally:
        server.close()
        await server.wait_closed()
