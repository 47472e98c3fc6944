"""A client generated from the app's OpenAPI document by an outside generator
(openapi-python-client, warnings fatal) imports and works against a real running service:
the document is complete enough for clients nobody here wrote."""

import asyncio
import importlib
import io
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from fastapi import FastAPI

from irrigation.cli import render_openapi
from tests.support.servers import serve

pytestmark = pytest.mark.slow

PACKAGE = "irrigation_client"
# The raw-body variants of the import have no generic meaning for the generator: they are
# bytes to it, sent with their own Content-Type. (Without this it warns, and still keeps the
# operation for its multipart/form-data variant.)
CONFIG = {
    "content_type_overrides": {
        "application/x-ndjson": "application/octet-stream",
        "text/csv": "application/octet-stream",
    }
}


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    root = tmp_path_factory.mktemp("generated")
    (root / "openapi.yaml").write_text(render_openapi())
    (root / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    bin_dir = Path(sys.executable).parent
    result = subprocess.run(
        [
            str(bin_dir / "openapi-python-client"),
            "generate",
            "--path",
            "openapi.yaml",
            "--config",
            "config.yaml",
            "--output-path",
            "client",
            "--fail-on-warning",
        ],
        cwd=root,
        # Its post-hooks run `ruff` (formatting, offline) from PATH: the venv's own.
        env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Warning" not in result.stdout + result.stderr, result.stdout + result.stderr
    sys.path.insert(0, str(root / "client"))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(root / "client"))
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(f"{PACKAGE}.")]:
            del sys.modules[name]


def op(name: str) -> Any:
    """An operation module of the generated client, e.g. `op("zones_create_zone")`."""
    tag = name.split("_", 1)[0]
    return importlib.import_module(f"{PACKAGE}.api.{tag}.{name}")


def model(name: str) -> Any:
    return getattr(importlib.import_module(f"{PACKAGE}.models"), name)


def test_every_operation_is_generated(generated: ModuleType) -> None:
    document = yaml.safe_load(render_openapi())
    ids = [o["operationId"] for item in document["paths"].values() for o in item.values()]
    api = Path(generated.__file__).parent / "api"
    made = {path.stem for path in api.glob("*/*.py") if path.stem != "__init__"}
    assert set(ids) - made == set()


async def test_the_generated_client_drives_the_service(
    generated: ModuleType, app: FastAPI, admin: dict[str, str]
) -> None:
    token = admin["Authorization"].removeprefix("Bearer ")
    types = importlib.import_module(f"{PACKAGE}.types")
    Problem = model("Problem")
    async with (
        serve(app) as base_url,
        generated.AuthenticatedClient(base_url=base_url, token=token) as client,
    ):
        created = await op("zones_create_zone").asyncio_detailed(
            client=client, body=model("ZoneCreate")(name="North", timezone="Europe/Berlin")
        )
        assert created.status_code == 201, created.content
        zone = created.parsed
        assert isinstance(zone, model("ZoneOut"))
        assert (zone.name, zone.timezone, zone.version) == ("North", "Europe/Berlin", 1)

        page = await op("zones_list_zones").asyncio(client=client, limit=10)
        assert [z.id for z in page.items] == [zone.id]

        pump = await op("pumps_create_pump").asyncio(
            client=client,
            body=model("PumpCreate")(zone_id=zone.id, name="P1", hardware_id="hw-1"),
        )
        assert isinstance(pump, model("PumpOut")), pump
        assert pump.status.value == "idle"

        run = await op("activations_request_activation").asyncio_detailed(
            pump.id,
            client=client,
            body=model("ActivationRequest")(duration_s=5),
            idempotency_key=str(uuid.uuid4()),
        )
        assert run.status_code == 202, run.content
        assert isinstance(run.parsed, model("ActivationOut"))
        assert run.parsed.pump_id == pump.id

        sensor = await op("sensors_create_sensor").asyncio(
            client=client,
            body=model("SensorCreate")(
                zone_id=zone.id, name="M1", kind=model("SensorKind")("soil_moisture"), unit="%"
            ),
        )
        now = datetime.now(UTC).isoformat()
        batch = model("ReadingsBatch")(
            readings=[{"sensor_id": str(sensor.id), "ts": now, "value": 31.5}]
        )
        result = await op("readings_send_readings").asyncio(client=client, body=batch)
        assert isinstance(result, model("IngestResult")), result
        assert (result.inserted, result.quarantined) == (1, 0)

        # Error answers parse as the published problem type.
        missing = await op("zones_get_zone").asyncio_detailed(uuid.uuid4(), client=client)
        assert missing.status_code == 404
        assert isinstance(missing.parsed, Problem)
        assert missing.parsed.code == "not_found"
        in_use = await op("zones_delete_zone").asyncio_detailed(zone.id, client=client)
        assert in_use.status_code == 409
        assert isinstance(in_use.parsed, Problem)
        assert in_use.parsed.code == "in_use"

        # The import, as a form upload and as a raw body.
        ndjson = f'{{"sensor_id": "{sensor.id}", "ts": "{now}", "value": 30}}\n'.encode()
        form = model("ImportUpload")(
            file=types.File(
                payload=io.BytesIO(ndjson),
                file_name="history.ndjson",
                mime_type="application/x-ndjson",
            )
        )
        upload = await op("readings_upload_import").asyncio_detailed(client=client, body=form)
        assert upload.status_code == 202, upload.content
        assert isinstance(upload.parsed, model("IngestionJobOut"))
        assert upload.parsed.status.value == "queued"
        # A file object is a sync stream to httpx: the raw body goes by the sync API.
        raw = await asyncio.to_thread(
            op("readings_upload_import").sync_detailed,
            client=client,
            body=types.File(payload=io.BytesIO(b"sensor_id,ts,value\nx,y,1\n")),
            format_=model("ReadingsUploadImportFormat")("csv"),
        )
        assert raw.status_code == 202, raw.content
        job = await op("readings_get_ingestion_job").asyncio(raw.parsed.id, client=client)
        assert job.id == raw.parsed.id

        metrics = await op("operations_metrics").asyncio(client=client)
        assert "irrigation_http_requests_total" in metrics
