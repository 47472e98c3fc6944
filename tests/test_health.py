import httpx
from fastapi import FastAPI

from irrigation.app import create_app
from irrigation.settings import Settings


async def test_healthz_answers_without_dependencies(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_is_ok_with_database_at_head_and_redis_up(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200, response.text
    assert response.json()["checks"] == {"database": "ok", "redis": "ok"}


async def _readyz(settings: Settings) -> httpx.Response:
    app: FastAPI = create_app(settings)
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return await c.get("/readyz")
    finally:
        await app.state.redis.aclose()
        await app.state.engine.dispose()


async def test_readyz_names_redis_when_it_is_down(settings: Settings) -> None:
    response = await _readyz(settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"}))
    assert response.status_code == 503
    checks = response.json()["checks"]
    assert checks["database"] == "ok"
    assert checks["redis"] != "ok"


async def test_readyz_names_the_database_when_migrations_are_missing(
    settings: Settings, stack_postgres_url: str
) -> None:
    response = await _readyz(settings.model_copy(update={"database_url": stack_postgres_url}))
    assert response.status_code == 503
    checks = response.json()["checks"]
    assert checks["database"] != "ok"
    assert checks["redis"] == "ok"


async def test_metrics_count_requests_by_route_template(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    await client.get("/v1/zones/00000000-0000-0000-0000-000000000000", headers=admin)
    text = (await client.get("/metrics")).text
    assert 'route="/v1/zones/{zone_id}"' in text
    assert "irrigation_http_request_duration_seconds_bucket" in text
