"""History file imports: the upload streamed to disk, then an arq job that reads the file in
chunks, each chunk one transaction that also moves the job's progress.

The file lives at `{data_dir}/imports/{job_id}.{ndjson|csv}` and the job row stores that
path relative to the data directory: the API writes it and the worker reads it, so both must
see one data directory (the same host with the same `IRRIGATION_DATA_DIR`, or one volume
mounted as the data directory of both).

Items are the file's data lines (every line after the CSV header, blank ones included), so
`total`, `processed` and a quarantined item's `item_index` (0-based) all count the same
things: NDJSON line number = item_index + 1, CSV line number = item_index + 2. A record can
therefore never span lines (no quoted newlines in CSV)."""

import asyncio
import contextlib
import csv
import json
import os
import time
import uuid
from collections.abc import AsyncIterable
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, BinaryIO

import structlog
from arq.connections import ArqRedis
from pydantic import TypeAdapter, ValidationError
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from irrigation import queue
from irrigation.common.clock import utcnow
from irrigation.common.dberrors import pg_error
from irrigation.common.errors import DomainError, Invalid, PayloadTooLarge, Unavailable
from irrigation.common.worker_context import worker_context
from irrigation.ingest import service
from irrigation.ingest.cache import HotCache
from irrigation.ingest.models import IngestionJob, JobSource, JobStatus, QuarantineReason
from irrigation.ingest.rows import Rows
from irrigation.ingest.schemas import ReadingIn
from irrigation.ingest.validation import Rejected, parse_items
from irrigation.settings import Settings

log = structlog.get_logger(__name__)

IMPORTS_DIR = "imports"
# 5,000 items: progress moves a few times a second, and on a 2-CPU machine 5,000 was at least
# as fast per row as 2,000 or 10,000 (the insert statement is ~60 % of the time).
CHUNK_ITEMS = 5_000
# One arq run stops taking chunks after this long and asks to be run again (same job id).
# The worker's job timeout is 30 s for every function, because arq retries a SIGKILLed job
# only after the longest timeout + 10 s and pump jobs must be retried quickly; a whole
# import in one run would need a timeout of hours.
SLICE_S = 10.0
# A line longer than this is a parse_error, read past in bounded pieces: a file without
# newlines never ends up in memory whole.
MAX_LINE_BYTES = 64 * 1024
RAW_TEXT_CHARS = 1_000
WRITE_BLOCK = 1024 * 1024
BOM = b"\xef\xbb\xbf"


class ImportFormat(StrEnum):
    ndjson = "ndjson"
    csv = "csv"


MEDIA_TYPES = {
    "application/x-ndjson": ImportFormat.ndjson,
    "application/ndjson": ImportFormat.ndjson,
    "application/jsonl": ImportFormat.ndjson,
    "text/csv": ImportFormat.csv,
}
CSV_REQUIRED = ("sensor_id", "ts", "value")
CSV_OPTIONAL = ("unit", "quality")


class UnsupportedFormat(DomainError):
    status, code, title = 415, "unsupported_media_type", "Unsupported media type"


def resolve_format(query_format: str | None, content_type: str | None) -> ImportFormat:
    """`format` wins over Content-Type: `curl --data-binary` sends a form type by default."""
    if query_format is not None:
        try:
            return ImportFormat(query_format.strip().lower())
        except ValueError:
            raise UnsupportedFormat(
                f"format {query_format!r} is not supported: use ndjson or csv"
            ) from None
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type in MEDIA_TYPES:
        return MEDIA_TYPES[media_type]
    raise UnsupportedFormat(
        f"Content-Type {media_type or '(none)'!r} is not supported: send "
        "application/x-ndjson or text/csv, or give ?format=ndjson|csv"
    )


def upload_path(settings: Settings, relative: str) -> Path:
    return Path(settings.data_dir) / relative


# The upload ---------------------------------------------------------------------------------


