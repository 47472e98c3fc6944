"""The `irrigation` command: serve, worker, migrate, keys, openapi, up."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import httpx
import typer
import yaml

from irrigation.settings import Settings

app = typer.Typer(help="Irrigation control service.", no_args_is_help=True)
keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")

T = TypeVar("T")
STACK_FILE = "stack.json"


def load_settings() -> Settings:
    """Settings from the environment; unset URLs fall back to what `up` last started."""
    settings = Settings()
    stack_file = Path(settings.data_dir) / STACK_FILE
    if stack_file.exists() and (settings.database_url is None or settings.redis_url is None):
        saved = json.loads(stack_file.read_text())
        settings = settings.model_copy(
            update={
                "database_url": settings.database_url or saved.get("database_url"),
                "redis_url": settings.redis_url or saved.get("redis_url"),
            }
        )
    return settings


def _with_session(settings: Settings, work: Callable[[Any], Awaitable[T]]) -> T:
    from irrigation.db import create_engine, create_sessionmaker

    async def run() -> T:
        engine = create_engine(settings)
        try:
            async with create_sessionmaker(engine)() as session:
                return await work(session)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=1)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address [IRRIGATION_HOST]")] = None,
    port: Annotated[int | None, typer.Option(help="Port [IRRIGATION_PORT]")] = None,
    workers: Annotated[int, typer.Option(help="Uvicorn worker processes")] = 1,
) -> None:
    """Run the HTTP API under uvicorn."""
    import uvicorn

    settings = load_settings()
    os.environ.update(_url_env(settings))
    uvicorn.run(
        "irrigation.app:create_app",
        factory=True,
        host=host or settings.host,
        port=port or settings.port,
        workers=workers,
        log_level=settings.log_level.lower(),
        access_log=False,
        proxy_headers=True,
    )


@app.command()
def worker() -> None:
    """Run the arq worker: pump jobs, watchdog and outbox relay."""
    from irrigation.worker import run_worker

    settings = load_settings()
    run_worker(settings)


@app.command()
def migrate(revision: Annotated[str, typer.Argument()] = "head") -> None:
    """Apply the Alembic migrations (creating the database if needed)."""
    from irrigation.migrate import upgrade
    from irrigation.stack import ensure_database

    settings = load_settings()
    asyncio.run(ensure_database(settings.effective_database_url))
    upgrade(settings, revision)


@app.command()
def openapi(
    output: Annotated[Path | None, typer.Option("--output", "-o", help="File to write")] = None,
) -> None:
    """Print (or write) the OpenAPI document as YAML."""
    text = render_openapi()
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text)


def render_openapi() -> str:
    from irrigation.app import create_app

    schema = create_app(Settings()).openapi()
    return yaml.safe_dump(schema, sort_keys=False, allow_unicode=True, width=100)


@keys_app.command("create")
def keys_create(
    site: Annotated[str, typer.Option(help="Site name")],
    scopes: Annotated[str, typer.Option(help="Comma-separated: read,ingest,control,admin")],
    create_site: Annotated[bool, typer.Option("--create-site", help="Create the site")] = False,
    name: Annotated[str, typer.Option(help="A label for the key")] = "cli",
) -> None:
    """Create a key and print only the key (scriptable)."""
    from irrigation.auth import service
    from irrigation.auth.schemas import Scope
    from irrigation.common.errors import DomainError

    try:
        wanted = [Scope(s.strip()) for s in scopes.split(",") if s.strip()]
    except ValueError:
        _fail(f"scopes must be among {', '.join(s.value for s in Scope)}")
    if not wanted:
        _fail("give at least one scope")

    async def work(session: Any) -> str:
        async with session.begin():
            owner = await service.get_or_create_site(session, site, create=create_site)
            _, secret = await service.create_key(session, owner.id, name, wanted)
        return secret

    try:
        typer.echo(_with_session(load_settings(), work))
    except DomainError as exc:
        _fail(exc.detail)


@keys_app.command("list")
def keys_list(site: Annotated[str, typer.Option(help="Site name")]) -> None:
    """List a site's keys as JSON lines (never the secrets)."""
    from irrigation.auth import service
    from irrigation.auth.schemas import ApiKeyOut
    from irrigation.common.errors import DomainError
    from irrigation.common.pagination import PageParams

    async def work(session: Any) -> list[str]:
        owner = await service.get_or_create_site(session, site, create=False)
        lines, cursor = [], None
        while True:
            keys, cursor = await service.list_keys(session, owner.id, PageParams(500, cursor))
            lines += [ApiKeyOut.model_validate(k).model_dump_json() for k in keys]
            if cursor is None:
                return lines

    try:
        for line in _with_session(load_settings(), work):
            typer.echo(line)
    except DomainError as exc:
        _fail(exc.detail)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id")],
    site: Annotated[str, typer.Option(help="Site name")],
) -> None:
    """Revoke a key: it stops working at once."""
    import uuid

    from irrigation.auth import service
    from irrigation.common.errors import DomainError

    try:
        parsed = uuid.UUID(key_id)
    except ValueError:
        _fail("key id must be a UUID")

    async def work(session: Any) -> None:
        async with session.begin():
            owner = await service.get_or_create_site(session, site, create=False)
            await service.revoke_key(session, owner.id, parsed)

    try:
        _with_session(load_settings(), work)
    except DomainError as exc:
        _fail(exc.detail)
    typer.echo(f"revoked {parsed}")


