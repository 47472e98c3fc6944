"""The `irrigation` command: serve, worker, migrate, keys, openapi, up, import, demo, soak."""

import asyncio
import json
import logging
import os
import shutil
import signal
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import httpx
import typer
import yaml

from irrigation.common import eventloop
from irrigation.demo_soil import FEEDER_HELP
from irrigation.logging import (
    LOG_FORMAT_ENV,
    UVICORN_LOG_CONFIG,
    configure_logging,
    resolve_log_format,
)
from irrigation.settings import MULTIPROCESS_METRICS, Settings
from irrigation.supervisor import api_url, client_host, supervise, url_env

if TYPE_CHECKING:
    from irrigation.mqtt.client import BrokerLink

app = typer.Typer(help="Irrigation control service.", no_args_is_help=True)
keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")

T = TypeVar("T")
STACK_FILE = "stack.json"


def load_settings() -> Settings:
    """Settings from the environment; unset URLs fall back to those of a running `up`
    (in the same data directory), so `irrigation keys ...` works beside it."""
    settings = Settings()
    mqtt_set = "mqtt_url" in settings.model_fields_set
    if settings.database_url is not None and settings.redis_url is not None and mqtt_set:
        return settings
    saved = _running_stack(Path(settings.data_dir) / STACK_FILE)
    if saved is None:
        return settings
    update = {
        "database_url": settings.database_url or saved.get("database_url"),
        "redis_url": settings.redis_url or saved.get("redis_url"),
    }
    if not mqtt_set and saved.get("mqtt_url"):
        # The broker `up` chose (its embedded one speaks MQTT 3.1.1 only).
        update |= {
            "mqtt_url": saved["mqtt_url"],
            "mqtt_protocol": saved.get("mqtt_protocol", "auto"),
        }
    return settings.model_copy(update=update)


def _running_stack(stack_file: Path) -> dict[str, Any] | None:
    """What a live `up` recorded in its data directory; None if no `up` runs there."""
    from irrigation.stack import pid_alive

    try:
        saved = json.loads(stack_file.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(saved, dict):
        return None
    pid = saved.get("pid")
    if not isinstance(pid, int) or not pid_alive(pid):
        return None
    return saved


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


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=1)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address [IRRIGATION_HOST]")] = None,
    port: Annotated[int | None, typer.Option(help="Port [IRRIGATION_PORT]")] = None,
    workers: Annotated[int, typer.Option(help="Uvicorn worker processes")] = 1,
) -> None:
    """Run the HTTP API under uvicorn."""
    settings = load_settings()
    os.environ.update(url_env(settings))
    # uvicorn reads it as --workers' default; each worker's app reads it (common.balance).
    os.environ["WEB_CONCURRENCY"] = str(workers)
    if workers > 1 and MULTIPROCESS_METRICS not in os.environ:
        os.environ[MULTIPROCESS_METRICS] = _fresh_metrics_dir(settings, port or settings.port)
    _export_log_format(settings)
    # uvicorn's own command, in place of this process (same pid): the supervisor of several
    # workers then holds uvicorn and structlog alone (32 MB, 26 without the log formatter,
    # instead of this command's 48), and a single worker none of the CLI's imports.
    os.execv(
        sys.executable,
        [
            sys.executable,
            "-m",
            "uvicorn",
            "irrigation.app:create_served_app",
            "--factory",
            "--host",
            host or settings.host,
            "--port",
            str(port or settings.port),
            "--workers",
            str(workers),
            "--log-level",
            settings.log_level.lower(),
            "--log-config",
            str(UVICORN_LOG_CONFIG),
            "--no-access-log",
            "--proxy-headers",
            # uvicorn otherwise waits for every connection to finish: open live streams
            # end at the signal, but a client that reads nothing keeps its socket.
            "--timeout-graceful-shutdown",
            str(settings.shutdown_grace_s),
        ],
    )


