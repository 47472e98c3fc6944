"""A broker of the test's own: Mosquitto started from the project's configuration
(deploy/mosquitto/mosquitto.conf) on a free port with a temporary persistence directory,
or, on a machine without Mosquitto (or with IRRIGATION_TEST_MQTT=embedded), the embedded
amqtt broker. Never the machine's broker on 1883: its default configuration drops QoS 1
messages. `restart()` stops it cleanly (Mosquitto saves its sessions) and starts it again
on the same port; `kill()` is a power cut."""

import ctypes
import getpass
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import paho.mqtt.client as paho

from irrigation.stack import free_port, port_answers

ROOT = Path(__file__).resolve().parents[2]
PROJECT_CONFIG = ROOT / "deploy" / "mosquitto" / "mosquitto.conf"
MOSQUITTO = shutil.which("mosquitto") or (
    "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
)
# The lines of the project's file that name docker-compose's paths and authentication.
REPLACED = {
    "listener",
    "persistence_location",
    "password_file",
    "acl_file",
    "allow_anonymous",
    "log_dest",
    "pid_file",
    "user",
}
BrokerKind = Literal["mosquitto", "amqtt"]


def _die_with_parent() -> None:
    """In the broker's process before exec: SIGTERM it when the test run dies, even killed."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def default_kind() -> BrokerKind:
    if os.environ.get("IRRIGATION_TEST_MQTT") == "embedded" or MOSQUITTO is None:
        return "amqtt"
    return "mosquitto"


def mosquitto_config(port: int, directory: Path, auth: tuple[Path, Path] | None = None) -> str:
    """The project's configuration with this broker's listener, directory and (unless
    `auth` = (password file, ACL file)) anonymous access."""
    kept = [
        line
        for line in PROJECT_CONFIG.read_text().splitlines()
        if line.split(maxsplit=1)[:1] and line.split()[0] not in REPLACED
    ]
    own = [
        f"listener {port} 127.0.0.1",
        f"persistence_location {directory}/",
        f"log_dest file {directory}/mosquitto.log",
        # Run as root, Mosquitto would drop to its own user and could not write here.
        f"user {getpass.getuser()}",
    ]
    if auth is None:
        own.append("allow_anonymous true")
    else:
        own += ["allow_anonymous false", f"password_file {auth[0]}", f"acl_file {auth[1]}"]
    return "\n".join(kept + own) + "\n"


class Broker:
    def __init__(
        self,
        directory: Path,
        kind: BrokerKind | None = None,
        auth: tuple[Path, Path] | None = None,
    ) -> None:
        self.kind: BrokerKind = kind or default_kind()
        self.directory = directory
        self.port = free_port()
        self.auth = auth
        self.proc: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)
        self.config = directory / "mosquitto.conf"
        if self.kind == "mosquitto":
            self.config.write_text(mosquitto_config(self.port, directory, auth))

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def keeps_sessions_across_restarts(self) -> bool:
        return self.kind == "mosquitto"

    def start(self) -> None:
        if self.kind == "mosquitto":
            assert MOSQUITTO is not None
            command = [MOSQUITTO, "-c", str(self.config)]
        else:
            command = [sys.executable, "-m", "irrigation.mqtt.broker", "--port", str(self.port)]
        log = (self.directory / f"{self.kind}.out").open("ab")
        self.proc = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
        )
        log.close()
        deadline = time.monotonic() + 15
        while not port_answers("127.0.0.1", self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.kind} did not start: {self.output()[-2000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def output(self) -> str:
        text = ""
        for name in (f"{self.kind}.out", "mosquitto.log"):
            path = self.directory / name
            if path.exists():
                text += path.read_text(errors="replace")
        return text


@contextmanager
def running_broker(
    directory: Path, kind: BrokerKind | None = None, auth: tuple[Path, Path] | None = None
) -> Iterator[Broker]:
    broker = Broker(directory, kind, auth)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def publish_many(
    url: str,
    messages: Iterator[tuple[str, bytes]] | list[tuple[str, bytes]],
    *,
    qos: int = 1,
    username: str | None = None,
    password: str | None = None,
    timeout_s: float = 120,
) -> int:
    """Publish as fast as the broker acknowledges (paho's own network thread, 1,000 in
    flight), and return once every message is acknowledged; returns how many."""
    host, port = url.removeprefix("mqtt://").rsplit(":", 1)
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
    if username:
        client.username_pw_set(username, password)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    connected = threading.Event()
    client.on_connect = lambda *_: connected.set()
    client.connect(host, int(port))
    client.loop_start()
    deadline = time.monotonic() + timeout_s
    # A publish before the broker's CONNACK is refused ("not currently connected").
    if not connected.wait(10):
        client.loop_stop()
        raise TimeoutError(f"no CONNACK from {url} within 10 s")
    waiting: deque[paho.MQTTMessageInfo] = deque()

    def settle(info: paho.MQTTMessageInfo) -> None:
        info.wait_for_publish(max(0.1, deadline - time.monotonic()))
        if not info.is_published():
            raise TimeoutError(f"message {info.mid} not acknowledged by the broker")

    count = 0
    try:
        for topic, payload in messages:
            # Packet ids are 16 bits: no more than 20,000 queued ahead of the broker.
            if len(waiting) >= 20_000:
                settle(waiting.popleft())
            waiting.append(client.publish(topic, payload, qos=qos))
            count += 1
        while waiting:
            settle(waiting.popleft())
    finally:
        client.disconnect()
        client.loop_stop()
    return count
