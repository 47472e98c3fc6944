"""Hot-cache members: compact on write, the same JSON as before on read, and members
written in the earlier JSON form still shown."""

import uuid
from datetime import datetime, timedelta, timezone

from irrigation.ingest.cache import _member, _unpack
from irrigation.ingest.schemas import ReadingIn


def test_a_member_reads_back_as_the_reading_in_utc() -> None:
    ts = datetime(2026, 11, 23, 7, 30, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
    reading = ReadingIn(sensor_id=uuid.uuid4(), ts=ts, value=41.25, quality=87)
    member = _member(ts.timestamp(), reading)
    assert _unpack(member.encode()) == {
        "ts": "2026-11-23T05:30:00.123456+00:00",
        "value": 41.25,
        "quality": 87,
    }


def test_a_member_of_the_earlier_json_form_is_still_shown() -> None:
    old = b'{"ts": "2026-11-23T05:30:00+00:00", "value": 40.0, "quality": 100}'
    assert _unpack(old) == {"ts": "2026-11-23T05:30:00+00:00", "value": 40.0, "quality": 100}