@app.command()
def worker(
    queues: Annotated[
        str | None,
        typer.Option(
            "--queues",
            help="Comma-separated queues to serve: pumps (start, stop, watchdog, relay, "
            "reconciliation), automation (dispatch, schedules, rules, alerts, webhooks), "
            "bulk (imports, retention); one arq worker each, in this process [default: all]",
        ),
    ] = None,
    check: Annotated[
        bool,
        typer.Option(
            "--check", help="Exit 0 if a worker of each queue is alive (healthchecks), else 1"
        ),
    ] = False,
) -> None:
    """Run the arq workers of the given queues (all of them by default)."""
    from irrigation import queue
    from irrigation.worker import is_healthy, run_worker

    try:
        served = queue.parse_queues(queues) if queues is not None else queue.QUEUES
    except ValueError as exc:
        raise typer.BadParameter(
            f"{exc}; the queues are {', '.join(queue.QUEUES)}", param_hint="--queues"
        ) from exc
    settings = load_settings()
    if check:
        raise typer.Exit(code=0 if asyncio.run(is_healthy(settings, served)) else 1)
    run_worker(settings, served)


@app.command()
def mqtt(
    check: Annotated[
        bool,
        typer.Option(
            "--check", help="Exit 0 if the running bridge is ready (healthchecks), else 1"
        ),
    ] = False,
) -> None:
    """Run the MQTT readings bridge: readings published to the broker go the way of
    POST /v1/readings, acknowledged only once committed.

    Topics: {root}/{site_id}/sensors/{sensor_id}/reading (one reading) and
    {root}/{site_id}/readings (a batch). Its /healthz, /readyz and /metrics are on
    IRRIGATION_MQTT_BRIDGE_PORT."""
    settings = load_settings()
    if check:
        from irrigation.ingest.mqtt_probe import is_ready

        raise typer.Exit(code=0 if is_ready(settings.mqtt_bridge_port) else 1)
    from irrigation.ingest.mqtt_bridge import run_bridge

    configure_logging(settings.log_level, settings.log_format)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await run_bridge(settings, stop)

    eventloop.run(run())


@app.command()
def simulator(
    host: Annotated[str, typer.Option(help="Bind address")] = "127.0.0.1",
    port: Annotated[int | None, typer.Option(help="Port [IRRIGATION_SIMULATOR_PORT]")] = None,
    mqtt_url: Annotated[
        str | None,
        typer.Option(
            help="Also serve the devices on this broker (mqtt://host:port), under "
            "IRRIGATION_MQTT_TOPIC_ROOT; default: HTTP only"
        ),
    ] = None,
    api_url: Annotated[
        str | None,
        typer.Option(
            help="Feed the flow meters (flow sensors attached to pumps or water sources) of "
            "the site of --api-key-file's key through this API's POST /v1/readings"
        ),
    ] = None,
    api_key_file: Annotated[
        Path | None,
        typer.Option(help="A file holding a key with the read and ingest scopes (--api-url)"),
    ] = None,
) -> None:
    """Run the device simulator: pump controllers over HTTP (and MQTT with --mqtt-url) that
    keep the physical truth, the weather API, and (with --api-url) the flow meters of a
    site's pumps and water sources."""
    from irrigation.mqtt.client import client_id
    from irrigation.simulator.app import MqttOptions, run_simulator
    from irrigation.simulator.flow import FeedRequest

    settings = load_settings()
    _export_log_format(settings)
    configure_logging(settings.log_level, settings.log_format)
    port = port or settings.simulator_port
    mqtt = None
    if mqtt_url is not None:
        if not mqtt_url.startswith(("mqtt://", "mqtts://")):
            _fail(f"--mqtt-url must start with mqtt:// or mqtts://: {mqtt_url!r}")
        mqtt = MqttOptions(
            mqtt_url,
            settings.mqtt_topic_root,
            # One session per simulator port: two simulators must not share a client id.
            client_id(settings.mqtt_client_id_prefix, "simulator", f"{host}-{port}"),
            settings.mqtt_protocol,
        )
    flow_feed = None
    if api_url is not None:
        if api_key_file is None:
            _fail("--api-url needs --api-key-file")
        flow_feed = FeedRequest(api_url=api_url, api_key_file=str(api_key_file))
    run_simulator(host, port, mqtt, flow_feed)


