"""Ingestion through `POST /v1/readings`, and the expected aggregates computed
here from the readings a test inserted (independently of the service's SQL)."""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import httpx

from tests.support.api import Headers


@dataclass(frozen=True)
class Reading:
    sensor_id: str
    ts: datetime
    value: float
    quality: int = 100

    def item(self) -> dict[str, Any]:
        return {
            "sensor_id": self.sensor_id,
            "ts": self.ts.isoformat(),
            "value": self.value,
            "quality": self.quality,
        }


@dataclass(frozen=True)
class Expected:
    count: int
    avg: float
    min: float
    max: float


async def ingest(
    client: httpx.AsyncClient,
    headers: Headers,
    readings: Sequence[Reading],
    *,
    inserted: int | None = None,
) -> dict[str, Any]:
    """Send through the API, as devices do (so the rollups are built by ingestion)."""
    response = await client.post(
        "/v1/readings", json={"readings": [r.item() for r in readings]}, headers=headers
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    summary = {k: v for k, v in body.items() if k != "quarantine"} | {
        "quarantine": body.get("quarantine", [])[:3]
    }
    assert body["quarantined"] == 0, summary
    assert body["inserted"] == (len(readings) if inserted is None else inserted), summary
    return body


def bucket_start(ts: datetime, tz: ZoneInfo, bucket: str) -> datetime:
    """The bucket holding `ts`, as a UTC instant: the local hour or the local day."""
    local = ts.astimezone(tz)
    if bucket == "day":
        return datetime(local.year, local.month, local.day, tzinfo=tz).astimezone(UTC)
    return local.replace(minute=0, second=0, microsecond=0).astimezone(UTC)


def expected_points(
    readings: Iterable[Reading], tz: str, bucket: str, start: datetime, end: datetime
) -> dict[datetime, Expected]:
    zone = ZoneInfo(tz)
    values: dict[datetime, list[float]] = {}
    for r in readings:
        if start <= r.ts < end:
            values.setdefault(bucket_start(r.ts, zone, bucket), []).append(r.value)
    return {
        key: Expected(len(vs), sum(vs) / len(vs), min(vs), max(vs))
        for key, vs in sorted(values.items())
    }


def by_instant(points: list[dict[str, Any]]) -> dict[datetime, dict[str, Any]]:
    out: dict[datetime, dict[str, Any]] = {}
    for p in points:
        moment = datetime.fromisoformat(p["start"]).astimezone(UTC)
        assert moment not in out, f"bucket {p['start']} twice"
        out[moment] = p
    return out


def assert_points(points: list[dict[str, Any]], expected: dict[datetime, Expected]) -> None:
    """Exactly the expected buckets, in order, each with its exact count/min/max and avg."""
    got = by_instant(points)
    assert list(got) == list(expected), (sorted(got), sorted(expected))
    for moment, want in expected.items():
        point = got[moment]
        assert point["count"] == want.count, (moment, point, want)
        assert point["min"] == want.min, (moment, point, want)
        assert point["max"] == want.max, (moment, point, want)
        assert abs(point["avg"] - want.avg) <= 1e-9 * max(1.0, abs(want.avg)), (moment, point)


async def aggregates(
    client: httpx.AsyncClient, headers: Headers, path: str, **params: Any
) -> dict[str, Any]:
    query = {k: v.isoformat() if isinstance(v, datetime) else v for k, v in params.items()}
    response = await client.get(path, params=query, headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body