async def receive(
    session: AsyncSession,
    settings: Settings,
    redis: ArqRedis,
    site_id: uuid.UUID,
    file_format: ImportFormat,
    body: AsyncIterable[bytes],
) -> IngestionJob:
    """Stream the body to disk, then commit the queued job before anyone hears of it."""
    job_id = uuid.uuid4()
    relative = f"{IMPORTS_DIR}/{job_id}.{file_format}"
    path = upload_path(settings, relative)
    await _save(body, path, settings.max_upload_bytes)
    try:
        await asyncio.to_thread(_check_start, path, file_format)
        async with session.begin():
            job = IngestionJob(
                id=job_id,
                site_id=site_id,
                source=JobSource.import_,
                status=JobStatus.queued,
                file_path=relative,
                file_format=file_format,
            )
            session.add(job)
    except BaseException:
        _discard(path)
        raise
    if not await queue.enqueue_import(redis, job_id):
        # Unlike activations there is no outbox relay for imports (it would have to scan
        # ingestion_jobs, one row per batch, without an index): refuse now rather than
        # leave a job queued that nothing will run. The client sends the file again.
        await _fail(session, job_id, "the job queue (Redis) was unavailable")
        _discard(path)
        raise Unavailable(
            "the job queue is unavailable; send the file again", headers={"Retry-After": "5"}
        )
    return job


async def _save(body: AsyncIterable[bytes], path: Path, max_bytes: int) -> None:
    """Written in 1 MiB blocks from a thread: memory stays bounded and the event loop never
    waits on the disk. A partial file is removed, whatever interrupted the upload; a whole
    one is fsynced, since the job that points at it is about to be acknowledged."""
    try:
        await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
        out = await asyncio.to_thread(path.open, "xb")
    except OSError as exc:
        log.error("import_store_failed", path=str(path), error=repr(exc))
        raise Unavailable("the upload cannot be stored right now") from None
    size = 0
    try:
        pending = bytearray()
        async for chunk in body:
            size += len(chunk)
            # The body limit middleware checks the same limit for this route; this keeps
            # the service right on its own.
            if size > max_bytes:
                raise PayloadTooLarge(f"an import file is limited to {max_bytes} bytes")
            pending += chunk
            if len(pending) >= WRITE_BLOCK:
                await asyncio.to_thread(out.write, pending)
                pending = bytearray()
        if pending:
            await asyncio.to_thread(out.write, pending)
        await asyncio.to_thread(_flush_to_disk, out)
    except BaseException:
        out.close()
        _discard(path)
        raise
    out.close()


def _flush_to_disk(out: BinaryIO) -> None:
    out.flush()
    os.fsync(out.fileno())


def _discard(path: Path) -> None:
    """One unlink, done inline: it must run even in a cancelled task's clean-up."""
    path.unlink(missing_ok=True)


def _check_start(path: Path, file_format: ImportFormat) -> None:
    """422 for what no line-by-line quarantine can help: an empty file, a CSV without a
    usable header or without rows."""
    with path.open("rb") as f:
        first = f.readline(MAX_LINE_BYTES + 1).removeprefix(BOM)
        rest = f.read(MAX_LINE_BYTES)
    if not (first + rest).strip() and len(rest) < MAX_LINE_BYTES:
        raise Invalid("the file is empty", field="body")
    if file_format == ImportFormat.csv:
        _csv_columns(first)
        if not rest:
            raise Invalid("the CSV file has a header but no rows", field="body")


def _csv_columns(header: bytes) -> list[str]:
    try:
        columns = [c.strip() for c in next(csv.reader((header.decode("utf-8"),)), [])]
    except (UnicodeDecodeError, csv.Error):
        columns = []
    expected = f"{','.join(CSV_REQUIRED)}[,unit][,quality]"
    missing = [c for c in CSV_REQUIRED if c not in columns]
    unknown = [c for c in columns if c not in CSV_REQUIRED + CSV_OPTIONAL]
    if missing or unknown or len(set(columns)) != len(columns):
        raise Invalid(
            f"the CSV header must name the columns {expected} (any order); got {columns}",
            field="body",
        )
    return columns


# Reading the file: plain blocking code, run in a thread --------------------------------------


def count_lines(path: Path, file_format: ImportFormat) -> int:
    """Data lines, by counting newlines in 1 MiB blocks (about a second per GiB)."""
    lines = 0
    last = b"\n"
    with path.open("rb") as f:
        while block := f.read(WRITE_BLOCK):
            lines += block.count(b"\n")
            last = block[-1:]
    if last != b"\n":
        lines += 1
    return max(0, lines - 1) if file_format == ImportFormat.csv else lines


def _next_line(f: BinaryIO) -> bytes | None:
    """The next line, b"" at the end, None for a line too long (read past, not kept)."""
    line = f.readline(MAX_LINE_BYTES + 1)
    if len(line) <= MAX_LINE_BYTES or line.endswith(b"\n"):
        return line
    while (more := f.readline(MAX_LINE_BYTES)) and not more.endswith(b"\n"):
        pass
    return None


