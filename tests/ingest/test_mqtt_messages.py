"""Messages into per-site batches (ingest/mqtt_messages.py), without a broker: each message
judged on its own, items numbered in the order they came, bad messages kept whole."""

import json
import uuid
from datetime import UTC, datetime

from irrigation.ingest.models import QuarantineReason
from irrigation.ingest.mqtt_messages import RAW_PAYLOAD_BYTES, Batch, Decoder
from irrigation.ingest.validation import SensorSpec, check_items
from irrigation.mqtt import topics

SITE, SENSOR = uuid.uuid4(), uuid.uuid4()
NOW = datetime.now(UTC)


def _reading(value: float, **extra: object) -> bytes:
    return json.dumps({"ts": NOW.isoformat(), "value": value, **extra}).encode()


def test_items_of_many_messages_keep_their_order_and_their_own_reasons() -> None:
    decoder = Decoder("root", 4096)
    batch = Batch()
    one = topics.sensor_reading("root", SITE, SENSOR)
    assert decoder.add(batch, one, _reading(1)) == 1
    assert decoder.add(batch, one, b"{not json") == 1
    items = [
        {"sensor_id": str(SENSOR), "ts": NOW.isoformat(), "value": 2},
        {"sensor_id": str(SENSOR), "value": 3},
    ]
    assert (
        decoder.add(batch, topics.readings("root", SITE), json.dumps({"readings": items}).encode())
        == 2
    )
    assert decoder.add(batch, one, _reading(500)) == 1
    assert batch.items == 5
    gathered = batch.sites[SITE].gathered()
    assert gathered.positions == [0, 2, 4]
    checked = check_items(
        gathered, {SENSOR: SensorSpec("%", 0, 100)}, NOW, NOW - NOW.replace(year=2000)
    )
    assert checked.accepted.values == [1, 2]
    reasons = {r.index: r.reason for r in checked.rejected}
    assert reasons == {
        1: QuarantineReason.parse_error,
        3: QuarantineReason.parse_error,
        4: QuarantineReason.out_of_range,
    }


def test_a_bad_message_is_kept_whole_with_its_topic_and_the_start_of_its_payload() -> None:
    decoder = Decoder("root", 100_000)
    batch = Batch()
    topic = topics.sensor_reading("root", SITE, SENSOR)
    payload = b"\x80" + b"x" * 5000
    decoder.add(batch, topic, payload)
    (rejected,) = batch.sites[SITE].rejected
    assert rejected.detail == "payload is not UTF-8"
    assert rejected.raw["topic"] == topic
    assert rejected.raw["payload_bytes"] == len(payload)
    assert len(rejected.raw["payload"]) == RAW_PAYLOAD_BYTES


def test_topics_that_name_no_site_or_sensor() -> None:
    decoder = Decoder("root", 4096)
    batch = Batch()
    decoder.add(batch, "root/not-a-site/readings", b"{}")
    decoder.add(batch, topics.sensor_reading("root", SITE, "nope"), _reading(1))
    assert [r.detail for r in batch.sites[None].rejected] == ["the topic names no site"]
    assert [r.detail for r in batch.sites[SITE].rejected] == ["the topic names no sensor"]


def test_a_single_reading_may_not_name_another_sensor_than_its_topic() -> None:
    decoder = Decoder("root", 4096)
    batch = Batch()
    decoder.add(batch, topics.sensor_reading("root", SITE, SENSOR), _reading(1, sensor_id="x"))
    (rejected,) = batch.sites[SITE].rejected
    assert rejected.reason == QuarantineReason.parse_error
    # Kept as the reading it would be, with the topic's sensor, for a reviewer to correct.
    assert rejected.raw["sensor_id"] == str(SENSOR)
