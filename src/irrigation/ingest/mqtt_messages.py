"""MQTT messages into a batch per site: each message's topic and payload judged on its own, so
no message can sink another. What is wrong with a whole message (a topic that names no site
or sensor, a payload that is too large, not UTF-8, not JSON, not a reading or batch) is one
parse_error item with the topic and the payload's first 1 KiB; what is wrong with one item
of a batch message is that item's parse_error, as over HTTP."""

import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NotRequired

from pydantic import ConfigDict, TypeAdapter, ValidationError
from typing_extensions import TypedDict

from irrigation.ingest.models import QuarantineReason
from irrigation.ingest.rows import Columns
from irrigation.ingest.schemas import Quality, ReadingIn, Unit, Value
from irrigation.ingest.validation import Gathered, Rejected, parse_batch
from irrigation.mqtt.topics import parse_reading_topic

RAW_PAYLOAD_BYTES = 1024
"""How much of a bad message's payload its quarantined item keeps."""


class SingleReading(TypedDict):
    """The payload of `{root}/{site_id}/sensors/{sensor_id}/reading`: the sensor is the
    topic's."""

    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]
    ts: datetime
    value: Value
    unit: NotRequired[Unit]
    quality: NotRequired[Quality]


_single = TypeAdapter(SingleReading)
_uuids: dict[str, uuid.UUID | None] = {}
"""Topic levels already read as ids: a site has ~100 sensors, each sending every few
seconds, and `uuid.UUID(text)` is Python code."""
_MAX_REMEMBERED_IDS = 100_000


def _uuid(text: str) -> uuid.UUID | None:
    known = _uuids.get(text, False)
    if known is not False:
        return known  # type: ignore[return-value]
    try:
        parsed: uuid.UUID | None = uuid.UUID(text)
    except ValueError:
        parsed = None
    if len(_uuids) >= _MAX_REMEMBERED_IDS:
        _uuids.clear()
    _uuids[text] = parsed
    return parsed


@dataclass
class SiteItems:
    """One site's items of a batch, numbered in the order they came."""

    sensors: list[bytes] = field(default_factory=list)
    times: list[datetime] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    qualities: list[int] = field(default_factory=list)
    units: list[str | None] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    messages: list[tuple[str, bytes]] = field(default_factory=list)
    """Each message's topic and payload (the objects the bridge holds anyway): if the site
    turns out not to exist, each message is quarantined whole."""

    def __len__(self) -> int:
        return len(self.positions) + len(self.rejected)

    def gathered(self) -> Gathered:
        columns = Columns(self.sensors, self.times, self.values, self.qualities, self.units)
        return Gathered(columns, self.positions, self.rejected)

    def reading(
        self, sensor: bytes, ts: datetime, value: float, quality: int, unit: str | None
    ) -> None:
        self.positions.append(len(self))
        self.sensors.append(sensor)
        self.times.append(ts)
        self.values.append(value)
        self.qualities.append(quality)
        self.units.append(unit)

    def reject(self, raw: Any, detail: str, reason: QuarantineReason | None = None) -> None:
        self.rejected.append(
            Rejected(len(self), raw, reason or QuarantineReason.parse_error, detail)
        )

    def columns(self, columns: Columns) -> None:
        start = len(self)
        self.positions.extend(range(start, start + len(columns)))
        self.sensors.extend(columns.sensors)
        self.times.extend(columns.times)
        self.values.extend(columns.values)
        self.qualities.extend(columns.qualities)
        self.units.extend(columns.units)

    def items(self, parsed: list[ReadingIn | Rejected]) -> None:
        for item in parsed:
            if isinstance(item, ReadingIn):
                self.reading(item.sensor_id.bytes, item.ts, item.value, item.quality, item.unit)
            else:
                self.reject(item.raw, item.detail, item.reason)


@dataclass
class Batch:
    """What the bridge gathered since its last flush, by site (None: messages whose topic
    names no site)."""

    sites: dict[uuid.UUID | None, SiteItems] = field(default_factory=dict)
    items: int = 0

    def site(self, site_id: uuid.UUID | None) -> SiteItems:
        items = self.sites.get(site_id)
        if items is None:
            items = self.sites[site_id] = SiteItems()
        return items


def message_raw(topic: str, payload: bytes) -> dict[str, Any]:
    """A whole message as a quarantined item keeps it."""
    return {
        "topic": topic,
        "payload": payload[:RAW_PAYLOAD_BYTES].decode("utf-8", errors="replace"),
        "payload_bytes": len(payload),
    }


class Decoder:
    """Adds each message's items to a batch; never raises on what a message holds."""

    def __init__(self, topic_root: str, max_payload_bytes: int) -> None:
        self.root = topic_root
        self.max_payload_bytes = max_payload_bytes

    def add(self, batch: Batch, topic: str, payload: bytes) -> int:
        """Returns how many items the message added."""
        parts = parse_reading_topic(self.root, topic)
        site_id = _uuid(parts.site) if parts is not None else None
        items = batch.site(site_id)
        before = len(items)
        items.messages.append((topic, payload))
        if parts is None or site_id is None:
            items.reject(message_raw(topic, payload), "the topic names no site")
        elif len(payload) > self.max_payload_bytes:
            items.reject(
                message_raw(topic, payload),
                f"payload of {len(payload)} bytes is above the limit of {self.max_payload_bytes}",
            )
        elif parts.sensor is None:
            self._batch(items, topic, payload)
        else:
            sensor_id = _uuid(parts.sensor)
            if sensor_id is None:
                items.reject(message_raw(topic, payload), "the topic names no sensor")
            else:
                self._single(items, topic, payload, sensor_id)
        added = len(items) - before
        batch.items += added
        return added

    def _single(self, items: SiteItems, topic: str, payload: bytes, sensor_id: uuid.UUID) -> None:
        try:
            reading = _single.validate_json(payload)
        except ValidationError as exc:
            body, problem = _diagnose(payload)
            if not isinstance(body, dict):
                items.reject(message_raw(topic, payload), problem or "payload is not an object")
                return
            # A reading of the wrong shape: kept as the item it would have been, so that a
            # reviewer can correct and approve it.
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ())) or "payload"
            items.reject({**body, "sensor_id": str(sensor_id)}, f"{where}: {first['msg']}")
            return
        items.reading(
            sensor_id.bytes,
            reading["ts"],
            reading["value"],
            reading.get("quality", 100),
            reading.get("unit"),
        )

    def _batch(self, items: SiteItems, topic: str, payload: bytes) -> None:
        try:
            parsed = parse_batch(payload)
        except ValidationError as exc:
            _, problem = _diagnose(payload)
            if problem is None:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first.get("loc", ())) or "payload"
                problem = f"not a batch: {where}: {first['msg']}"
            items.reject(message_raw(topic, payload), problem)
            return
        if isinstance(parsed, Columns):
            items.columns(parsed)
        else:
            items.items(parsed)


def _diagnose(payload: bytes) -> tuple[Any, str | None]:
    """The payload as JSON, or why it is none: not UTF-8, or not JSON."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return None, "payload is not UTF-8"
    try:
        return json.loads(text), None
    except ValueError as exc:
        return None, f"payload is not JSON: {exc}"