@app.command()
def soak(
    seed: Annotated[int, typer.Option(help="The plan's seed: same seed, same requests and faults")],
    minutes: Annotated[
        float, typer.Option(min=0.05, help="How long requests and faults go on")
    ] = 1.0,
    sites: Annotated[int, typer.Option(min=1, help="Sites, each with its pumps")] = 3,
    shared_hardware_ids: Annotated[
        bool,
        typer.Option(
            "--shared-hardware-ids/--no-shared-hardware-ids",
            help="Pumps of several sites with one hardware_id",
        ),
    ] = True,
    faults: Annotated[
        str | None,
        typer.Option(help="Comma-separated fault kinds (default: every one); `none`: no fault"),
    ] = None,
    gateway: Annotated[
        str,
        typer.Option(help="How workers reach the devices: http, or mqtt (a broker of its own)"),
    ] = "http",
    schedules: Annotated[
        int,
        typer.Option(min=1, help="Fault schedules: seeds SEED, SEED+1, ... on one stack"),
    ] = 1,
    parallel: Annotated[
        int,
        typer.Option(min=1, help="Schedules at once (each its own sites and device faults)"),
    ] = 1,
    database_url: Annotated[
        str | None,
        typer.Option(help="Use this database as it is (default: a fresh one, dropped after)"),
    ] = None,
    keep_database: Annotated[bool, typer.Option(help="Keep the fresh database")] = False,
    workdir: Annotated[
        Path | None, typer.Option(help="Logs and history (default: DATA_DIR/soak/seed-N-...)")
    ] = None,
) -> None:
    """Fault soak: the stack as processes under random requests and faults, judged from the
    simulator's truth. Exits 1 on any violation, printing the seed that replays it."""
    from irrigation.soak.plan import GATEWAYS, SoakParams, fault_kinds
    from irrigation.soak.runner import main

    if gateway not in GATEWAYS:
        _fail(f"--gateway must be one of {', '.join(GATEWAYS)}: {gateway!r}")
    device_faults, process_faults = fault_kinds(faults, gateway)
    params = SoakParams(
        seed=seed,
        minutes=minutes,
        sites=sites,
        shared_hardware_ids=shared_hardware_ids,
        device_faults=device_faults,
        process_faults=process_faults,
        gateway=gateway,
    )
    code = main(
        params,
        schedules=schedules,
        parallel=parallel,
        workdir=workdir,
        database_url=database_url,
        keep_database=keep_database,
    )
    raise typer.Exit(code=code)


@app.command()
def migrate(revision: Annotated[str, typer.Argument()] = "head") -> None:
    """Apply the Alembic migrations (creating the database if needed)."""
    from irrigation.stack import ensure_database

    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    asyncio.run(ensure_database(settings.effective_database_url))
    _upgrade(settings, revision)


def _upgrade(settings: Settings, revision: str = "head") -> None:
    """Alembic's upgrade, its lines through our logging: alembic.ini's logging section
    would replace it with a format of its own."""
    # Alembic announces each of its plugins at INFO as it loads (alembic.ini hid that).
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    from alembic import command

    from irrigation.migrate import alembic_config

    config = alembic_config(settings)
    config.attributes["configure_logging"] = False
    command.upgrade(config, revision)


def _export_log_format(settings: Settings) -> None:
    """uvicorn reads no settings of ours: UVICORN_LOG_CONFIG's formatter takes the format
    from the environment, resolved here (`auto` against this process's terminal)."""
    os.environ[LOG_FORMAT_ENV] = resolve_log_format(settings.log_format)


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


IMPORT_MEDIA_TYPES = {"ndjson": "application/x-ndjson", "csv": "text/csv"}
IMPORT_EXTENSIONS = {".ndjson": "ndjson", ".jsonl": "ndjson", ".csv": "csv"}
IMPORT_BLOCK = 1024 * 1024


