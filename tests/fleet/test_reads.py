"""A read of one statement (a fleet row, a page of one table) is one round trip to the
database: no `BEGIN` and `ROLLBACK` around it (db.create_read_sessionmaker)."""

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import event
from sqlalchemy.pool import ConnectionPoolEntry

from irrigation.app import create_app
from irrigation.settings import Settings
from tests.fleet.conftest import Fleet
from tests.support.api import Headers

Sent = list[str]


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    """The app with its key cache on (as deployed): the key's lookup, a statement of its
    own, is then made once, before what is counted."""
    application = create_app(settings.model_copy(update={"auth_cache_ttl_s": 60.0}))
    yield application
    await application.state.redis.aclose()
    await application.state.engine.dispose()


@pytest.fixture
async def sent(app: FastAPI) -> AsyncIterator[Sent]:
    """The first word of every statement the API's connections send from now on: the
    statements (SQLAlchemy's cursor events), and the transactions' `BEGIN`, `COMMIT` and
    `ROLLBACK`, which the driver sends itself (asyncpg's query loggers)."""
    queries: Sent = []

    def first_word(query: str) -> str:
        return query.split(maxsplit=1)[0].rstrip(";").upper()

    def log(record: object) -> None:
        queries.append(first_word(str(getattr(record, "query", ""))))

    def statement(_conn: object, _cursor: object, query: str, *_: object) -> None:
        queries.append(first_word(query))

    def checkout(dbapi_connection: object, _record: ConnectionPoolEntry, _proxy: object) -> None:
        # A set of loggers on the connection: adding the same one again is a no-op.
        dbapi_connection.driver_connection.add_query_logger(log)  # type: ignore[attr-defined]

    engine = app.state.engine.sync_engine
    event.listen(engine.pool, "checkout", checkout)
    event.listen(engine, "before_cursor_execute", statement)
    yield queries
    event.remove(engine, "before_cursor_execute", statement)
    event.remove(engine.pool, "checkout", checkout)


@pytest.mark.parametrize("kind", ["zone", "water_source", "pump", "sensor"])
async def test_reading_one_fleet_row_is_one_statement_and_no_transaction(
    client: httpx.AsyncClient, fleet: Fleet, reader: Headers, sent: Sent, kind: str
) -> None:
    await client.get("/v1/zones", headers=reader)  # the key's lookup, cached from here on
    path = f"/v1/{kind.replace('_', '-')}s/{fleet[kind]['id']}"
    sent.clear()
    response = await client.get(path, headers=reader)
    assert response.status_code == 200, response.text
    assert response.json() == fleet[kind]
    assert sent == ["SELECT"]


@pytest.mark.parametrize("path", ["zones", "water-sources", "pumps", "sensors"])
async def test_a_page_of_the_fleet_is_one_statement_and_no_transaction(
    client: httpx.AsyncClient, fleet: Fleet, reader: Headers, sent: Sent, path: str
) -> None:
    await client.get("/v1/zones", headers=reader)
    sent.clear()
    response = await client.get(f"/v1/{path}", headers=reader)
    assert response.status_code == 200, response.text
    assert len(response.json()["items"]) == 1
    assert sent == ["SELECT"]


async def test_a_write_still_runs_in_a_transaction(
    client: httpx.AsyncClient, fleet: Fleet, admin: Headers, sent: Sent
) -> None:
    zone = fleet["zone"]
    sent.clear()
    response = await client.patch(
        f"/v1/zones/{zone['id']}", json={"name": "South", "version": zone["version"]}, headers=admin
    )
    assert response.status_code == 200, response.text
    # (The driver sends `BEGIN` as the first statement goes out, after its cursor event.)
    assert sent.count("BEGIN") == 1, sent
    assert sent[-1] == "COMMIT", sent
