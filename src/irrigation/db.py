"""Engine, session factory and the request session dependency (the models' base is
`common/orm.py`)."""

import weakref
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy import event
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from irrigation import feed
from irrigation.settings import Settings


def create_engine(settings: Settings) -> AsyncEngine:
    engine = create_async_engine(
        settings.effective_database_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        # No pre-ping: with asyncpg it costs three round trips per checkout, and it would
        # only narrow the window (a connection can die between the ping and its use). A
        # dropped connection is detected on use instead: SQLAlchemy then recycles every
        # connection the pool had, that request is answered 503 `database_unavailable`
        # and a GET is run once more on a fresh connection (ReadRetryMiddleware).
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
    event.listen(engine.sync_engine, "do_connect", _connect_errors_as_dbapi_errors)
    return engine


def _connect_errors_as_dbapi_errors(
    dialect: Dialect, _record: Any, cargs: Any, cparams: Any
) -> Any:
    """asyncpg raises a refused or timed-out connect as a plain OSError, which SQLAlchemy
    passes on unwrapped; as the driver's OperationalError it becomes a DBAPIError like any
    other lost connection, so an unreachable database is told apart from our own I/O."""
    try:
        return dialect.connect(*cargs, **cparams)
    except OSError as exc:
        dbapi: Any = dialect.loaded_dbapi
        raise dbapi.OperationalError(f"cannot connect: {type(exc).__name__}") from exc


class Session(AsyncSession):
    async def close(self) -> None:
        """Closing rolls back what is open; on a connection the server dropped there is
        nothing left to roll back (the server did), and SQLAlchemy has already thrown the
        connection away. Raised, it would turn an answer already sent into a 500."""
        try:
            await super().close()
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                raise


def create_sessionmaker(
    engine: AsyncEngine, publisher: feed.Publisher | None = None
) -> async_sessionmaker[AsyncSession]:
    """With a `publisher`, what a transaction emits (`feed.emit`) is published on commit."""
    if publisher is not None:
        feed.install()
    return async_sessionmaker(
        engine,
        class_=Session,
        expire_on_commit=False,
        autoflush=False,
        info=feed.session_info(publisher),
    )


# One autocommit view of each engine (the same pool), made once: `execution_options` builds
# a new engine object each call.
_AUTOCOMMIT: "weakref.WeakKeyDictionary[AsyncEngine, AsyncEngine]" = weakref.WeakKeyDictionary()


def autocommit(engine: AsyncEngine) -> AsyncEngine:
    """`engine` in autocommit, on its own pool: for reads of one statement."""
    view = _AUTOCOMMIT.get(engine)
    if view is None:
        view = _AUTOCOMMIT[engine] = engine.execution_options(isolation_level="AUTOCOMMIT")
    return view


def create_read_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions for reads of one statement: on the same pool, in autocommit, so the read is
    one round trip instead of three (`BEGIN`, the `SELECT`, `ROLLBACK`). At PostgreSQL's
    read committed, one statement sees the same snapshot with or without a transaction
    around it. Never for writes, nor for reads of several statements that must agree:
    `session.begin()` there opens no transaction in the database."""
    return async_sessionmaker(
        autocommit(engine),
        class_=Session,
        expire_on_commit=False,
        autoflush=False,
    )


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """One session per request; the service commits in one visible place."""
    maker: async_sessionmaker[AsyncSession] = request.app.state.sessionmaker
    async with maker() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]


async def get_read_session(request: Request) -> AsyncIterator[AsyncSession]:
    """A request's session for a read of one statement (`create_read_sessionmaker`)."""
    maker: async_sessionmaker[AsyncSession] = request.app.state.read_sessionmaker
    async with maker() as session:
        yield session


# The single-statement reads (one row, a page of a table); their services never write.
ReadSessionDep = Annotated[AsyncSession, Depends(get_read_session)]