@app.command("import")
def import_file(
    file: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="NDJSON or CSV")
    ],
    file_format: Annotated[
        str | None,
        typer.Option("--format", help="ndjson or csv (default: from the file's extension)"),
    ] = None,
    url: Annotated[str, typer.Option(help="The API's base URL")] = "http://127.0.0.1:8000",
    key: Annotated[
        str | None,
        typer.Option(envvar="IRRIGATION_API_KEY", help="A key with the ingest and read scopes"),
    ] = None,
) -> None:
    """Import a history file: upload it, follow the job, print its final counts (stdout).

    Progress goes to stderr; the last line of stdout is the counts. Exits 1 if the API
    refuses the file or the import fails."""
    from rich.console import Console
    from rich.progress import Progress, TextColumn

    fmt = file_format or IMPORT_EXTENSIONS.get(file.suffix.lower())
    if fmt not in IMPORT_MEDIA_TYPES:
        _fail("give --format ndjson or --format csv")
    if not key:
        _fail("give --key or set IRRIGATION_API_KEY")
    size = file.stat().st_size
    headers = {"Authorization": f"Bearer {key}"}
    timeout = httpx.Timeout(30, connect=5)
    with (
        httpx.Client(base_url=url, headers=headers, timeout=timeout) as client,
        Progress(
            *Progress.get_default_columns(),
            TextColumn("{task.fields[detail]}"),
            console=Console(stderr=True),
        ) as progress,
    ):
        sending = progress.add_task("upload", total=size, detail=f"{size:,} bytes")

        def blocks() -> Iterator[bytes]:
            # A generator body: httpx sends it as it is read, the file is never in memory.
            with file.open("rb") as f:
                while block := f.read(IMPORT_BLOCK):
                    progress.advance(sending, len(block))
                    yield block

        try:
            response = client.post(
                "/v1/ingest/jobs",
                params={"format": fmt},
                content=blocks(),
                # Known up front: the API refuses a file above its limit before reading it.
                headers={"Content-Type": IMPORT_MEDIA_TYPES[fmt], "Content-Length": str(size)},
            )
        except httpx.HTTPError as exc:
            _fail(f"upload failed: {type(exc).__name__}: {exc} (is the file above the limit?)")
        if response.status_code != 202:
            _fail(f"the API refused the file: {response.status_code} {_problem(response)}")
        job: dict[str, Any] = response.json()
        progress.update(sending, completed=size)
        importing = progress.add_task("import", total=None, detail="queued")
        try:
            while job["status"] not in ("completed", "failed"):
                time.sleep(0.5)
                polled = client.get(f"/v1/ingest/jobs/{job['id']}")
                if polled.status_code != 200:
                    _fail(f"cannot follow job {job['id']}: {_problem(polled)}")
                job = polled.json()
                progress.update(
                    importing,
                    total=job["total"] or None,
                    completed=job["processed"],
                    detail=f"{job['processed']:,}/{job['total']:,} lines",
                )
        except KeyboardInterrupt:
            typer.echo(f"job {job['id']} goes on: GET {url}/v1/ingest/jobs/{job['id']}", err=True)
            raise typer.Exit(code=130) from None
    took = job["processing_time_ms"]
    typer.echo(f"job {job['id']} {job['status']}" + (f" in {took / 1000:.1f} s" if took else ""))
    typer.echo(
        f"total {job['total']}  inserted {job['inserted']}  "
        f"duplicates {job['duplicates']}  quarantined {job['quarantined']}"
    )
    if job["status"] != "completed":
        _fail(f"the import failed: {job['error']}")


def _problem(response: httpx.Response) -> str:
    try:
        return str(response.json()["detail"])
    except (ValueError, KeyError, TypeError):
        return response.text[:200]


