"""HTTP route for history file imports: the upload that queues an import job."""

from collections.abc import AsyncIterator
from pathlib import PurePath
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from irrigation.auth.deps import IngestPrincipal
from irrigation.common.deps import RedisDep, SettingsDep
from irrigation.common.limiter import RateClass, limited_as
from irrigation.common.openapi import body_schema, problems
from irrigation.db import SessionDep
from irrigation.ingest import import_upload, multipart, service
from irrigation.ingest.import_formats import ImportFormat
from irrigation.ingest.schemas import ImportUpload, IngestionJobOut

router = APIRouter(prefix="/v1", tags=["readings"])

UPLOAD_PATH = "/v1/ingest/jobs"

_RESPONSES = problems(413, 415, 429, 503, 507)
_RESPONSES[413]["description"] = (
    "The file is above the site's quota `max_upload_bytes` (`payload_too_large`, with "
    "`quota` and `limit`; at most `IRRIGATION_MAX_UPLOAD_BYTES`)"
)
_RESPONSES[429]["description"] = (
    "The site has as many imports queued or running as its quota `max_concurrent_imports` "
    "allows (`quota_exceeded`, with `quota`, `limit` and `Retry-After`)"
)
_RESPONSES[507]["description"] = (
    "The server's disk has less free space than `IRRIGATION_MIN_FREE_DISK_BYTES` "
    "(`insufficient_storage`, with `Retry-After`)"
)
_RESPONSES[415]["description"] = (
    "Neither `format` nor the `Content-Type` (of the body, or of the `file` part) names "
    "NDJSON or CSV (`unsupported_media_type`)"
)
_RESPONSES[422]["description"] = (
    "An empty file, a CSV header without `sensor_id,ts,value`, or a multipart body without "
    "a `file` part (`validation_error`)"
)
_RESPONSES[503]["description"] = (
    "The upload could not be stored or queued (`unavailable`), or the database connection "
    "was lost (`database_unavailable`); send it again after `Retry-After` seconds"
)
_FILE = {"schema": {"type": "string", "format": "binary", "minLength": 1}}
_FORM: dict[str, Any] = {
    **body_schema(ImportUpload),
    "encoding": {multipart.FILE_FIELD: {"contentType": "application/x-ndjson, text/csv"}},
}
# The multipart variant's file name says what a generic part type (octet-stream) does not.
_EXTENSIONS = {
    ".ndjson": "application/x-ndjson",
    ".jsonl": "application/x-ndjson",
    ".csv": "text/csv",
}

Format = Annotated[
    str | None,
    Query(
        description="`ndjson` or `csv`; overrides `Content-Type`. Anything else is 415.",
        examples=["ndjson"],
        json_schema_extra={"enum": [f.value for f in ImportFormat]},
    ),
]


@router.post(
    UPLOAD_PATH.removeprefix("/v1"),
    status_code=202,
    response_model=IngestionJobOut,
    responses={
        **_RESPONSES,
        202: {
            "description": "The file is stored and its job queued",
            "headers": {"Location": {"description": "The job's URL", "schema": {"type": "string"}}},
        },
    },
    summary="Import a history file (NDJSON or CSV) as a background job",
    description=(
        "The raw body is the file: `application/x-ndjson` (one reading object per line, "
        "as in `POST /v1/readings`) or `text/csv` (header row required: `sensor_id,ts,value` "
        "and optionally `unit,quality`, in any order), or any type with `?format=`. Or the "
        "file is the `file` part of a `multipart/form-data` body (a browser form's upload), "
        "whose own `Content-Type` or file name gives the format unless `?format=` does. It is "
        "streamed to disk, up to `IRRIGATION_MAX_UPLOAD_BYTES`. The answer is the queued "
        "job (`Location` points at it); a worker then processes the file in chunks, "
        "`processed` of `total` lines. A line that cannot be parsed is quarantined as a "
        "`parse_error`; `item_index` counts data lines from 0 (the CSV header excluded)."
    ),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/x-ndjson": _FILE,
                "text/csv": _FILE,
                "multipart/form-data": _FORM,
            },
        }
    },
)
@limited_as(RateClass.expensive)
async def upload_import(
    request: Request,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    redis: RedisDep,
    who: IngestPrincipal,
    format: Format = None,
) -> IngestionJobOut:
    content_type = request.headers.get("content-type")
    body: AsyncIterator[bytes] = request.stream()
    if (content_type or "").lower().startswith("multipart/form-data"):
        part = await multipart.open_file_part(body, content_type or "")
        content_type, body = _part_media_type(part), part.chunks
    file_format = import_upload.resolve_format(format, content_type)
    job = await import_upload.receive(session, settings, redis, who.site_id, file_format, body)
    response.headers["Location"] = f"{UPLOAD_PATH}/{job.id}"
    return service.job_out(job)


def _part_media_type(part: multipart.FilePart) -> str | None:
    media_type = (part.content_type or "").split(";", 1)[0].strip().lower()
    if media_type in import_upload.MEDIA_TYPES or not part.filename:
        return part.content_type
    return _EXTENSIONS.get(PurePath(part.filename).suffix.lower(), part.content_type)
