"""`irrigation up`'s process supervisor: starts the API, two workers (the `pumps` queue's,
and the `automation` and `bulk` queues'), MQTT readings bridge, simulator and demo feeder,
restarts any that dies, says where everything is once the API is ready, and stops them in
order (the API, workers and bridge before the simulator)."""

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import typer

from irrigation.mqtt.address import BrokerAddress
from irrigation.settings import Settings


def url_env(settings: Settings) -> dict[str, str]:
    return {
        "IRRIGATION_DATABASE_URL": settings.effective_database_url,
        "IRRIGATION_REDIS_URL": settings.effective_redis_url,
    }


def client_host(host: str) -> str:
    """Where a client on this machine reaches a server bound to `host`."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def api_url(settings: Settings) -> str:
    return f"http://{client_host(settings.host)}:{settings.port}"


def child_env(settings: Settings, data_dir: Path) -> dict[str, str]:
    """The environment of every process `up` starts: its own, and what `up` decided."""
    return {
        **os.environ,
        **url_env(settings),
        "IRRIGATION_PORT": str(settings.port),
        "IRRIGATION_HOST": settings.host,
        "IRRIGATION_SIMULATOR_PORT": str(settings.simulator_port),
        "IRRIGATION_GATEWAY": settings.gateway,
        "IRRIGATION_GATEWAY_URL": settings.gateway_url,
        "IRRIGATION_WEATHER_URL": settings.weather_url,
        "IRRIGATION_MQTT_URL": settings.mqtt_url,
        "IRRIGATION_MQTT_PROTOCOL": settings.mqtt_protocol,
        "IRRIGATION_MQTT_INSTANCE": settings.mqtt_instance,
        "IRRIGATION_MQTT_BRIDGE_PORT": str(settings.mqtt_bridge_port),
        "IRRIGATION_DATA_DIR": str(data_dir),
        # Their output is `up`'s: the format `up` resolved for its own terminal.
        "IRRIGATION_LOG_FORMAT": settings.log_format,
    }


class _Child:
    """One supervised process; restarted with a growing delay while it keeps dying."""

    QUICK_DEATH_S = 30.0

    def __init__(self, name: str, command: list[str]) -> None:
        self.name = name
        self.command = command
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.failures = 0
        self.restart_at = 0.0

    def start(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            self.command,
            env=env,
            # Own session: a Ctrl-C at the terminal reaches `up` alone, which then stops
            # the children in order (API and worker first, the simulator last).
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        self.started_at = time.monotonic()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def reap(self, now: float) -> None:
        """If the process died, schedule its restart (0.5 s, then doubling up to 30 s)."""
        if self.proc is None or self.proc.poll() is None:
            return
        code = self.proc.returncode
        self.proc = None
        lived = now - self.started_at
        self.failures = self.failures + 1 if lived < self.QUICK_DEATH_S else 1
        delay = min(30.0, 0.5 * 2 ** (self.failures - 1))
        self.restart_at = now + delay
        # arq's worker exits when Redis drops, for one: a dead process is restarted.
        typer.echo(f"{self.name} exited with code {code}; restarting in {delay:g} s", err=True)


_LIBC: Any = None


def _die_with_parent() -> None:
    """Runs in the child before exec (Linux): SIGTERM it if `up` dies, even by SIGKILL,
    so no child outlives the supervisor."""
    if _LIBC is not None:
        _LIBC.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def supervise(
    settings: Settings,
    key: str,
    embedded: list[str],
    data_dir: Path,
    started: float,
    *,
    demo: bool = True,
    zone_id: uuid.UUID | None = None,
) -> None:
    """Run the simulator, API, workers and MQTT bridge (and, once the API is ready, the demo
    feeder) until SIGINT or SIGTERM, restarting any that dies; then stop them all."""
    global _LIBC
    if sys.platform.startswith("linux") and _LIBC is None:
        import ctypes

        _LIBC = ctypes.CDLL(None, use_errno=True)
    env = child_env(settings, data_dir)
    python = [sys.executable, "-m", "irrigation"]
    base_url = api_url(settings)
    # The simulated controllers answer on both transports; the worker uses one of them. Its
    # flow meters feed the demo site's flow sensors through the API, with the demo key (read
    # from its file, not from the command line).
    simulator = _Child(
        "simulator",
        [
            *python,
            "simulator",
            "--port",
            str(settings.simulator_port),
            "--mqtt-url",
            settings.mqtt_url,
            "--api-url",
            base_url,
            "--api-key-file",
            str(data_dir / "demo_key"),
        ],
    )
    api = _Child("api", [*python, "serve"])
    # Pump jobs in a process of their own: no import or webhook shares its loop, its
    # database pool or its job slots (README, "Workers and queues").
    pumps_worker = _Child("pumps worker", [*python, "worker", "--queues", "pumps"])
    # Started once the API is ready, like the feeder: one process fewer competing with the
    # API's start on a small machine, and nothing of its queues is urgent.
    other_worker = _Child(
        "automation,bulk worker", [*python, "worker", "--queues", "automation,bulk"]
    )
    bridge = _Child("mqtt bridge", [*python, "mqtt"])
    simulator_url = f"http://127.0.0.1:{settings.simulator_port}"
    # Started once the API is ready (it exits at once on an API it cannot reach); it
    # reads the key from data_dir/demo_key, not from its command line.
    feeder = _Child(
        "demo feeder",
        [*python, "demo", "--url", base_url, "--simulator", simulator_url, "--quiet"],
    )
    children = [simulator, api, pumps_worker, bridge]
    signals = 0

    def on_signal(*_: Any) -> None:
        nonlocal signals
        signals += 1

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    announced = hinted = False
    try:
        while not signals:
            now = time.monotonic()
            for child in children:
                child.reap(now)
                if child.proc is None and now >= child.restart_at and not signals:
                    child.start(env)
            if not announced:
                ready, detail = _readiness(base_url)
                if ready:
                    announced = True
                    children.append(other_worker)
                    other_worker.start(env)
                    if demo:
                        children.append(feeder)
                        feeder.start(env)
                    _announce(
                        settings, base_url, key, embedded, data_dir, now - started, demo, zone_id
                    )
                elif not hinted and now - started > 30:
                    hinted = True
                    typer.echo(f"still waiting for {base_url}/readyz: {detail}", err=True)
            time.sleep(0.25)
    finally:
        # API and worker first (they may still talk to the devices), the simulator last;
        # a second Ctrl-C kills whatever is left at once.
        _stop([feeder, api, pumps_worker, other_worker, bridge], 6.0, lambda: signals > 1)
        _stop([simulator], 4.0, lambda: signals > 1)


def _stop(children: list[_Child], timeout: float, hurry: Callable[[], bool]) -> None:
    for child in children:
        if child.running and child.proc is not None:
            child.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(c.running for c in children) and time.monotonic() < deadline and not hurry():
        time.sleep(0.05)
    for child in children:
        if child.proc is None:
            continue
        if child.running:
            typer.echo(f"{child.name} did not stop in time; killing it", err=True)
            child.proc.kill()
        child.proc.wait()


def dashboard_link(base_url: str, key: str) -> str:
    """The dashboard, signed in: the page keeps the key from the fragment (which browsers
    never send to the server) in its session storage and takes it out of the address bar."""
    return f"{base_url}/#key={quote(key, safe='')}"


def _readiness(base_url: str) -> tuple[bool, str]:
    try:
        response = httpx.get(f"{base_url}/readyz", timeout=1)
    except httpx.HTTPError as exc:
        return False, type(exc).__name__
    return response.status_code == 200, response.text


def _announce(
    settings: Settings,
    base_url: str,
    key: str,
    embedded: list[str],
    data_dir: Path,
    took_s: float,
    demo: bool = False,
    zone_id: uuid.UUID | None = None,
) -> None:
    where = f" (embedded {' and '.join(embedded)} in {data_dir})" if embedded else ""
    simulator_url = f"http://127.0.0.1:{settings.simulator_port}"
    typer.echo(
        "\n".join(
            [
                "",
                f"irrigation is up in {took_s:.1f} s{where}",
                f"  dashboard    {dashboard_link(base_url, key)}",
                f"  API          {base_url}",
                f"  Swagger UI   {base_url}/docs",
                f"  simulator    {simulator_url}  (physical truth: {simulator_url}/truth)",
                f"  MQTT         {BrokerAddress.parse(settings.mqtt_url).url()}  readings: "
                f"{settings.mqtt_topic_root}/SITE_ID/sensors/SENSOR_ID/reading",
                f"  MQTT bridge  http://127.0.0.1:{settings.mqtt_bridge_port}/readyz",
                f"  pumps        over {settings.gateway.upper()}"
                + (
                    f": {settings.mqtt_topic_root}/SITE_ID/devices/HARDWARE_ID/cmd|ack|state"
                    if settings.gateway == "mqtt"
                    else f" at {settings.gateway_url}"
                ),
                f"  admin key    {key}",
                "",
                f'  curl -H "Authorization: Bearer {key}" {base_url}/v1/pumps',
                "",
                *(
                    [
                        "  The demo feeder sends a soil-moisture reading every 5 s; the "
                        "demo zone's rule and",
                        "  schedule water it (each watering is printed). Why they did or did not:",
                        f'  curl -H "Authorization: Bearer {key}" '
                        f"{base_url}/v1/zones/{zone_id}/decisions",
                        "",
                    ]
                    if demo and zone_id is not None
                    else []
                ),
                "Ctrl-C stops everything.",
            ]
        )
    )
