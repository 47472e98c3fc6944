"""Hot-cache members: a row's bytes on write, the same JSON as before on read, and members
written in the earlier text forms still shown."""

import uuid
from datetime import UTC, datetime, timedelta, timezone

from irrigation.ingest.cache import _unpack
from irrigation.ingest.rows import TAIL, encode
from irrigation.ingest.schemas import ReadingIn


def test_a_member_reads_back_as_the_reading_in_utc() -> None:
    ts = datetime(2026, 11, 23, 7, 30, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
    reading = ReadingIn(sensor_id=uuid.uuid4(), ts=ts, value=41.25, quality=87)
    (row,) = encode([reading]).rows
    assert _unpack(row[TAIL]) == {
        "ts": "2026-11-23T05:30:00.123456+00:00",
        "value": 41.25,
        "quality": 87,
    }


def test_members_of_the_earlier_text_forms_are_still_shown() -> None:
    old = b'{"ts": "2026-11-23T05:30:00+00:00", "value": 40.0, "quality": 100}'
    assert _unpack(old) == {"ts": "2026-11-23T05:30:00+00:00", "value": 40.0, "quality": 100}
    compact = f"{datetime(2026, 11, 23, 5, 30, tzinfo=UTC).timestamp()!r}|40.5|90"
    assert _unpack(compact.encode()) == {
        "ts": "2026-11-23T05:30:00+00:00",
        "value": 40.5,
        "quality": 90,
    }
