"""The upload of a history file: the format the request names, the body streamed to disk,
its start checked, then the import job committed and queued (import_jobs runs it)."""

import asyncio
import os
import uuid
from collections.abc import AsyncIterable
from pathlib import Path
from typing import BinaryIO

import structlog
from arq.connections import ArqRedis
from sqlalchemy.ext.asyncio import AsyncSession

from irrigation import queue
from irrigation.common.errors import DomainError, PayloadTooLarge, Unavailable
from irrigation.ingest.import_formats import ImportFormat, check_start
from irrigation.ingest.import_jobs import IMPORTS_DIR, discard, fail, upload_path
from irrigation.ingest.models import IngestionJob, JobSource, JobStatus
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
        await asyncio.to_thread(check_start, path, file_format)
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
        discard(path)
        raise
    out.close()


def _flush_to_disk(out: BinaryIO) -> None:
    out.flush()
    os.fsync(out.fileno())
