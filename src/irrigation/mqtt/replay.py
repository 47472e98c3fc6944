"""Publishing readings as a device would, for people and tools: `irrigation mqtt-publish FILE`
replays an NDJSON file (one `{sensor_id, ts, value, unit?, quality?}` per line, the import
format), and `irrigation demo --mqtt` sends its readings this way.

Each reading goes to its sensor's topic (the sensor id moves from the payload to the
topic), or, with `batch`, up to that many lines go to the site's batch topic as one
`{"readings": [...]}` message. QoS 1, up to WINDOW messages awaiting the broker's
acknowledgement at once."""

import asyncio
import json
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import aiomqtt

from irrigation.mqtt import topics
from irrigation.mqtt.client import BrokerLink

WINDOW = 500


@dataclass
class Replayed:
    published: int = 0
    """Messages the broker acknowledged."""
    readings: int = 0
    skipped: list[tuple[int, str]] | None = None
    """(line number, why) of the lines that name no sensor, in per-reading mode."""


def single_message(root: str, site_id: object, item: dict[str, Any]) -> tuple[str, bytes]:
    """A reading with its `sensor_id` as the topic and the rest as the payload."""
    body = {k: v for k, v in item.items() if k != "sensor_id"}
    topic = topics.sensor_reading(root, site_id, item["sensor_id"])
    return topic, json.dumps(body).encode()


def messages(
    root: str, site_id: uuid.UUID, lines: Iterable[str], batch: int, replayed: Replayed
) -> Iterator[tuple[str, bytes, int]]:
    """(topic, payload, readings) for each message the lines make."""
    pending: list[Any] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if batch:
            # As it is: the bridge judges (and quarantines) each item.
            pending.append(_loads(line))
            if len(pending) == batch:
                yield (
                    topics.readings(root, site_id),
                    json.dumps({"readings": pending}).encode(),
                    batch,
                )
                pending = []
            continue
        item = _loads(line)
        if not isinstance(item, dict) or not isinstance(item.get("sensor_id"), str):
            replayed.skipped = [*(replayed.skipped or []), (number, "no sensor_id")]
            continue
        yield (*single_message(root, site_id, item), 1)
    if pending:
        yield (
            topics.readings(root, site_id),
            json.dumps({"readings": pending}).encode(),
            len(pending),
        )


def _loads(line: str) -> Any:
    try:
        return json.loads(line)
    except ValueError:
        return line  # the bridge quarantines it as a parse_error


async def replay(
    link: BrokerLink, root: str, site_id: uuid.UUID, lines: Iterable[str], *, batch: int = 0
) -> Replayed:
    replayed = Replayed()
    async with link.connect() as client:
        client.pending_calls_threshold = WINDOW + 1  # aiomqtt warns above its default of 10
        room = asyncio.Semaphore(WINDOW)
        failures: list[BaseException] = []

        async def send(topic: str, payload: bytes, readings: int) -> None:
            try:
                await client.publish(topic, payload, qos=1)
            except aiomqtt.MqttError as exc:
                failures.append(exc)
            else:
                replayed.published += 1
                replayed.readings += readings
            finally:
                room.release()

        async with asyncio.TaskGroup() as group:
            for topic, payload, readings in messages(root, site_id, lines, batch, replayed):
                await room.acquire()
                if failures:
                    room.release()
                    break
                group.create_task(send(topic, payload, readings))
        if failures:
            raise failures[0]
    return replayed