@dataclass
class _Reader:
    file: BinaryIO
    file_format: ImportFormat
    columns: list[str] = field(default_factory=list)

    @classmethod
    def open(cls, path: Path, file_format: ImportFormat, skip: int) -> "_Reader":
        f = path.open("rb")
        try:
            if f.peek(len(BOM))[: len(BOM)] == BOM:
                f.read(len(BOM))
            reader = cls(f, file_format)
            if file_format == ImportFormat.csv:
                reader.columns = _csv_columns(_next_line(f) or b"")
            for _ in range(skip):
                if _next_line(f) == b"":
                    break
        except BaseException:
            f.close()
            raise
        return reader

    def next_chunk(self, size: int) -> list[ReadingIn | Rejected]:
        lines: list[bytes | None] = []
        while len(lines) < size and (line := _next_line(self.file)) != b"":
            lines.append(line)
        if self.file_format == ImportFormat.csv:
            return _parse_csv(lines, self.columns)
        return _parse_ndjson(lines)

    def close(self) -> None:
        self.file.close()


_readings = TypeAdapter(list[ReadingIn])


def _text(line: bytes) -> str:
    return line.decode("utf-8", "replace").rstrip("\r\n")[:RAW_TEXT_CHARS]


def _parse_error(position: int, raw: Any, detail: str) -> Rejected:
    return Rejected(position, raw, QuarantineReason.parse_error, detail)


def _too_long(position: int) -> Rejected:
    return _parse_error(position, None, f"line is longer than {MAX_LINE_BYTES} bytes")


def _parse_ndjson(lines: list[bytes | None]) -> list[ReadingIn | Rejected]:
    if None not in lines:
        # A clean chunk is one call into pydantic-core. The count check catches a line
        # holding two values ("{...},{...}"), which would shift every item after it.
        try:
            joined = b"[" + b",".join(line for line in lines if line is not None) + b"]"
            typed = _readings.validate_json(joined)
            if len(typed) == len(lines):
                return list(typed)
        except ValidationError:
            pass
    raw_items: list[Any] = []
    rejected: dict[int, Rejected] = {}
    for position, line in enumerate(lines):
        if line is None:
            rejected[position] = _too_long(position)
            continue
        try:
            raw_items.append(json.loads(line))
        except ValueError as exc:
            rejected[position] = _parse_error(position, _text(line), f"not valid JSON: {exc}")
    return _merge(len(lines), rejected, raw_items)


def _parse_csv(lines: list[bytes | None], columns: list[str]) -> list[ReadingIn | Rejected]:
    raw_items: list[Any] = []
    rejected: dict[int, Rejected] = {}
    for position, line in enumerate(lines):
        if line is None:
            rejected[position] = _too_long(position)
            continue
        try:
            # One reader per line: an unclosed quote must not swallow the lines after it.
            fields = next(csv.reader((line.decode("utf-8").rstrip("\r\n"),), strict=True), [])
        except (UnicodeDecodeError, csv.Error) as exc:
            rejected[position] = _parse_error(position, _text(line), f"not valid CSV: {exc}")
            continue
        if len(fields) != len(columns):
            rejected[position] = _parse_error(
                position, _text(line), f"expected {len(columns)} fields, got {len(fields)}"
            )
            continue
        # An empty optional field means "not given" (unit unchecked, quality 100).
        raw_items.append(
            {
                name: _cell(name, value.strip())
                for name, value in zip(columns, fields, strict=True)
                if value.strip() or name in CSV_REQUIRED
            }
        )
    return _merge(len(lines), rejected, raw_items)


def _cell(name: str, text: str) -> Any:
    """CSV has no types: numbers are converted here, since ReadingIn is strict about them
    (a cell that does not convert stays text and fails validation as a parse_error)."""
    convert = {"value": float, "quality": int}.get(name)
    if convert is None:
        return text
    try:
        return convert(text)
    except ValueError:
        return text


def _merge(
    count: int, rejected: dict[int, Rejected], raw_items: list[Any]
) -> list[ReadingIn | Rejected]:
    """Line-level rejects back in their places among the items parse_items judged."""
    judged = iter(parse_items(raw_items))
    return [rejected[p] if p in rejected else next(judged) for p in range(count)]


# The arq job ----------------------------------------------------------------------------------


# Younger imports are still being enqueued by the request that made them.
REQUEUE_AFTER_S = 60


class _Superseded(Exception):
    """The job row moved on without us (another run of this job, or it was ended)."""


