"""A real PostgreSQL restart under load, on a private cluster of the test's own (initdb into
a temporary directory, on a free port): the machine's server is shared and never restarted.
While it is down every answer is 503 `database_unavailable` (never a 500); once it is back,
every answer is right again without restarting the app."""

import asyncio
import os
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from glob import glob
from pathlib import Path

import httpx
import pytest

from irrigation.app import create_app
from irrigation.db import create_engine, create_sessionmaker
from irrigation.migrate import upgrade
from irrigation.settings import Settings
from irrigation.stack import ensure_database
from tests.conftest import _in_thread
from tests.support.api import bearer
from tests.support.factories import make_key, make_sensor
from tests.support.problems import assert_problem
from tests.support.processes import free_port

pytestmark = pytest.mark.slow


def _bindir() -> Path | None:
    found = shutil.which("pg_config")
    if found:
        out = subprocess.run([found, "--bindir"], capture_output=True, text=True, check=False)
        if out.returncode == 0 and (Path(out.stdout.strip()) / "initdb").exists():
            return Path(out.stdout.strip())
    candidates = sorted(glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(candidates[-1]).parent if candidates else None


def _has_user(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


class Cluster:
    """initdb/pg_ctl as the `postgres` user when run as root (initdb refuses root)."""

    def __init__(self, bindir: Path, root: Path, port: int) -> None:
        self.bindir, self.data, self.port = bindir, root / "data", port
        self.log = root / "server.log"
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.url = f"postgresql+asyncpg://postgres@127.0.0.1:{port}/irrigation"

    def _run(self, tool: str, *args: str) -> None:
        command = [*self.as_user, str(self.bindir / tool), *args]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")

    def pg_ctl(self, action: str, *extra: str) -> None:
        options = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1"
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", action, *extra
        )


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    bindir = _bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (initdb) on this machine")
    if os.geteuid() == 0 and not (shutil.which("runuser") and _has_user("postgres")):
        pytest.skip("run as root without runuser and a postgres user: initdb refuses root")
    root = Path(tempfile.mkdtemp(prefix="irrigation-pg-"))
    made = Cluster(bindir, root, free_port())
    if made.as_user:
        shutil.chown(root, "postgres")
    try:
        made.init()
        made.pg_ctl("start")
        yield made
    finally:
        subprocess.run(
            [
                *made.as_user,
                str(bindir / "pg_ctl"),
                "-D",
                str(made.data),
                "-m",
                "immediate",
                "stop",
            ],
            capture_output=True,
            check=False,
        )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def restart_settings(cluster: Cluster, settings: Settings) -> Settings:
    await ensure_database(cluster.url)
    moved = settings.model_copy(update={"database_url": cluster.url})
    await asyncio.to_thread(_in_thread, lambda: upgrade(moved))
    return moved


async def test_a_postgres_restart_under_load_is_503_then_recovers(
    cluster: Cluster, restart_settings: Settings
) -> None:
    engine = create_engine(restart_settings)
    admin = bearer(await make_key(create_sessionmaker(engine), "admin", "ingest"))
    await engine.dispose()
    app = create_app(restart_settings)
    results: list[tuple[float, str, httpx.Response]] = []
    stop = asyncio.Event()
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://test"
        ) as client:
            sensor = await make_sensor(client, admin)

            async def load() -> None:
                n = 0
                while not stop.is_set():
                    n += 1
                    read = await client.get(f"/v1/sensors/{sensor['id']}", headers=admin)
                    results.append((time.monotonic(), "GET", read))
                    ts = f"2026-01-01T00:{n // 60 % 60:02d}:{n % 60:02d}Z"
                    body = {"readings": [{"sensor_id": sensor["id"], "ts": ts, "value": n}]}
                    write = await client.post("/v1/readings", json=body, headers=admin)
                    results.append((time.monotonic(), "POST", write))
                    await asyncio.sleep(0.01)

            clients = [asyncio.create_task(load()) for _ in range(6)]
            await asyncio.sleep(0.5)
            await asyncio.to_thread(cluster.pg_ctl, "restart", "-m", "fast")
            restarted = time.monotonic()
            await asyncio.sleep(1.5)
            stop.set()
            await asyncio.gather(*clients)

            statuses = Counter((method, r.status_code) for _, method, r in results)
            assert {s for _, s in statuses} <= {200, 503}, statuses
            for _, _, response in results:
                if response.status_code == 503:
                    assert_problem(response, 503, "database_unavailable")
                    assert response.headers["Retry-After"] == "1"
            assert statuses[("GET", 503)] + statuses[("POST", 503)] >= 1, statuses
            # Recovered: within a second of pg_ctl reporting the server up, all is well.
            late = [r for at, _, r in results if at > restarted + 1.0]
            assert late, statuses
            assert all(r.status_code == 200 for r in late), statuses
            read = await client.get(f"/v1/sensors/{sensor['id']}", headers=admin)
            assert read.status_code == 200, read.text
    finally:
        stop.set()
        await app.state.redis.aclose()
        await app.state.engine.dispose()