@app.command(help=FEEDER_HELP)
def demo(
    interval: Annotated[float, typer.Option(min=0.01, help="Seconds between readings")] = 5.0,
    count: Annotated[
        int | None, typer.Option(min=1, help="Stop after this many readings (default: never)")
    ] = None,
    sensor: Annotated[
        str | None, typer.Option(help='Sensor id (default: the one named "Demo moisture")')
    ] = None,
    url: Annotated[
        str | None,
        typer.Option(help="The API's base URL (default: a running `up`'s, else host and port)"),
    ] = None,
    simulator_url: Annotated[
        str | None,
        typer.Option("--simulator", help="The simulator's base URL (default: a running `up`'s)"),
    ] = None,
    key: Annotated[
        str | None,
        typer.Option(help="A key with the read and ingest scopes (default: DATA_DIR/demo_key)"),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", help="Print only waterings and problems")
    ] = False,
    mqtt: Annotated[
        bool,
        typer.Option(
            "--mqtt",
            help="Publish the readings over MQTT (IRRIGATION_MQTT_URL, or a running `up`'s "
            "broker) instead of POST /v1/readings; the bridge (`irrigation mqtt`) takes them in",
        ),
    ] = False,
) -> None:
    from aiomqtt import MqttError

    from irrigation.demo import Feeder, FeederError, find_sensor, run_feeder
    from irrigation.mqtt import topics
    from irrigation.mqtt.replay import single_message

    settings = Settings()
    data_dir = Path(settings.data_dir)
    saved = _running_stack(data_dir / STACK_FILE) or {}
    url = url or saved.get("api_url") or api_url(settings)
    simulator_url = (
        simulator_url or saved.get("simulator_url") or f"http://127.0.0.1:{settings.simulator_port}"
    )
    if key is None:
        key_file = data_dir / "demo_key"
        try:
            key = key_file.read_text().strip()
        except OSError:
            _fail(f"no key in {key_file}: start `irrigation up` first, or give --key")
    try:
        sensor_id = uuid.UUID(sensor) if sensor else None
    except ValueError:
        _fail("--sensor must be a UUID")

    async def feed() -> None:
        timeout = httpx.Timeout(10, connect=3)
        headers = {"Authorization": f"Bearer {key}"}
        async with (
            httpx.AsyncClient(base_url=url, headers=headers, timeout=timeout) as api,
            httpx.AsyncClient(base_url=simulator_url, timeout=timeout) as sim,
        ):
            found, site_id, hardware_ids = await find_sensor(api, sensor_id)
            pumps = ", ".join(hardware_ids) or "none"
            if not mqtt:
                typer.echo(
                    f"feeding sensor {found} at {url} (wetted by runs of: {pumps})", err=True
                )
                feeder = Feeder(api, sim, found, site_id, hardware_ids)
                await run_feeder(
                    feeder, interval_s=interval, count=count, echo=typer.echo, quiet=quiet
                )
                return
            mqtt_settings = load_settings()
            link = _publisher_link(mqtt_settings)
            topic = topics.sensor_reading(mqtt_settings.mqtt_topic_root, site_id, found)
            try:
                async with link.connect() as client:

                    async def publish(reading: dict[str, Any]) -> None:
                        await client.publish(
                            *single_message(mqtt_settings.mqtt_topic_root, site_id, reading),
                            qos=1,
                        )

                    typer.echo(
                        f"feeding sensor {found} over MQTT: {topic} at "
                        f"{link.address.url()} (wetted by runs of: {pumps})",
                        err=True,
                    )
                    feeder = Feeder(api, sim, found, site_id, hardware_ids, publish=publish)
                    await run_feeder(
                        feeder, interval_s=interval, count=count, echo=typer.echo, quiet=quiet
                    )
            except MqttError as exc:
                raise FeederError(
                    f"cannot reach the broker at {link.address.url()}: {exc}"
                ) from None

    try:
        eventloop.run(feed())
    except FeederError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        raise typer.Exit(code=130) from None


def _publisher_link(settings: Settings, url: str | None = None) -> "BrokerLink":
    """A client of its own for each run (no persistent session: a publisher needs none)."""
    from irrigation.mqtt.address import BrokerAddress
    from irrigation.mqtt.client import BrokerLink, SessionOptions, client_id

    return BrokerLink(
        BrokerAddress.parse(url or settings.mqtt_url),
        SessionOptions(
            client_id(settings.mqtt_client_id_prefix, "publish", uuid.uuid4().hex[:12]),
            persistent=False,
        ),
        settings.mqtt_protocol,
    )