async def process_import(ctx: dict[str, Any], job_id: str) -> str:
    """Run chunks for up to SLICE_S, then ask arq to run the job again; it resumes from
    `processed`, as it does after a killed worker: each committed chunk is durable and
    moved `processed` in its own transaction. A completed or failed job is left alone."""
    jc = worker_context(ctx)
    cache = HotCache(jc.redis, jc.settings.redis_namespace, jc.settings.redis_timeout_s)
    job_uuid = uuid.UUID(job_id)
    async with jc.sessions() as session:
        try:
            outcome = await _run_slice(session, jc.settings, cache, job_uuid)
        except _Superseded:
            return "superseded"
        except Exception as exc:
            if isinstance(exc, DBAPIError) and exc.connection_invalidated:
                # The database went away: try again shortly instead of failing the import.
                raise queue.run_again(5) from exc
            log.exception("import_failed", job_id=job_id)
            # The job's error is shown to the site: no internals beyond the exception's type.
            error = (
                exc.detail
                if isinstance(exc, DomainError)
                else f"unexpected error ({type(exc).__name__}); see the worker's log"
            )
            await _fail(session, job_uuid, error)
            return "failed"
    if outcome == "again":
        raise queue.run_again()
    return outcome


async def _run_slice(
    session: AsyncSession, settings: Settings, cache: HotCache, job_id: uuid.UUID
) -> str:
    deadline = time.monotonic() + SLICE_S
    async with session.begin():
        job = await session.get(IngestionJob, job_id)
    if job is None:
        return "missing"
    path = upload_path(settings, job.file_path or "")
    if job.status in (JobStatus.completed, JobStatus.failed):
        # A redelivery: nothing to do but the clean-up a crash may have skipped.
        if job.status == JobStatus.completed:
            _discard(path)
        return f"skipped: {job.status}"
    if job.file_path is None or job.file_format is None or not path.is_file():
        await _fail(session, job_id, f"the uploaded file is missing: {job.file_path}")
        return "failed"
    file_format = ImportFormat(job.file_format)
    if job.status == JobStatus.queued:
        # Counted outside any transaction: a large file takes seconds, longer than a
        # transaction may stay idle.
        total = await asyncio.to_thread(count_lines, path, file_format)
        async with session.begin():
            job = await _lock(session, job_id)
            if job.status == JobStatus.queued:
                job.status = JobStatus.running
                job.total = total
                job.started_at = utcnow()
    if job.status != JobStatus.running:
        raise _Superseded

    offset = job.processed
    reader = await asyncio.to_thread(_Reader.open, path, file_format, offset)
    # The next chunk is parsed in a thread while this one is written: the worker's loop
    # stays free for pump jobs, and parsing (a third of the insert's time) overlaps it.
    ahead: asyncio.Task[list[ReadingIn | Rejected]] | None = _read_ahead(reader)
    try:
        while ahead is not None:
            parsed = await ahead
            ahead = None
            if not parsed:
                break
            is_last = len(parsed) < CHUNK_ITEMS  # a short chunk ends the file
            # Decided before the chunk, so no chunk is read ahead in vain; and after at
            # least one chunk, so every run moves the import forward.
            is_out_of_time = time.monotonic() > deadline
            if not (is_last or is_out_of_time):
                ahead = _read_ahead(reader)
            stored = await _commit_chunk(session, settings, job_id, parsed, offset)
            await cache.record(stored)
            offset += len(parsed)
            if is_out_of_time and not is_last:
                return "again"
    finally:
        if ahead is not None:
            # A thread cannot be interrupted: let it finish with the file before closing.
            with contextlib.suppress(Exception):
                await ahead
        reader.close()

    async with session.begin():
        job = await _lock(session, job_id)
        if job.status != JobStatus.running or job.processed != offset:
            raise _Superseded
        _end(job, JobStatus.completed)
    _discard(path)
    log.info("import_completed", job_id=str(job_id), total=job.total, ms=job.processing_time_ms)
    return "completed"


def _read_ahead(reader: _Reader) -> asyncio.Task[list[ReadingIn | Rejected]]:
    return asyncio.create_task(asyncio.to_thread(reader.next_chunk, CHUNK_ITEMS))


