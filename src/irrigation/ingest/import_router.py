"""HTTP route for history file imports: the upload that queues an import job."""

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from irrigation.auth.deps import IngestPrincipal
from irrigation.common.deps import RedisDep, SettingsDep
from irrigation.common.openapi import problems
from irrigation.db import SessionDep
from irrigation.ingest import import_upload as imports
from irrigation.ingest import service
from irrigation.ingest.schemas import IngestionJobOut

router = APIRouter(prefix="/v1", tags=["readings"])

UPLOAD_PATH = "/v1/ingest/jobs"

_RESPONSES = problems(413, 415, 503)
_RESPONSES[413]["description"] = "The file is above `IRRIGATION_MAX_UPLOAD_BYTES`"
_RESPONSES[415]["description"] = (
    "Neither `format` nor `Content-Type` names NDJSON or CSV (`unsupported_media_type`)"
)
_RESPONSES[422]["description"] = (
    "An empty file, or a CSV header without `sensor_id,ts,value` (`validation_error`)"
)
_RESPONSES[503]["description"] = "The upload could not be stored or queued; send it again"
_FILE = {"schema": {"type": "string", "format": "binary"}}

Format = Annotated[
    str | None,
    Query(
        description="`ndjson` or `csv`; overrides `Content-Type`. Anything else is 415.",
        examples=["ndjson"],
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
        "and optionally `unit,quality`, in any order), or any type with `?format=`. It is "
        "streamed to disk, up to `IRRIGATION_MAX_UPLOAD_BYTES`. The answer is the queued "
        "job (`Location` points at it); a worker then processes the file in chunks, "
        "`processed` of `total` lines. A line that cannot be parsed is quarantined as a "
        "`parse_error`; `item_index` counts data lines from 0 (the CSV header excluded)."
    ),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/x-ndjson": _FILE, "text/csv": _FILE},
        }
    },
)
async def upload_import(
    request: Request,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    redis: RedisDep,
    who: IngestPrincipal,
    format: Format = None,
) -> IngestionJobOut:
    file_format = imports.resolve_format(format, request.headers.get("content-type"))
    job = await imports.receive(
        session, settings, redis, who.site_id, file_format, request.stream()
    )
    response.headers["Location"] = f"{UPLOAD_PATH}/{job.id}"
    return service.job_out(job)
