"""POST /v1/ingest/jobs with a multipart/form-data body: the `file` part is the import, read
as it streams in. Real PostgreSQL, Redis and worker."""

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from irrigation.settings import Settings
from tests.ingest.conftest import StartProcess
from tests.ingest.test_import import (
    counts,
    line,
    make_sensors,
    uploads,
    wait_until_done,
    write_csv,
)

Part = tuple[str | None, bytes, str]


def form(parts: dict[str, Part]) -> tuple[bytes, str]:
    """The body and Content-Type a client sends for these parts (httpx's own encoder; a
    part without a file name is a plain form field)."""
    request = httpx.Request("POST", "http://test", files=parts)
    return request.read(), request.headers["content-type"]


async def trickle(body: bytes, size: int) -> AsyncIterator[bytes]:
    """Streamed in small pieces (no Content-Length): boundaries fall across chunks."""
    for start in range(0, len(body), size):
        yield body[start : start + size]


async def post_form(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    parts: dict[str, Part],
    *,
    chunk: int | None = None,
    **params: str,
) -> httpx.Response:
    body, content_type = form(parts)
    return await client.post(
        "/v1/ingest/jobs",
        content=trickle(body, chunk) if chunk else body,
        params=params,
        headers={**headers, "Content-Type": content_type},
    )


@pytest.mark.parametrize("chunk", [None, 7], ids=["whole", "7-byte-chunks"])
async def test_an_ndjson_file_part_is_imported_and_other_parts_are_skipped(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    settings: Settings,
    spawn: StartProcess,
    chunk: int | None,
) -> None:
    spawn("worker")
    (sensor,) = await make_sensors(client, admin, 1)
    content = (line(sensor, 0, 10) + "{not json\n" + line(sensor, 1, 11)).encode()
    parts: dict[str, Part] = {
        "note": (None, b"before the file", "text/plain"),
        "file": ("history.ndjson", content, "application/x-ndjson"),
    }
    response = await post_form(client, admin, parts, chunk=chunk)

    assert response.status_code == 202, response.text
    assert response.headers["location"] == f"/v1/ingest/jobs/{response.json()['id']}"
    job = await wait_until_done(client, admin, response.json()["id"])
    assert job["status"] == "completed", job.get("error")
    assert counts(job) == (3, 3, 2, 0, 1)
    latest = (await client.get(f"/v1/sensors/{sensor}/latest", headers=admin)).json()
    assert [r["value"] for r in latest["recent"]] == [10, 11]
    assert uploads(settings) == []


async def test_a_csv_file_part_of_a_generic_type_is_known_by_its_name(
    client: httpx.AsyncClient, admin: dict[str, str], spawn: StartProcess, tmp_path: Path
) -> None:
    spawn("worker")
    (sensor,) = await make_sensors(client, admin, 1)
    content = write_csv(tmp_path / "h.csv", sensor).read_bytes()
    part = ("history.CSV", content, "application/octet-stream")
    response = await post_form(client, admin, {"file": part})

    assert response.status_code == 202, response.text
    job = await wait_until_done(client, admin, response.json()["id"])
    assert job["status"] == "completed", job.get("error")
    # The same file as the raw-body CSV test: 3 stored, 6 quarantined.
    assert counts(job) == (9, 9, 3, 0, 6)


async def test_the_format_param_wins_over_the_part_and_an_unknown_part_type_is_415(
    client: httpx.AsyncClient, admin: dict[str, str], settings: Settings
) -> None:
    csv = b"sensor_id,ts,value\nx,y,1\n"
    by_param = await post_form(
        client, admin, {"file": ("export.bin", csv, "application/octet-stream")}, format="csv"
    )
    assert by_param.status_code == 202, by_param.text
    assert by_param.json()["status"] == "queued"

    unknown = await post_form(client, admin, {"file": ("export", csv, "application/octet-stream")})
    assert unknown.status_code == 415, unknown.text
    assert unknown.json()["code"] == "unsupported_media_type"
    assert len(uploads(settings)) == 1  # the accepted one only


@pytest.mark.parametrize(
    "parts",
    [
        {},
        {"note": (None, b"no file", "text/plain")},
        {"files": ("h.ndjson", b"{}\n", "application/x-ndjson")},
    ],
    ids=["empty-form", "field-only", "misnamed-part"],
)
async def test_a_form_without_a_file_part_is_422_and_queues_nothing(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    settings: Settings,
    parts: dict[str, Part],
) -> None:
    if not parts:
        body, content_type = b"--b--\r\n", "multipart/form-data; boundary=b"
        response = await client.post(
            "/v1/ingest/jobs", content=body, headers={**admin, "Content-Type": content_type}
        )
    else:
        response = await post_form(client, admin, parts)

    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["code"] == "validation_error"
    assert problem["errors"][0]["path"] == "body.file"
    assert uploads(settings) == []
    assert (await client.get("/v1/ingest/jobs", headers=admin)).json()["items"] == []


async def test_a_cut_short_or_malformed_form_is_422_and_leaves_no_file(
    client: httpx.AsyncClient, admin: dict[str, str], settings: Settings
) -> None:
    body, content_type = form({"file": ("h.ndjson", b'{"a": 1}\n' * 50, "application/x-ndjson")})
    headers = {**admin, "Content-Type": content_type}
    cut_short = await client.post("/v1/ingest/jobs", content=body[:-40], headers=headers)
    no_boundary = await client.post(
        "/v1/ingest/jobs", content=body, headers={**admin, "Content-Type": "multipart/form-data"}
    )
    part = ("a.ndjson", b"{}\n", "application/x-ndjson")
    two = httpx.Request("POST", "http://test", files=[("file", part), ("file", part)])
    doubled = await client.post(
        "/v1/ingest/jobs", content=two.read(), headers={**admin, **dict(two.headers)}
    )

    for response in (cut_short, no_boundary, doubled):
        assert response.status_code == 422, response.text
        assert response.json()["code"] == "validation_error"
    assert "closing boundary" in cut_short.json()["detail"]
    assert "only one `file` part" in doubled.json()["detail"]
    assert uploads(settings) == []


async def test_a_file_part_above_max_upload_bytes_is_413_whether_announced_or_streamed(
    small_limit_client: httpx.AsyncClient, admin: dict[str, str], settings: Settings
) -> None:
    content = line("00000000-0000-0000-0000-000000000000", 0, 1).encode() * 100  # ~9 KB
    parts: dict[str, Part] = {"file": ("big.ndjson", content, "application/x-ndjson")}

    announced = await post_form(small_limit_client, admin, parts)
    streamed = await post_form(small_limit_client, admin, parts, chunk=1024)

    for response in (announced, streamed):
        assert response.status_code == 413, response.text
        problem: dict[str, Any] = response.json()
        assert problem["code"] == "payload_too_large"
    assert uploads(settings) == [], "a refused upload leaves no file behind"
    jobs = await small_limit_client.get("/v1/ingest/jobs", headers=admin)
    assert jobs.json()["items"] == []
