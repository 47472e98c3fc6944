"""History file imports: POST /v1/ingest/jobs, the worker that processes the file in chunks,
and `irrigation import`. Real PostgreSQL, Redis, worker and API processes."""

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis
from arq.constants import job_key_prefix
from sqlalchemy import text

from irrigation import queue
from irrigation.app import create_app
from irrigation.common.worker_context import WorkerContext
from irrigation.db import create_engine, create_sessionmaker
from irrigation.gateway import HttpGateway
from irrigation.ingest import import_jobs
from irrigation.settings import Settings
from irrigation.stack import plain_url
from irrigation.worker import create_worker
from tests.support.processes import StartProcess, free_port, wait_http

NDJSON = {"Content-Type": "application/x-ndjson"}
CSV = {"Content-Type": "text/csv"}
NOW = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=1)


async def make_sensors(client: httpx.AsyncClient, headers: dict[str, str], n: int) -> list[str]:
    zone = await client.post("/v1/zones", json={"name": "z", "timezone": "UTC"}, headers=headers)
    assert zone.status_code == 201, zone.text
    ids = []
    for i in range(n):
        body = {"zone_id": zone.json()["id"], "name": f"m{i}", "kind": "soil_moisture", "unit": "%"}
        sensor = await client.post("/v1/sensors", json=body, headers=headers)
        assert sensor.status_code == 201, sensor.text
        ids.append(sensor.json()["id"])
    return ids


def line(sensor_id: str, minutes_ago: int, value: float) -> str:
    ts = (NOW - timedelta(minutes=minutes_ago)).isoformat()
    return f'{{"sensor_id":"{sensor_id}","ts":"{ts}","value":{value}}}\n'


async def blocks(path: Path, size: int = 256 * 1024) -> AsyncIterator[bytes]:
    """The file as a streamed body, as a real client sends a large one."""
    with path.open("rb") as f:
        while block := f.read(size):
            yield block


async def upload(
    client: httpx.AsyncClient, headers: dict[str, str], path: Path, kind: dict[str, str]
) -> dict[str, Any]:
    response = await client.post(
        "/v1/ingest/jobs", content=blocks(path), headers={**headers, **kind}
    )
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    assert response.headers["location"] == f"/v1/ingest/jobs/{job['id']}"
    assert (job["status"], job["source"], job["processed"]) == ("queued", "import", 0)
    return job