def _url_env(settings: Settings) -> dict[str, str]:
    return {
        "IRRIGATION_DATABASE_URL": settings.effective_database_url,
        "IRRIGATION_REDIS_URL": settings.effective_redis_url,
    }


@app.command()
def up(
    port: Annotated[int | None, typer.Option(help="API port [IRRIGATION_PORT]")] = None,
    simulator_port: Annotated[
        int | None, typer.Option(help="Device simulator port [IRRIGATION_SIMULATOR_PORT]")
    ] = None,
    host: Annotated[str | None, typer.Option(help="Bind address [IRRIGATION_HOST]")] = None,
) -> None:
    """The whole local stack: database, Redis, migrations, API, worker, simulator, demo key."""
    from irrigation.demo import ensure_demo
    from irrigation.migrate import upgrade
    from irrigation.stack import resolve_stack

    base = Settings()
    data_dir = Path(base.data_dir).resolve()
    stack = resolve_stack(
        base.database_url, base.redis_url, data_dir, "irrigation", embedded=base.embedded
    )
    try:
        updates: dict[str, Any] = {
            "database_url": stack.database_url,
            "redis_url": stack.redis_url,
            "port": port or base.port,
            "simulator_port": simulator_port or base.simulator_port,
            "host": host or base.host,
        }
        if "gateway_url" not in base.model_fields_set:
            updates["gateway_url"] = f"http://127.0.0.1:{updates['simulator_port']}"
        settings = base.model_copy(update=updates)
        data_dir.mkdir(parents=True, exist_ok=True)
        (data_dir / STACK_FILE).write_text(
            json.dumps({"database_url": stack.database_url, "redis_url": stack.redis_url})
        )
        upgrade(settings)
        key_file = data_dir / "demo_key"
        saved = key_file.read_text().strip() if key_file.exists() else None
        key = _with_session(settings, lambda s: ensure_demo(s, settings, saved))
        if key != saved:
            key_file.write_text(key)
            key_file.chmod(0o600)
        _supervise(settings, key, stack.embedded)
    finally:
        stack.stop()


def _supervise(settings: Settings, key: str, embedded: list[str]) -> None:
    env = {
        **os.environ,
        **_url_env(settings),
        "IRRIGATION_PORT": str(settings.port),
        "IRRIGATION_HOST": settings.host,
        "IRRIGATION_SIMULATOR_PORT": str(settings.simulator_port),
        "IRRIGATION_GATEWAY_URL": settings.gateway_url,
    }
    python = [sys.executable, "-m", "irrigation"]
    commands = {
        "api": [*python, "serve"],
        "worker": [*python, "worker"],
    }
    if _has_command("simulator"):
        commands["simulator"] = [*python, "simulator"]
    procs = {name: subprocess.Popen(cmd, env=env) for name, cmd in commands.items()}
    stopping = False

    def stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    base_url = f"http://{_client_host(settings.host)}:{settings.port}"
    announced = False
    try:
        while not stopping:
            for name, proc in list(procs.items()):
                if proc.poll() is not None:
                    # arq's worker exits when Redis drops; a dead process is restarted.
                    typer.echo(f"{name} exited with {proc.returncode}; restarting", err=True)
                    procs[name] = subprocess.Popen(commands[name], env=env)
            if not announced and _ready(base_url):
                announced = True
                _announce(settings, base_url, key, embedded)
            time.sleep(0.5)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()


def _has_command(name: str) -> bool:
    return any(
        (c.name or getattr(c.callback, "__name__", "")) == name for c in app.registered_commands
    )


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def _ready(base_url: str) -> bool:
    try:
        return httpx.get(f"{base_url}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _announce(settings: Settings, base_url: str, key: str, embedded: list[str]) -> None:
    where = f" (embedded: {', '.join(embedded)})" if embedded else ""
    typer.echo(
        "\n".join(
            [
                "",
                f"irrigation is up{where}",
                f"  API          {base_url}",
                f"  Swagger UI   {base_url}/docs",
                f"  simulator    http://127.0.0.1:{settings.simulator_port}",
                f"  admin key    {key}",
                "",
                f'  curl -H "Authorization: Bearer {key}" {base_url}/v1/pumps',
                "",
                "Ctrl-C stops everything.",
            ]
        )
    )