@app.command("mqtt-publish")
def mqtt_publish(
    file: Annotated[
        Path,
        typer.Argument(
            exists=True, dir_okay=False, readable=True, help="NDJSON: one reading a line"
        ),
    ],
    site: Annotated[str, typer.Option(help="The site's id (its topics' second level)")],
    batch: Annotated[
        int,
        typer.Option(
            min=0,
            max=10_000,
            help="Lines per message on the site's batch topic; 0: one message per reading, "
            "on its sensor's topic",
        ),
    ] = 0,
    url: Annotated[
        str | None,
        typer.Option(help="The broker, with the site's credential [IRRIGATION_MQTT_URL]"),
    ] = None,
) -> None:
    """Replay an NDJSON file of readings over MQTT, as devices publish them (QoS 1).

    Each line is `{"sensor_id", "ts", "value", "unit"?, "quality"?}`, as for `irrigation
    import`. Prints the messages and readings the broker acknowledged; the bridge
    (`irrigation mqtt`) checks and stores them. Exits 1 if a line names no sensor (in
    per-reading mode) or the broker cannot be reached."""
    from aiomqtt import MqttError

    from irrigation.mqtt.replay import replay

    try:
        site_id = uuid.UUID(site)
    except ValueError:
        _fail("--site must be the site's id (a UUID)")
    settings = load_settings()
    link = _publisher_link(settings, url)

    async def send() -> Any:
        with file.open(encoding="utf-8", errors="replace") as lines:
            return await replay(link, settings.mqtt_topic_root, site_id, lines, batch=batch)

    try:
        replayed = asyncio.run(send())
    except MqttError as exc:
        _fail(f"cannot publish to {link.address.url()}: {exc}")
    except KeyboardInterrupt:
        raise typer.Exit(code=130) from None
    typer.echo(f"published {replayed.published} messages, {replayed.readings} readings")
    for number, why in replayed.skipped or []:
        typer.echo(f"line {number} skipped: {why}", err=True)
    if replayed.skipped:
        raise typer.Exit(code=1)


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


def _fresh_metrics_dir(settings: Settings, port: int) -> str:
    """An empty directory for the workers' Prometheus values: each worker counts in its own
    files there, and /metrics adds them all up, whichever worker answers the scrape. Emptied
    at every start, as prometheus_client asks (a counter would otherwise go on from the
    last run's)."""
    path = Path(settings.data_dir).resolve() / "metrics" / str(port)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return str(path)


def _stack_instance(data_dir: Path) -> str:
    """`up-` and a digest of the data directory: the bridge's client id names its stack."""
    import hashlib

    return "up-" + hashlib.sha256(str(data_dir).encode()).hexdigest()[:10]


def _interrupt(*_: Any) -> None:
    raise KeyboardInterrupt


