"""A flood of junk bearer tokens costs the database nothing: a token that does not have
the key format is refused before any query, and a well-formed unknown key is looked up
once and then remembered for a while."""

import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import event

from irrigation.auth import service as auth_service
from tests.support.api import Headers, bearer
from tests.support.factories import MakeKey
from tests.support.problems import assert_problem

MALFORMED = [
    "not-a-key",
    "irr_",
    "irr_short",
    "irr_" + "x" * 42,
    "irr_" + "x" * 44,
    "irr_" + "x" * 42 + "!",
    "IRR_" + "x" * 43,
    "key_" + "x" * 43,
    "irr_" + "\xe9" * 43,  # sent as Latin-1 bytes, as a client may
    "x" * 5000,
]


@pytest.fixture
def queries(app: FastAPI) -> Iterator[list[str]]:
    """Every statement the app's engine sends, as it sends it."""
    sent: list[str] = []

    def record(*args: Any) -> None:
        sent.append(args[2])  # (conn, cursor, statement, ...)

    engine = app.state.engine.sync_engine
    event.listen(engine, "before_cursor_execute", record)
    yield sent
    event.remove(engine, "before_cursor_execute", record)


async def test_a_flood_of_malformed_tokens_costs_no_query(
    client: httpx.AsyncClient, queries: list[str]
) -> None:
    for i in range(100):
        token = MALFORMED[i % len(MALFORMED)]
        header = {"Authorization": f"Bearer {token}".encode("latin-1")}
        refused = await client.get("/v1/zones", headers=header)
        assert_problem(refused, 401, "unauthorized")
    assert queries == []


async def test_a_flood_of_one_unknown_key_costs_one_query(
    client: httpx.AsyncClient, queries: list[str]
) -> None:
    unknown = bearer("irr_" + secrets.token_urlsafe(32))
    for _ in range(100):
        assert_problem(await client.get("/v1/zones", headers=unknown), 401, "unauthorized")
    assert len(queries) == 1, queries


async def test_a_real_key_is_still_looked_up_and_let_in(
    client: httpx.AsyncClient, queries: list[str], admin: Headers
) -> None:
    answer = await client.get("/v1/zones", headers=admin)
    assert answer.status_code == 200, answer.text
    # Looked up once, though the rate limiter and the route's scope check both ask (the
    # suite's settings turn the cache of known keys off).
    assert sum("FROM api_keys" in q for q in queries) == 1, queries


async def test_every_key_the_service_makes_has_the_key_format(make_key: MakeKey) -> None:
    # The format check must never refuse a real key.
    made = [await make_key("read") for _ in range(50)]
    assert all(auth_service.KEY_FORMAT.fullmatch(secret) for secret in made)
