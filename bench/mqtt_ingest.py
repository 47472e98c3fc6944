"""MQTT ingestion benchmark: readings/s from the first publish to the last commit through the
bridge (`irrigation mqtt`), beside `POST /v1/readings` measured in the same run.

    .venv/bin/python bench/mqtt_ingest.py            # 200,000 readings per variant
    .venv/bin/python bench/mqtt_ingest.py --quick    # 20,000 (batches) / 10,000 (single)

Sets up everything itself: a fresh database `irrigation_bench_mqtt` (dropped at the end),
migrations, a site with an admin key, a Mosquitto of its own from the project's
configuration (deploy/mosquitto/mosquitto.conf) on a free port with a temporary persistence
directory, the API (`irrigation serve --workers 1`) and the bridge (`irrigation mqtt`) as
child processes; over the API 100 soil-moisture sensors. Then, each variant on emptied
tables:

- **http**: one client posts pre-serialized 10,000-reading batches back to back over one
  keep-alive connection; readings/s = readings / (last answer - first request).
- **mqtt batch**: the same bodies published at QoS 1 to `irrigation/{site}/readings` (a
  paho client in a process of its own, up to 1,000 unacknowledged); readings/s = readings /
  (the moment the bridge's jobs count them all inserted - the first publish).
- **mqtt single**: one message per reading on `irrigation/{site}/sensors/{id}/reading`.

The MQTT variants run once per `--protocols` value (the bridge's IRRIGATION_MQTT_PROTOCOL,
a fresh bridge each): paho decodes MQTT 5's properties of every message.

Each service side is one Python process (the API with one worker, the bridge). Peak RSS of
the API and of the bridge: psutil, every 100 ms, over their runs. Ratio = MQTT / HTTP.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import multiprocessing
import platform
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
import paho.mqtt.client as paho
import psutil  # type: ignore[import-untyped]
from common import ROOT, Stack, free_port, wait_http

SENSORS = 100
BATCH = 10_000
CONFIG = ROOT / "deploy" / "mosquitto" / "mosquitto.conf"
REPLACED = {"listener", "persistence_location", "password_file", "acl_file", "allow_anonymous"}
REPLACED |= {"log_dest", "user"}


class Mosquitto:
    """The project's configuration, on a free port, persistence in a temporary directory."""

    def __init__(self) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.dir = Path(tempfile.mkdtemp(prefix="bench-mosquitto-"))
        self.port = free_port()
        kept = [
            line
            for line in CONFIG.read_text().splitlines()
            if line.split() and line.split()[0] not in REPLACED
        ]
        own = [
            f"listener {self.port} 127.0.0.1",
            f"persistence_location {self.dir}/",
            "allow_anonymous true",
            f"user {getpass.getuser()}",
        ]
        (self.dir / "m.conf").write_text("\n".join(kept + own) + "\n")
        self.proc = subprocess.Popen(
            [binary, "-c", str(self.dir / "m.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.3)

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


def readings(sensors: list[str], count: int, offset_days: float) -> list[dict[str, object]]:
    """`count` distinct readings over the sensors, one second apart per sensor."""
    start = datetime.now(UTC) - timedelta(days=offset_days)
    return [
        {
            "sensor_id": sensors[i % len(sensors)],
            "ts": (start + timedelta(seconds=i // len(sensors))).isoformat(),
            "value": float(5 + i % 90),
        }
        for i in range(count)
    ]


def _publish(port: int, messages: list[tuple[str, bytes]], started: multiprocessing.Value) -> None:  # type: ignore[valid-type]
    """In a process of its own: publish at QoS 1, at most 1,000 unacknowledged."""
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
    client.max_inflight_messages_set(1000)
    client.connect("127.0.0.1", port)
    client.loop_start()
    waiting: deque[paho.MQTTMessageInfo] = deque()
    started.value = time.time()  # type: ignore[attr-defined]
    for topic, payload in messages:
        if len(waiting) >= 20_000:  # 16-bit packet ids
            waiting.popleft().wait_for_publish(120)
        waiting.append(client.publish(topic, payload, qos=1))
    while waiting:
        waiting.popleft().wait_for_publish(120)
    client.disconnect()
    client.loop_stop()


class RssPeak:
    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                procs = [self.process, *self.process.children(recursive=True)]
                self.peak = max(self.peak, sum(p.memory_info().rss for p in procs))
            except psutil.Error:
                pass
            time.sleep(0.1)

    def __enter__(self) -> RssPeak:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Result:
    name: str
    readings: int
    seconds: float
    rss: int
    messages: int

    @property
    def rate(self) -> float:
        return self.readings / self.seconds


async def reset(conn: asyncpg.Connection) -> None:
    await conn.execute(
        "TRUNCATE sensor_readings, reading_rollups_hourly, quarantined_readings, ingestion_jobs"
    )
    await conn.execute("CHECKPOINT")


async def http_run(url: str, key: str, bodies: list[bytes], api_pid: int) -> Result:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    total = 0
    with RssPeak(api_pid) as rss:
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120) as client:
            started = time.perf_counter()
            for body in bodies:
                response = await client.post("/v1/readings", content=body)
                response.raise_for_status()
                total += response.json()["inserted"]
            took = time.perf_counter() - started
    return Result("http (10,000 a request)", total, took, rss.peak, len(bodies))


async def mqtt_run(
    name: str,
    conn: asyncpg.Connection,
    port: int,
    messages: list[tuple[str, bytes]],
    total: int,
    bridge_pid: int,
) -> Result:
    started = multiprocessing.get_context("spawn").Value("d", 0.0)
    publisher = multiprocessing.get_context("spawn").Process(
        target=_publish, args=(port, messages, started)
    )
    with RssPeak(bridge_pid) as rss:
        publisher.start()
        while True:
            inserted = await conn.fetchval(
                "SELECT coalesce(sum(inserted), 0) FROM ingestion_jobs WHERE source = 'mqtt'"
            )
            if inserted >= total:
                break
            if not publisher.is_alive() and publisher.exitcode:
                raise RuntimeError(f"the publisher failed ({publisher.exitcode})")
            await asyncio.sleep(0.02)
        done = time.time()
    publisher.join(60)
    return Result(name, int(inserted), done - started.value, rss.peak, len(messages))


async def run(args: argparse.Namespace) -> None:
    broker = Mosquitto()
    try:
        async with Stack("irrigation_bench_mqtt") as stack:
            key = stack.create_key("bench-mqtt")
            api, url = await stack.start_api(workers=1)
            async with httpx.AsyncClient(
                base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30
            ) as client:
                site = (await client.get("/v1/sites/current")).json()["id"]
                zone = (
                    await client.post("/v1/zones", json={"name": "Bench", "timezone": "UTC"})
                ).json()["id"]
                sensors = []
                for i in range(SENSORS):
                    body = {"zone_id": zone, "name": f"s{i}", "kind": "soil_moisture", "unit": "%"}
                    sensors.append((await client.post("/v1/sensors", json=body)).json()["id"])
            conn = await stack.connect()
            try:
                results = []
                batch_items = readings(sensors, args.total, 3)
                bodies = [
                    json.dumps({"readings": batch_items[i : i + BATCH]}).encode()
                    for i in range(0, len(batch_items), BATCH)
                ]
                batch_topic = f"irrigation/{site}/readings"
                singles = [
                    (
                        f"irrigation/{site}/sensors/{r['sensor_id']}/reading",
                        json.dumps({k: v for k, v in r.items() if k != "sensor_id"}).encode(),
                    )
                    for r in readings(sensors, args.single_total, 2)
                ]
                for _ in range(args.rounds):
                    await reset(conn)
                    results.append(await http_run(url, key, bodies, api.pid))
                    for protocol in args.protocols.split(","):
                        bridge_port = free_port()
                        bridge = stack.spawn(
                            "bridge",
                            "mqtt",
                            IRRIGATION_MQTT_URL=broker.url,
                            IRRIGATION_MQTT_PROTOCOL=protocol,
                            IRRIGATION_MQTT_BRIDGE_PORT=str(bridge_port),
                            IRRIGATION_MQTT_INSTANCE=f"bench-{uuid.uuid4().hex[:6]}",
                        )
                        await wait_http(f"http://127.0.0.1:{bridge_port}/readyz", bridge)
                        await reset(conn)
                        results.append(
                            await mqtt_run(
                                f"mqtt {protocol}, batch topic (10,000 a message)",
                                conn,
                                broker.port,
                                [(batch_topic, b) for b in bodies],
                                args.total,
                                bridge.pid,
                            )
                        )
                        await reset(conn)
                        results.append(
                            await mqtt_run(
                                f"mqtt {protocol}, single-reading topic",
                                conn,
                                broker.port,
                                singles,
                                args.single_total,
                                bridge.pid,
                            )
                        )
                        stack.stop(bridge)
            finally:
                await conn.close()
    finally:
        broker.stop()
    report(results)


def report(results: list[Result]) -> None:
    http = [r for r in results if r.name.startswith("http")]
    baseline = sorted(r.rate for r in http)[len(http) // 2]
    cpu = platform.processor() or platform.machine()
    print(f"\nmachine: {psutil.cpu_count()} cores ({cpu}), load {psutil.getloadavg()[0]:.1f}")
    print("| variant | readings | messages | time | readings/s | / HTTP | peak RSS (service) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r.name} | {r.readings:,} | {r.messages:,} | {r.seconds:.2f} s | "
            f"{r.rate:,.0f} | {r.rate / baseline:.2f} | {r.rss / 2**20:.0f} MB |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--total", type=int, default=200_000, help="readings per batch variant")
    parser.add_argument("--single-total", type=int, default=100_000, help="single-reading messages")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--protocols", default="5,3.1.1", help="the bridge's MQTT versions to measure"
    )
    parser.add_argument("--quick", action="store_true", help="20,000 / 10,000 readings")
    args = parser.parse_args()
    if args.quick:
        args.total, args.single_total = 20_000, 10_000
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