@app.command()
def up(
    port: Annotated[int | None, typer.Option(help="API port [IRRIGATION_PORT]")] = None,
    simulator_port: Annotated[
        int | None, typer.Option(help="Device simulator port [IRRIGATION_SIMULATOR_PORT]")
    ] = None,
    host: Annotated[str | None, typer.Option(help="Bind address [IRRIGATION_HOST]")] = None,
    demo: Annotated[
        bool, typer.Option("--demo/--no-demo", help="Also run the demo feeder (irrigation demo)")
    ] = True,
) -> None:
    """The whole local stack: database, Redis, MQTT broker, migrations, API, worker, MQTT
    readings bridge, simulator, demo site. The worker reaches the pumps over MQTT
    (IRRIGATION_GATEWAY=http: the simulator's HTTP).

    Uses IRRIGATION_DATABASE_URL / IRRIGATION_REDIS_URL when set, else the servers on
    localhost, else embedded ones in IRRIGATION_DATA_DIR (IRRIGATION_EMBEDDED=always
    forces those); the broker at IRRIGATION_MQTT_URL when it answers, else an embedded
    one (amqtt) on its port. Ctrl-C or SIGTERM stops everything it started.
    """
    from irrigation.demo import ensure_demo
    from irrigation.stack import free_port, port_answers, resolve_stack

    started = time.monotonic()
    base = Settings()
    for option, value in (
        ("--port", port or base.port),
        ("--simulator-port", simulator_port or base.simulator_port),
    ):
        if port_answers(client_host(host or base.host), value):
            _fail(f"port {value} is already in use: choose another with {option}")
    # SIGTERM during start-up must still reach the `finally` that stops embedded servers.
    signal.signal(signal.SIGTERM, _interrupt)
    data_dir = Path(base.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        stack = resolve_stack(
            base.database_url,
            base.redis_url,
            data_dir,
            "irrigation",
            embedded=base.embedded,
            mqtt_url=base.mqtt_url,
        )
    except ImportError as exc:
        _fail(f"{exc}: embedded servers need `pip install -e '.[embedded]'`")
    except KeyboardInterrupt:
        raise typer.Exit(code=130) from None
    except Exception as exc:  # any start-up failure: one readable line, not a traceback
        _fail(f"cannot reach or start PostgreSQL/Redis/MQTT: {type(exc).__name__}: {exc}")

    stack_file = data_dir / STACK_FILE
    try:
        updates: dict[str, Any] = {
            "database_url": stack.database_url,
            "redis_url": stack.redis_url,
            "port": port or base.port,
            "simulator_port": simulator_port or base.simulator_port,
            "host": host or base.host,
            # Decided once, against this terminal: the children write to it too.
            "log_format": resolve_log_format(base.log_format),
            "mqtt_url": stack.mqtt_url,
            # The bridge's probe port is a convenience: another one when it is taken.
            "mqtt_bridge_port": (
                free_port()
                if port_answers(client_host(host or base.host), base.mqtt_bridge_port)
                else base.mqtt_bridge_port
            ),
            # One persistent session per data directory (one stack), stable across runs.
            "mqtt_instance": base.mqtt_instance or _stack_instance(data_dir),
        }
        if "mqtt" in stack.embedded:
            updates["mqtt_protocol"] = "3.1.1"  # amqtt speaks no MQTT 5
        if "gateway" not in base.model_fields_set:
            updates["gateway"] = "mqtt"  # the pumps the way field controllers are reached
        simulator_url = f"http://127.0.0.1:{updates['simulator_port']}"
        # The simulator is the pump gateway and the weather service, unless set otherwise.
        for name in ("gateway_url", "weather_url"):
            if name not in base.model_fields_set:
                updates[name] = simulator_url
        settings = base.model_copy(update=updates)
        stack_file.write_text(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "database_url": stack.database_url,
                    "redis_url": stack.redis_url,
                    "embedded": stack.pids,
                    "api_url": api_url(settings),
                    "simulator_url": simulator_url,
                    "mqtt_url": stack.mqtt_url,
                    "mqtt_protocol": settings.mqtt_protocol,
                    "mqtt_bridge_port": settings.mqtt_bridge_port,
                }
            )
        )
        configure_logging(settings.log_level, settings.log_format)
        # The readiness probe asks four times a second; httpx would log every answer.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        _upgrade(settings)
        key_file = data_dir / "demo_key"
        saved = key_file.read_text().strip() if key_file.exists() else None
        key, zone_id = _with_session(settings, lambda s: ensure_demo(s, settings, saved))
        if key != saved:
            key_file.write_text(key)
            key_file.chmod(0o600)
        supervise(settings, key, stack.embedded, data_dir, started, demo=demo, zone_id=zone_id)
    except KeyboardInterrupt:
        pass
    finally:
        # Nothing may interrupt the shutdown of the embedded servers (a second Ctrl-C).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.stop()
        if _running_stack(stack_file) is not None:  # still ours: we are alive
            stack_file.unlink(missing_ok=True)
        typer.echo("irrigation stopped", err=True)
