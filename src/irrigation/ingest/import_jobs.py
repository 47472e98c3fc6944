"""History file import jobs: the arq job that reads an uploaded file in chunks, each chunk
one transaction that also moves the job's progress, and the cron jobs that requeue stalled
imports and sweep orphan uploads.

The file lives at `{data_dir}/imports/{job_id}.{ndjson|csv}` and the job row stores that
path relative to the data directory: the API writes it and the worker reads it, so both must
see one data directory (the same host with the same `IRRIGATION_DATA_DIR`, or one volume
mounted as the data directory of both)."""

import asyncio
import contextlib
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from irrigation import queue
from irrigation.common.clock import utcnow
from irrigation.common.errors import DomainError
from irrigation.common.retry import retry_on_deadlock
from irrigation.common.worker_context import worker_context
from irrigation.ingest import service
from irrigation.ingest.cache import HotCache, Live
from irrigation.ingest.import_formats import ImportFormat, Reader, count_lines
from irrigation.ingest.models import IngestionJob, JobSource, JobStatus
from irrigation.ingest.rows import Rows
from irrigation.ingest.schemas import ReadingIn
from irrigation.ingest.validation import Rejected
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


def upload_path(settings: Settings, relative: str) -> Path:
    """An upload's file, from the path its job row stores (relative to the data directory)."""
    return Path(settings.data_dir) / relative


def discard(path: Path) -> None:
    """One unlink, done inline: it must run even in a cancelled task's clean-up."""
    path.unlink(missing_ok=True)


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
    cache = HotCache.of(jc.settings, jc.redis)
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
            await fail(session, job_uuid, error)
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
            discard(path)
        return f"skipped: {job.status}"
    if job.file_path is None or job.file_format is None or not path.is_file():
        await fail(session, job_id, f"the uploaded file is missing: {job.file_path}")
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
                service.job_event(session, job)
    if job.status != JobStatus.running:
        raise _Superseded

    offset = job.processed
    reader = await asyncio.to_thread(Reader.open, path, file_format, offset)
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
            stored, live = await _commit_chunk(session, settings, job_id, parsed, offset)
            await cache.record(stored, live=live)
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
        service.job_event(session, job)
    discard(path)
    log.info("import_completed", job_id=str(job_id), total=job.total, ms=job.processing_time_ms)
    return "completed"


def _read_ahead(reader: Reader) -> asyncio.Task[list[ReadingIn | Rejected]]:
    return asyncio.create_task(asyncio.to_thread(reader.next_chunk, CHUNK_ITEMS))


async def _commit_chunk(
    session: AsyncSession,
    settings: Settings,
    job_id: uuid.UUID,
    parsed: list[ReadingIn | Rejected],
    offset: int,
) -> tuple[Rows, Live]:
    """Readings, rollups, quarantine and the job's counts in one transaction. The job row is
    locked first and must still be at `offset`: two runs of one job can never both write
    a chunk, whatever arq does. Returns the chunk's readings as stored, for the cache, and
    the job's progress event, which rides the cache's round trip. A file is history: its
    readings publish no `reading` events (even for a sensor with nothing cached, each chunk
    would claim a new latest value), the job's events say that it moved on."""

    async def commit() -> tuple[Rows, Live]:
        async with session.begin():
            job = await _lock(session, job_id)
            # An import always has its site (only the MQTT bridge writes jobs of none).
            if job.status != JobStatus.running or job.processed != offset or not job.site_id:
                raise _Superseded
            checked = await service.check(session, settings, job.site_id, parsed, offset)
            written = await service.write_checked(session, settings, job.site_id, job_id, checked)
            job.processed += len(parsed)
            job.inserted += written.inserted
            job.duplicates += written.duplicates
            job.quarantined += len(checked.rejected)
            job.quarantine_not_kept += written.not_kept
        progress = service.job_out(job).model_dump(mode="json")
        return written.stored, Live(job.site_id, readings=False, job=progress)

    # Live batches for the same sensors can deadlock with a chunk on rollup rows.
    return await retry_on_deadlock(commit, on_retry=lambda: service.deadlock_retried("import"))


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


async def fail(session: AsyncSession, job_id: uuid.UUID, error: str) -> None:
    try:
        async with session.begin():
            job = await _lock(session, job_id)
            if job.status in (JobStatus.queued, JobStatus.running):
                _end(job, JobStatus.failed, error)
                service.job_event(session, job)
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
            discard(path)
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