async def _commit_chunk(
    session: AsyncSession,
    settings: Settings,
    job_id: uuid.UUID,
    parsed: list[ReadingIn | Rejected],
    offset: int,
) -> Rows:
    """Readings, rollups, quarantine and the job's counts in one transaction. The job row is
    locked first and must still be at `offset`: two runs of one job can never both write
    a chunk, whatever arq does. Returns the chunk's readings as stored, for the cache."""
    attempt = 1
    while True:
        try:
            async with session.begin():
                job = await _lock(session, job_id)
                if job.status != JobStatus.running or job.processed != offset:
                    raise _Superseded
                checked = await service.check(session, settings, job.site_id, parsed, offset)
                written = await service.write_checked(session, job.site_id, job_id, checked)
                job.processed += len(parsed)
                job.inserted += written.inserted
                job.duplicates += written.duplicates
                job.quarantined += len(checked.rejected)
            return written.stored
        except DBAPIError as exc:
            # Live batches for the same sensors can deadlock with a chunk on rollup rows.
            if pg_error(exc).sqlstate != service.DEADLOCK_DETECTED or attempt == service.ATTEMPTS:
                raise
            service.deadlock_retried("import")
            attempt += 1


async def _lock(session: AsyncSession, job_id: uuid.UUID) -> IngestionJob:
    """The job row, fresh and locked; gone (its site was deleted) means nothing to do."""
    job = (
        await session.execute(
            select(IngestionJob)
            .where(IngestionJob.id == job_id)
            .with_for_update(key_share=True)  # FOR NO KEY UPDATE: quarantine FKs still pass
            .execution_options(populate_existing=True)
        )
    ).scalar_one_or_none()
    if job is None:
        raise _Superseded
    return job


def _end(job: IngestionJob, status: JobStatus, error: str | None = None) -> None:
    job.status = status
    job.error = error[:1000] if error else None
    job.finished_at = utcnow()
    if job.started_at is not None:
        job.processing_time_ms = round((job.finished_at - job.started_at).total_seconds() * 1000)


async def _fail(session: AsyncSession, job_id: uuid.UUID, error: str) -> None:
    try:
        async with session.begin():
            job = await _lock(session, job_id)
            if job.status in (JobStatus.queued, JobStatus.running):
                _end(job, JobStatus.failed, error)
    except _Superseded:
        return
    log.warning("import_failed", job_id=str(job_id), error=error)


async def requeue_unfinished_imports(ctx: dict[str, Any]) -> int:
    """Enqueue again every import that is still queued or running (a cron job).

    An import the API committed but never enqueued (it died in between), or whose queue
    entry Redis lost, would otherwise wait forever. Re-enqueueing a live one is harmless:
    its arq job id is the import's id, so arq refuses the duplicate while the job is queued
    or running, and a run that does start resumes from `processed`."""
    jc = worker_context(ctx)
    async with jc.sessions() as session:
        ids = (
            (
                await session.execute(
                    select(IngestionJob.id)
                    .where(
                        IngestionJob.source == JobSource.import_,
                        IngestionJob.status.in_((JobStatus.queued, JobStatus.running)),
                        IngestionJob.created_at < utcnow() - timedelta(seconds=REQUEUE_AFTER_S),
                    )
                    .limit(100)
                )
            )
            .scalars()
            .all()
        )
    requeued = 0
    for job_id in ids:
        requeued += await queue.enqueue_import(jc.redis, job_id)
    return requeued


ORPHAN_AFTER = timedelta(hours=6)


async def sweep_orphan_uploads(ctx: dict[str, Any]) -> int:
    """Delete upload files no unfinished import will read (a cron job).

    The API removes a partial upload whatever interrupted it, unless the process itself
    was killed mid-upload; a finished import removes its file. What is left is a file
    older than ORPHAN_AFTER whose job is missing or over: it is deleted here."""
    jc = worker_context(ctx)
    folder = upload_path(jc.settings, IMPORTS_DIR)
    cutoff = (utcnow() - ORPHAN_AFTER).timestamp()
    old = await asyncio.to_thread(_files_older_than, folder, cutoff)
    if not old:
        return 0
    relatives = {f"{IMPORTS_DIR}/{path.name}": path for path in old}
    async with jc.sessions() as session:
        wanted = set(
            (
                await session.execute(
                    select(IngestionJob.file_path).where(
                        IngestionJob.file_path.in_(relatives),
                        IngestionJob.status.in_((JobStatus.queued, JobStatus.running)),
                    )
                )
            ).scalars()
        )
    removed = 0
    for relative, path in relatives.items():
        if relative not in wanted:
            _discard(path)
            removed += 1
    if removed:
        log.info("orphan_uploads_removed", count=removed)
    return removed


def _files_older_than(folder: Path, cutoff: float, limit: int = 1000) -> list[Path]:
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        if path.is_file() and path.stat().st_mtime < cutoff:
            found.append(path)
            if len(found) == limit:
                break
    return found
