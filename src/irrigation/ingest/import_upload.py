"""The upload of a history file: the format the request names, the body streamed to disk,
its start checked, then the import job committed and queued (import_jobs runs it)."""

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterable
from pathlib import Path
from typing import BinaryIO

import structlog
from arq.connections import ArqRedis
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from irrigation import queue
from irrigation.common.errors import DomainError, PayloadTooLarge, Unavailable
from irrigation.ingest import service
from irrigation.ingest.import_formats import ImportFormat, check_start
from irrigation.ingest.import_jobs import IMPORTS_DIR, discard, fail, upload_path
from irrigation.ingest.models import IngestionJob, JobSource, JobStatus
from irrigation.quotas import service as quotas
from irrigation.quotas.schemas import Quota
from irrigation.settings import Settings

log = structlog.get_logger(__name__)

WRITE_BLOCK = 1024 * 1024

MEDIA_TYPES = {
    "application/x-ndjson": ImportFormat.ndjson,
    "application/ndjson": ImportFormat.ndjson,
    "application/jsonl": ImportFormat.ndjson,
    "text/csv": ImportFormat.csv,
}


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


class InsufficientStorage(DomainError):
    status, code, title = 507, "insufficient_storage", "Insufficient storage"


# A running import takes minutes: the client may look again after this long.
IMPORT_RETRY_AFTER_S = 30


async def _ensure_import_slot(
    session: AsyncSession, settings: Settings, site_id: uuid.UUID
) -> None:
    """429 while the site has as many imports queued or running as its quota allows."""
    count = (
        select(func.count())
        .select_from(IngestionJob)
        .where(
            IngestionJob.site_id == site_id,
            IngestionJob.source == JobSource.import_,
            IngestionJob.status.in_((JobStatus.queued, JobStatus.running)),
        )
    )
    await quotas.ensure_room(
        session,
        settings,
        site_id,
        Quota.max_concurrent_imports,
        count,
        "imports queued or running",
        retry_after_s=IMPORT_RETRY_AFTER_S,
    )


def _ensure_free_disk(settings: Settings, folder: Path) -> None:
    """507 while the disk of the uploads has less free space than the deployment keeps."""
    if settings.min_free_disk_bytes <= 0:
        return
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    free = shutil.disk_usage(existing).free
    if free < settings.min_free_disk_bytes:
        log.warning("import_disk_low", free=free, minimum=settings.min_free_disk_bytes)
        raise InsufficientStorage(
            "the server's disk is too full to take an upload now; try again later",
            headers={"Retry-After": str(IMPORT_RETRY_AFTER_S)},
        )


async def receive(
    session: AsyncSession,
    settings: Settings,
    redis: ArqRedis,
    site_id: uuid.UUID,
    file_format: ImportFormat,
    body: AsyncIterable[bytes],
) -> IngestionJob:
    """Stream the body to disk, then commit the queued job before anyone hears of it.

    The site's import quota is checked before the body is read (no upload in vain) and
    again, under its lock, in the transaction that queues the job: of two uploads racing
    for the last slot, the second is refused and its file removed."""
    async with session.begin():
        await _ensure_import_slot(session, settings, site_id)
        max_bytes = await quotas.limit_of(session, settings, site_id, Quota.max_upload_bytes)
    job_id = uuid.uuid4()
    relative = f"{IMPORTS_DIR}/{job_id}.{file_format}"
    path = upload_path(settings, relative)
    await asyncio.to_thread(_ensure_free_disk, settings, path.parent)
    await _save(body, path, max_bytes, settings)
    try:
        await asyncio.to_thread(check_start, path, file_format)
        async with session.begin():
            await _ensure_import_slot(session, settings, site_id)
            job = IngestionJob(
                id=job_id,
                site_id=site_id,
                source=JobSource.import_,
                status=JobStatus.queued,
                file_path=relative,
                file_format=file_format,
            )
            session.add(job)
            await session.flush()  # its defaults, for the event
            service.job_event(session, job)
    except BaseException:
        discard(path)
        raise
    if not await queue.enqueue_import(redis, job_id):
        # Unlike activations there is no outbox relay for imports (it would have to scan
        # ingestion_jobs, one row per batch, without an index): refuse now rather than
        # leave a job queued that nothing will run. The client sends the file again.
        await fail(session, job_id, "the job queue (Redis) was unavailable")
        discard(path)
        raise Unavailable(
            "the job queue is unavailable; send the file again", headers={"Retry-After": "5"}
        )
    return job


async def _save(body: AsyncIterable[bytes], path: Path, max_bytes: int, settings: Settings) -> None:
    """Written in 1 MiB blocks from a thread: memory stays bounded and the event loop never
    waits on the disk. A partial file is removed, whatever interrupted the upload; a whole
    one is fsynced, since the job that points at it is about to be acknowledged. The free
    space is checked again after each block: uploads running at once share the disk."""
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
                raise PayloadTooLarge(
                    f"an import file is limited to {max_bytes} bytes",
                    quota=Quota.max_upload_bytes.value,
                    limit=max_bytes,
                )
            pending += chunk
            if len(pending) >= WRITE_BLOCK:
                await asyncio.to_thread(out.write, pending)
                pending = bytearray()
                await asyncio.to_thread(_ensure_free_disk, settings, path.parent)
        if pending:
            await asyncio.to_thread(out.write, pending)
        await asyncio.to_thread(_flush_to_disk, out)
    except BaseException:
        out.close()
        discard(path)
        raise
    out.close()


def _flush_to_disk(out: BinaryIO) -> None:
    out.flush()
    os.fsync(out.fileno())
