"""The MQTT readings bridge against the project's Mosquitto (tests/support/mqtt.py): what an
outside client publishes lands with the same checks and counts as over HTTP, bad input is
quarantined and never stops the bridge, and nothing acknowledged is lost."""

import asyncio
import shutil
import uuid
from collections import Counter
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from irrigation.settings import Settings
from tests.ingest.mqtt_helpers import (
    batch_topic,
    dumps,
    moisture_sensor,
    mqtt_jobs,
    quarantine,
    reading,
    running_bridge,
    single_topic,
    site_id,
    stored_readings,
)
from tests.support.api import Headers
from tests.support.feed import events
from tests.support.mqtt import Broker, publish_many
from tests.support.polling import wait_for

MOSQUITTO_PUB = shutil.which("mosquitto_pub")


async def mosquitto_pub(broker: Broker, topic: str, *, message: bytes, lines: bool = False) -> None:
    """Publish with Mosquitto's own client (QoS 1): `lines` sends each line as a message."""
    assert MOSQUITTO_PUB is not None
    args = [MOSQUITTO_PUB, "-h", "127.0.0.1", "-p", str(broker.port), "-q", "1", "-t", topic]
    args += ["-l"] if lines else ["-s"]
    proc = await asyncio.create_subprocess_exec(
        *args, stdin=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate(message)
    assert proc.returncode == 0, err.decode()


async def _two_sites(
    client: httpx.AsyncClient, admin: Headers, other_admin: Headers
) -> tuple[str, list[str], str, str]:
    site_a = await site_id(client, admin)
    sensors = [await moisture_sensor(client, admin) for _ in range(2)]
    site_b = await site_id(client, other_admin)
    other_sensor = await moisture_sensor(client, other_admin)
    return site_a, sensors, site_b, other_sensor


@pytest.mark.skipif(MOSQUITTO_PUB is None, reason="needs mosquitto_pub")
async def test_readings_published_by_mosquitto_pub_land_with_exact_counts_per_reason(
    client: httpx.AsyncClient,
    admin: Headers,
    other_admin: Headers,
    mqtt_settings: Settings,
    mqtt_broker: Broker,
) -> None:
    settings = mqtt_settings.model_copy(update={"mqtt_max_payload_bytes": 1024})
    site_a, (s1, s2), site_b, b_sensor = await _two_sites(client, admin, other_admin)
    one = single_topic(settings, site_a, s1)
    good = [reading(40 + i, seconds_ago=100 + i) for i in range(5)]
    too_large = b'{"ts": "' + b"x" * 2000 + b'"}'
    async with running_bridge(settings):
        # Five good readings, one line each, and the first again: a duplicate.
        lines = b"\n".join(dumps(r) for r in [*good, good[0]]) + b"\n"
        await mosquitto_pub(mqtt_broker, one, message=lines, lines=True)
        for bad in (
            reading(unit="F"),  # invalid_unit
            reading(150),  # out_of_range
            reading(seconds_ago=-3600),  # invalid_timestamp
            reading(quality=10),  # low_quality
            {"ts": reading()["ts"], "value": "wet"},  # parse_error: a reading of the wrong type
        ):
            await mosquitto_pub(mqtt_broker, one, message=dumps(bad))
        # The other site's sensor, on this site's topic: unknown here.
        await mosquitto_pub(
            mqtt_broker, single_topic(settings, site_a, b_sensor), message=dumps(reading())
        )
        for payload in (b"hello", b"\xff\xfe\x00garbage", too_large):
            await mosquitto_pub(mqtt_broker, one, message=payload)  # parse_error each
        await mosquitto_pub(
            mqtt_broker, single_topic(settings, site_a, "not-a-sensor"), message=dumps(reading())
        )
        batch = [
            {"sensor_id": s2, **reading(20)},
            {"sensor_id": s2, **reading(21, seconds_ago=30)},
            {"sensor_id": str(uuid.uuid4()), **reading()},  # unknown_sensor
            {"sensor_id": s2, "value": 3},  # parse_error: no ts
        ]
        await mosquitto_pub(
            mqtt_broker, batch_topic(settings, site_a), message=dumps({"readings": batch})
        )
        await mosquitto_pub(
            mqtt_broker, batch_topic(settings, site_a), message=dumps({"readings": []})
        )  # parse_error: a broken envelope
        # Topics of no known site.
        await mosquitto_pub(mqtt_broker, batch_topic(settings, "farm-7"), message=b"{}")
        await mosquitto_pub(
            mqtt_broker, single_topic(settings, str(uuid.uuid4()), s1), message=dumps(reading())
        )
        await mosquitto_pub(
            mqtt_broker, single_topic(settings, site_b, b_sensor), message=dumps(reading())
        )

        expected_items = 6 + 5 + 1 + 3 + 1 + 4 + 1 + 2 + 1

        async def all_counted() -> Any:
            jobs = await mqtt_jobs(settings.effective_database_url)
            return sum(j["total"] for j in jobs.values()) >= expected_items and jobs

        jobs = await wait_for(all_counted, timeout_s=30)

    db = settings.effective_database_url
    assert {k: v["total"] for k, v in jobs.items()} == {site_a: 21, site_b: 1, None: 2}
    assert jobs[site_a]["inserted"] == 7
    assert jobs[site_a]["duplicates"] == 1
    assert jobs[site_a]["quarantined"] == 13
    assert jobs[site_b]["inserted"] == 1
    assert await stored_readings(db, [s1]) == 5
    assert await stored_readings(db, [s2]) == 2
    assert await stored_readings(db, [b_sensor]) == 1

    items = await quarantine(db)
    assert {item["source"] for item in items} == {"mqtt"}
    by_site = Counter((item["site_id"], item["reason"]) for item in items)
    assert by_site == {
        (site_a, "invalid_unit"): 1,
        (site_a, "out_of_range"): 1,
        (site_a, "invalid_timestamp"): 1,
        (site_a, "low_quality"): 1,
        (site_a, "unknown_sensor"): 2,
        (site_a, "parse_error"): 7,
        (None, "parse_error"): 2,
    }
    details = {item["detail"] for item in items if item["reason"] == "parse_error"}
    assert "payload is not UTF-8" in details
    assert any(d.startswith("payload is not JSON") for d in details)
    assert f"payload of {len(too_large)} bytes is above the limit of 1024" in details
    assert "the topic names no sensor" in details
    assert "the topic names no site" in details
    # A reading of the wrong shape is kept as the item it would be (a reviewer can fix it).
    (wrong_type,) = [i for i in items if i["raw"].get("value") == "wet"]
    assert wrong_type["raw"]["sensor_id"] == s1
    # A whole message: its topic and the first 1 KiB of its payload.
    (too_large_item,) = [i for i in items if "above the limit" in i["detail"]]
    assert too_large_item["raw"]["topic"] == one
    assert len(too_large_item["raw"]["payload"]) == 1024
    assert too_large_item["raw"]["payload_bytes"] == len(too_large)
    no_site = {i["raw"]["topic"] for i in items if i["site_id"] is None}
    assert batch_topic(settings, "farm-7") in no_site


async def test_the_hot_cache_latest_value_and_live_feed_follow_mqtt_readings(
    client: httpx.AsyncClient,
    admin: Headers,
    mqtt_settings: Settings,
    mqtt_broker: Broker,
    redis: aioredis.Redis,
) -> None:
    """The same write path as HTTP: the readings reach the hot cache behind /latest, and
    the site's live feed (the reading, then its batch's job)."""
    site = await site_id(client, admin)
    sensor = await moisture_sensor(client, admin)
    async with running_bridge(mqtt_settings):
        await asyncio.to_thread(
            publish_many,
            mqtt_broker.url,
            [(single_topic(mqtt_settings, site, sensor), dumps(reading(33.5, seconds_ago=5)))],
        )

        # The bridge caches after its commit: the database may answer first.
        async def latest() -> Any:
            response = await client.get(f"/v1/sensors/{sensor}/latest", headers=admin)
            body = response.json()
            return body["value"] == 33.5 and body["source"] == "cache" and body

        body = await wait_for(latest)
    assert body["source"] == "cache"
    found = await events(redis, mqtt_settings.redis_namespace, site)
    assert [e["type"] for e in found] == ["reading", "ingest_job"]
    assert (found[0]["data"]["sensor_id"], found[0]["data"]["value"]) == (sensor, 33.5)
    assert found[1]["data"]["source"] == "mqtt"
