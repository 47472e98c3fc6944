"""Engine, session factory and the request session dependency (the models' base is
`common/orm.py`)."""

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from irrigation.settings import Settings


def create_engine(settings: Settings) -> AsyncEngine:
    return create_async_engine(
        settings.effective_database_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        # No pre-ping: with asyncpg it costs three round trips per checkout, and a dropped
        # connection is detected on use and the pool invalidated anyway.
        pool_pre_ping=False,
        connect_args={
            "server_settings": {
                # A cancelled request must never leave a lock held by an idle transaction.
                "idle_in_transaction_session_timeout": str(settings.idle_in_transaction_timeout_ms),
                "statement_timeout": str(settings.statement_timeout_ms),
                # Every transaction, the activation path included, gives up on a stuck row
                # lock (answered 503) instead of hanging; set per connection, so it costs no
                # extra round trip per request.
                "lock_timeout": str(settings.lock_timeout_ms),
                "application_name": "irrigation",
                # JIT compiled long aggregate ranges for 0.24-0.72 s to run them in 2-90 ms;
                # no query here is long enough to win it back.
                "jit": "off",
            },
        },
    )


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """One session per request; the service commits in one visible place."""
    maker: async_sessionmaker[AsyncSession] = request.app.state.sessionmaker
    async with maker() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]