async def wait_until_done(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    job_id: str,
    timeout_s: float = 30,
    seen: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        response = await client.get(f"/v1/ingest/jobs/{job_id}", headers=headers)
        assert response.status_code == 200, response.text
        job: dict[str, Any] = response.json()
        if seen is not None:
            seen.append(job)
        if job["status"] in ("completed", "failed"):
            return job
        assert time.monotonic() < deadline, f"import not done in {timeout_s} s: {job}"
        await asyncio.sleep(0.05)


def counts(job: dict[str, Any]) -> tuple[int, ...]:
    return (job["total"], job["processed"], job["inserted"], job["duplicates"], job["quarantined"])


async def fetch(settings: Settings, sql: str, *args: Any) -> Any:
    conn = await asyncpg.connect(plain_url(settings.effective_database_url))
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


def uploads(settings: Settings) -> list[Path]:
    folder = Path(settings.data_dir) / import_jobs.IMPORTS_DIR
    return sorted(folder.iterdir()) if folder.exists() else []


async def quarantine_of(
    client: httpx.AsyncClient, headers: dict[str, str], job_id: str
) -> dict[int, tuple[str, str]]:
    response = await client.get(
        "/v1/quarantine", params={"job_id": job_id, "limit": 500}, headers=headers
    )
    assert response.status_code == 200, response.text
    return {q["item_index"]: (q["reason"], q["detail"]) for q in response.json()["items"]}


CSV_LINES = [
    "ts,sensor_id,value,quality",  # any column order; unit left out
    "{ts0},{sid},30.5,100",  # 0 stored
    "{ts1},{sid},31",  # 1 a field missing
    "{ts2},{sid},abc,100",  # 2 not a number
    "",  # 3 a blank line is an item too
    '{ts3},{sid},"12,100',  # 4 unclosed quote
    "{ts4},{sid},32.5,",  # 5 stored, quality 100 by default
    "{ts5},{sid},33,10",  # 6 low quality (parsed fine)
    "{ts6},{sid},150,100",  # 7 out of range
    "{ts7},{sid},34,95",  # 8 stored
]


def write_csv(path: Path, sensor_id: str) -> Path:
    stamps = {f"ts{i}": (NOW - timedelta(minutes=i)).isoformat() for i in range(8)}
    path.write_text("\n".join(ln.format(sid=sensor_id, **stamps) for ln in CSV_LINES) + "\n")
    return path


# The big one ---------------------------------------------------------------------------------


@pytest.mark.slow
async def test_200k_line_ndjson_import_completes_with_exact_counts_and_visible_progress(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    settings: Settings,
    spawn: StartProcess,
    tmp_path: Path,
) -> None:
    spawn("worker")
    sensors = await make_sensors(client, admin, 4)
    per_sensor = 49_750
    path = tmp_path / "history.ndjson"
    with path.open("w") as f:
        for minute in range(per_sensor):
            f.writelines(line(sid, minute, (minute % 1000) / 10) for sid in sensors)
        # 500 lines sent twice (duplicates, in a later chunk than the first copy) ...
        f.writelines(line(sensors[i % 4], i // 4, ((i // 4) % 1000) / 10) for i in range(500))
        # ... and 500 values outside the sensor's 0-100 %.
        f.writelines(line(sensors[i % 4], 100_000 + i, 150) for i in range(500))

    job = await upload(client, admin, path, NDJSON)
    seen: list[dict[str, Any]] = []
    job = await wait_until_done(client, admin, job["id"], timeout_s=60, seen=seen)

    assert job["status"] == "completed", job.get("error")
    assert counts(job) == (200_000, 200_000, 199_000, 500, 500)
    assert job["success_rate"] == 0.9975
    assert job["finished_at"] is not None
    assert any(0 < s["processed"] < s["total"] for s in seen), "no progress was ever visible"
    assert await fetch(settings, "SELECT count(*) FROM sensor_readings") == 199_000
    rollups = "SELECT sum(count) FROM reading_rollups_hourly"
    assert await fetch(settings, rollups) == 199_000
    assert uploads(settings) == [], "the uploaded file is deleted when the import completes"
    rate = job["total"] / (job["processing_time_ms"] / 1000)
    print(f"\nimport of 200,000 lines: {job['processing_time_ms']} ms, {rate:,.0f} rows/s")


# Line-level problems ---------------------------------------------------------------------------


@pytest.mark.slow
async def test_csv_import_quarantines_bad_lines_as_parse_errors_at_their_line_index(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    spawn: StartProcess,
    tmp_path: Path,
) -> None:
    spawn("worker")
    (sensor,) = await make_sensors(client, admin, 1)
    job = await upload(client, admin, write_csv(tmp_path / "h.csv", sensor), CSV)
    job = await wait_until_done(client, admin, job["id"])

    assert job["status"] == "completed", job.get("error")
    assert counts(job) == (9, 9, 3, 0, 6)
    quarantine = await quarantine_of(client, admin, job["id"])
    assert {index: reason for index, (reason, _) in quarantine.items()} == {
        1: "parse_error",
        2: "parse_error",
        3: "parse_error",
        4: "parse_error",
        6: "low_quality",
        7: "out_of_range",
    }
    assert quarantine[1][1] == "expected 4 fields, got 3"
    assert quarantine[2][1].startswith("value:")
    latest = (await client.get(f"/v1/sensors/{sensor}/latest", headers=admin)).json()
    assert [r["value"] for r in latest["recent"]] == [30.5, 32.5, 34.0]


@pytest.mark.slow
async def test_an_ndjson_line_that_is_not_json_is_quarantined_and_the_job_goes_on(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    spawn: StartProcess,
    tmp_path: Path,
) -> None:
    spawn("worker")
    (sensor,) = await make_sensors(client, admin, 1)
    path = tmp_path / "h.ndjson"
    path.write_text(
        line(sensor, 0, 1) + "{not json\n" + '{"sensor_id": 1}\n' + line(sensor, 1, 2).rstrip()
    )
    job = await wait_until_done(client, admin, (await upload(client, admin, path, NDJSON))["id"])

    assert counts(job) == (4, 4, 2, 0, 2)
    quarantine = await quarantine_of(client, admin, job["id"])
    assert quarantine[1][0] == "parse_error"
    assert quarantine[1][1].startswith("not valid JSON")
    assert quarantine[2][0] == "parse_error"


@pytest.mark.slow
async def test_a_duplicate_with_another_value_counts_as_duplicate_and_the_stored_value_shows(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    spawn: StartProcess,
    tmp_path: Path,
) -> None:
    spawn("worker")
    (sensor,) = await make_sensors(client, admin, 1)
    path = tmp_path / "h.ndjson"
    path.write_text(line(sensor, 0, 10) + line(sensor, 0, 99))
    job = await wait_until_done(client, admin, (await upload(client, admin, path, NDJSON))["id"])

    assert counts(job) == (2, 2, 1, 1, 0)
    latest = (await client.get(f"/v1/sensors/{sensor}/latest", headers=admin)).json()
    assert [r["value"] for r in latest["recent"]] == [10]


# Refusals at the door ------------------------------------------------------------------------


async def test_a_file_above_max_upload_bytes_is_413_whether_announced_or_streamed(
    small_limit_client: httpx.AsyncClient,
    admin: dict[str, str],
    settings: Settings,
    tmp_path: Path,
) -> None:
    path = tmp_path / "big.ndjson"
    path.write_text(line("00000000-0000-0000-0000-000000000000", 0, 1) * 100)  # ~9 KB

    announced = await small_limit_client.post(
        "/v1/ingest/jobs", content=path.read_bytes(), headers={**admin, **NDJSON}
    )
    streamed = await small_limit_client.post(
        "/v1/ingest/jobs", content=blocks(path, 1024), headers={**admin, **NDJSON}
    )

    for response in (announced, streamed):
        assert response.status_code == 413, response.text
        assert response.json()["code"] == "payload_too_large"
    assert uploads(settings) == [], "a refused upload leaves no file behind"
    jobs = await small_limit_client.get("/v1/ingest/jobs", headers=admin)
    assert jobs.json()["items"] == []


async def test_uploads_may_exceed_the_global_body_limit_other_routes_may_not(
    client: httpx.AsyncClient, admin: dict[str, str], settings: Settings, tmp_path: Path
) -> None:
    big = b"x" * (settings.max_body_bytes + 1)
    readings = await client.post("/v1/readings", content=big, headers=admin)
    assert readings.status_code == 413
    path = tmp_path / "big.ndjson"
    path.write_bytes(big)
    response = await client.post(
        "/v1/ingest/jobs", content=blocks(path), headers={**admin, **NDJSON}
    )
    assert response.status_code == 202, response.text


async def test_an_unknown_format_is_415_and_queues_nothing(
    client: httpx.AsyncClient, admin: dict[str, str], settings: Settings
) -> None:
    by_type = await client.post(
        "/v1/ingest/jobs", content=b"{}", headers={**admin, "Content-Type": "application/json"}
    )
    by_param = await client.post(
        "/v1/ingest/jobs", params={"format": "xml"}, content=b"<a/>", headers={**admin, **CSV}
    )
    for response in (by_type, by_param):
        assert response.status_code == 415, response.text
        assert response.json()["code"] == "unsupported_media_type"
    assert uploads(settings) == []
    assert (await client.get("/v1/ingest/jobs", headers=admin)).json()["items"] == []


async def test_the_format_param_wins_over_the_content_type(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    response = await client.post(
        "/v1/ingest/jobs",
        params={"format": "csv"},
        content=b"sensor_id,ts,value\nx,y,1\n",
        headers={**admin, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 202, response.text


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        (b"", NDJSON),
        (b"\n \n", NDJSON),
        (b"", CSV),
        (b"sensor_id,ts,value\n", CSV),
        (b"sensor,time,value\nx,y,1\n", CSV),
        (b"sensor_id,ts,value,colour\nx,y,1,red\n", CSV),
    ],
    ids=["empty", "blank", "empty-csv", "header-only", "wrong-header", "unknown-column"],
)
async def test_an_empty_file_or_an_unusable_csv_header_is_422(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    settings: Settings,
    body: bytes,
    kind: dict[str, str],
) -> None:
    response = await client.post("/v1/ingest/jobs", content=body, headers={**admin, **kind})
    assert response.status_code == 422, response.text
    assert uploads(settings) == []


async def test_uploading_needs_the_ingest_scope(
    client: httpx.AsyncClient, make_key: Callable[..., Awaitable[str]]
) -> None:
    reader = {"Authorization": f"Bearer {await make_key('read')}"}
    response = await client.post("/v1/ingest/jobs", content=b"{}\n", headers={**reader, **NDJSON})
    assert response.status_code == 403


async def test_an_upload_the_queue_cannot_take_is_503_and_its_job_failed(
    admin: dict[str, str], settings: Settings
) -> None:
    no_redis = settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    application = create_app(no_redis)
    transport = httpx.ASGITransport(app=application)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            response = await c.post("/v1/ingest/jobs", content=b"{}\n", headers={**admin, **NDJSON})
            assert response.status_code == 503, response.text
            assert response.headers["retry-after"] == "5"
            [job] = (await c.get("/v1/ingest/jobs", headers=admin)).json()["items"]
    finally:
        await application.state.redis.aclose()
        await application.state.engine.dispose()
    assert (job["status"], job["error"]) == ("failed", "the job queue (Redis) was unavailable")
    assert uploads(settings) == []


# Redelivery and slices ------------------------------------------------------------------------


@pytest.mark.slow
async def test_redelivering_the_job_of_a_completed_import_changes_nothing(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    settings: Settings,
    spawn: StartProcess,
    redis: aioredis.Redis,
    tmp_path: Path,
) -> None:
    spawn("worker")
    (sensor,) = await make_sensors(client, admin, 1)
    job = await upload(client, admin, write_csv(tmp_path / "h.csv", sensor), CSV)
    done = await wait_until_done(client, admin, job["id"])
    before = (
        await fetch(settings, "SELECT count(*) FROM sensor_readings"),
        await fetch(settings, "SELECT count(*) FROM quarantined_readings"),
    )

    # The import commits "completed" inside its job; arq deletes the job's key (frees its
    # id: keep_result=0) a moment later, in finish_job.
    deadline = time.monotonic() + 15
    while await redis.exists(job_key_prefix + job["id"]):
        assert time.monotonic() < deadline, "arq never released the finished job's id"
        await asyncio.sleep(0.05)
    arq = queue.create_redis(settings.effective_redis_url, 1.0, settings.queue_name)
    try:
        assert await queue.enqueue_import(arq, job["id"]), "the job id is free again"
    finally:
        await arq.aclose()
    deadline = time.monotonic() + 15
    while await redis.exists(job_key_prefix + job["id"]):
        assert time.monotonic() < deadline, "the redelivered job never ran"
        await asyncio.sleep(0.05)

    again = (await client.get(f"/v1/ingest/jobs/{job['id']}", headers=admin)).json()
    assert again == done
    assert (
        await fetch(settings, "SELECT count(*) FROM sensor_readings"),
        await fetch(settings, "SELECT count(*) FROM quarantined_readings"),
    ) == before


@pytest.mark.filterwarnings("ignore:Call to deprecated close:DeprecationWarning")  # arq
async def test_an_import_runs_in_slices_each_resuming_where_the_last_stopped(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What a killed worker's redelivery does too: start again from `processed`."""
    monkeypatch.setattr(import_jobs, "SLICE_S", 0.0)  # one chunk per run
    monkeypatch.setattr(import_jobs, "CHUNK_ITEMS", 1_000)
    runs: list[str] = []
    process = import_jobs.process_import

    async def counted(ctx: dict[str, Any], job_id: str) -> str:
        runs.append(job_id)
        return await process(ctx, job_id)

    monkeypatch.setattr(import_jobs, "process_import", counted)
    (sensor,) = await make_sensors(client, admin, 1)
    path = tmp_path / "h.ndjson"
    lines = [line(sensor, minute, 50) for minute in range(3_500)]
    for bad in (999, 1_000, 3_499):  # either side of a chunk border, and the last line
        lines[bad] = "oops\n"
    path.write_text("".join(lines))
    job = await upload(client, admin, path, NDJSON)

    # A real arq worker, in this process for the patched sizes (not burst: its every-second
    # cron jobs would keep a burst worker running forever).
    worker = create_worker(settings, queue.BULK)
    running = asyncio.create_task(worker.async_run())
    try:
        done = await wait_until_done(client, admin, job["id"])
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        await worker.close()
        for signum in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().remove_signal_handler(signum)

    assert done["status"] == "completed", done
    assert counts(done) == (3_500, 3_500, 3_497, 0, 3)
    assert len(runs) == 4, "one run per chunk"
    quarantine = await quarantine_of(client, admin, job["id"])
    assert sorted(quarantine) == [999, 1_000, 3_499]
    assert await fetch(settings, "SELECT count(*) FROM sensor_readings") == 3_497


@pytest.mark.slow
async def test_a_job_whose_file_is_gone_fails_with_an_error(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    settings: Settings,
    spawn: StartProcess,
    tmp_path: Path,
) -> None:
    path = tmp_path / "h.ndjson"
    path.write_text(line("00000000-0000-0000-0000-000000000000", 0, 1))
    job = await upload(client, admin, path, NDJSON)
    for upload_file in uploads(settings):
        upload_file.unlink()
    spawn("worker")
    failed = await wait_until_done(client, admin, job["id"])
    assert failed["status"] == "failed"
    assert "missing" in failed["error"]


# The command line ----------------------------------------------------------------------------


@pytest.mark.slow
async def test_irrigation_import_uploads_follows_and_prints_the_final_counts(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    spawn: StartProcess,
    tmp_path: Path,
) -> None:
    port = free_port()
    api = spawn("serve", "--port", str(port))
    spawn("worker")
    url = f"http://127.0.0.1:{port}"
    (sensor,) = await make_sensors(client, admin, 1)
    path = tmp_path / "history.ndjson"
    path.write_text("".join(line(sensor, m, 40) for m in range(998)) + "x\n" + "y\n")
    await wait_http(f"{url}/healthz", proc=api)

    def run(*args: str, key: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "irrigation", "import", *args, "--url", url]
        env = {"IRRIGATION_API_KEY": key, "PATH": "/usr/bin:/bin", "COLUMNS": "100"}
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)

    key = admin["Authorization"].removeprefix("Bearer ")
    done = await asyncio.to_thread(run, str(path), key=key)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "total 1000  inserted 998  duplicates 0  quarantined 2"

    refused = await asyncio.to_thread(run, str(path), key="irr_not_a_key")
    assert refused.returncode == 1
    assert "401" in refused.stderr


@pytest.mark.slow
async def test_an_import_whose_queue_entry_was_lost_is_enqueued_again_and_completes(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    settings: Settings,
    spawn: StartProcess,
    tmp_path: Path,
) -> None:
    """The API died between commit and enqueue, or Redis lost the queue: the cron finds it."""
    (sensor,) = await make_sensors(client, admin, 1)
    path = tmp_path / "h.ndjson"
    path.write_text("".join(line(sensor, minute, 40) for minute in range(50)))
    job = await upload(client, admin, path, NDJSON)
    redis = queue.create_redis(settings.effective_redis_url, 1.0, settings.queue_name)
    engine = create_engine(settings)
    try:
        bulk = queue.queue_key(settings.queue_name, queue.BULK)
        await redis.delete(bulk, f"{job_key_prefix}{job['id']}")  # the entry is gone
        async with engine.begin() as conn:
            await conn.execute(
                text("UPDATE ingestion_jobs SET created_at = now() - interval '5 minutes'")
            )
        ctx = {
            "irrigation": SimpleNamespace(
                settings=settings, sessions=create_sessionmaker(engine), redis=redis
            )
        }
        assert await import_jobs.requeue_unfinished_imports(ctx) == 1
        assert await import_jobs.requeue_unfinished_imports(ctx) == 0  # already queued: no twin
    finally:
        await redis.aclose()
        await engine.dispose()
    spawn("worker")
    done = await wait_until_done(client, admin, job["id"])
    assert done["status"] == "completed"
    assert counts(done)[2] == 50


async def test_orphan_uploads_are_swept_and_files_of_unfinished_imports_kept(
    client: httpx.AsyncClient, admin: dict[str, str], settings: Settings, tmp_path: Path
) -> None:
    (sensor,) = await make_sensors(client, admin, 1)
    path = tmp_path / "h.ndjson"
    path.write_text(line(sensor, 1, 50))
    job = await upload(client, admin, path, NDJSON)  # no worker: it stays queued
    (kept,) = uploads(settings)
    orphan = kept.parent / "killed-mid-upload.ndjson"
    fresh = kept.parent / "still-uploading.ndjson"
    orphan.write_text("partial")
    fresh.write_text("partial")
    hours_ago = time.time() - 7 * 3600
    for old in (kept, orphan):
        os.utime(old, (hours_ago, hours_ago))

    engine = create_engine(settings)
    redis = queue.create_redis(settings.effective_redis_url, 1.0, settings.queue_name)
    gateway = HttpGateway("http://127.0.0.1:9", timeout_s=0.1, retries=0)
    ctx = {"irrigation": WorkerContext(settings, create_sessionmaker(engine), gateway, redis)}
    try:
        assert await import_jobs.sweep_orphan_uploads(ctx) == 1
        assert sorted(p.name for p in uploads(settings)) == sorted([kept.name, fresh.name])
        await fetch(
            settings,
            "UPDATE ingestion_jobs SET status = 'failed' WHERE id = $1",
            uuid.UUID(job["id"]),
        )
        assert await import_jobs.sweep_orphan_uploads(ctx) == 1
        assert [p.name for p in uploads(settings)] == [fresh.name]
    finally:
        await gateway.aclose()
        await redis.aclose()
        await engine.dispose()
