"""openapi.yaml at the root is the API's published contract: current, and complete
about errors (every error response is an RFC 9457 problem)."""

import difflib
import re
import uuid
import zoneinfo
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from irrigation.automation.schemas import CRON_PATTERN, ScheduleCreate
from irrigation.cli import render_openapi
from irrigation.fleet.schemas import TIMEZONE_PATTERN

ROOT = Path(__file__).resolve().parents[1]
PROBLEM_JSON = "application/problem+json"
PROBLEM_REF = "#/components/schemas/Problem"
METHODS = {"get", "put", "post", "delete", "patch", "head", "options"}
# Probes answer for load balancers and orchestrators, not API clients: /readyz's 503 has
# the same body as its 200 (which dependency is down), by design.
PROBES = {"/healthz", "/readyz", "/metrics"}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(render_openapi())
    return loaded


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, op)
        for path, item in document["paths"].items()
        for method, op in item.items()
        if method in METHODS
    ]


def test_openapi_yaml_is_current() -> None:
    committed = ROOT / "openapi.yaml"
    current = render_openapi()
    actual = committed.read_text() if committed.exists() else ""
    if actual != current:
        diff = difflib.unified_diff(
            actual.splitlines(), current.splitlines(), "openapi.yaml", "render_openapi()", n=1
        )
        shown = "\n".join(list(diff)[:60])
        pytest.fail(f"openapi.yaml is out of date: run `make openapi` and commit it.\n{shown}")


def test_every_error_response_is_a_problem(document: dict[str, Any]) -> None:
    wrong = []
    for method, path, op in _operations(document):
        if path in PROBES:
            continue
        for status, response in op["responses"].items():
            if not str(status).startswith(("4", "5")):
                continue
            content = response.get("content", {})
            schema = content.get(PROBLEM_JSON, {}).get("schema", {})
            if set(content) != {PROBLEM_JSON} or schema.get("$ref") != PROBLEM_REF:
                wrong.append(f"{method} {path} {status}: {sorted(content)}")
    assert not wrong, "error responses not documented as problems:\n" + "\n".join(wrong)


def test_every_operation_documents_its_errors(document: dict[str, Any]) -> None:
    """Authenticated operations can answer 401 and 403; anything with input, 422."""
    missing = []
    for method, path, op in _operations(document):
        if path in PROBES:
            continue
        expected = set()
        if op.get("security"):
            expected |= {"401", "403"}
        if op.get("parameters") or op.get("requestBody"):
            expected.add("422")
        if op.get("requestBody"):
            expected.add("413")
        documented = {str(status) for status in op["responses"]}
        if expected - documented:
            missing.append(f"{method} {path}: {sorted(expected - documented)}")
    assert not missing, "operations missing error responses:\n" + "\n".join(missing)


def test_the_problem_schema_is_published(document: dict[str, Any]) -> None:
    problem = document["components"]["schemas"]["Problem"]
    assert {"type", "title", "status", "detail", "code"} <= set(problem["required"])


def test_operation_ids_are_unique_method_names(document: dict[str, Any]) -> None:
    """Generated clients name their methods after operation ids: `{tag}_{route function}`."""
    ids = [op["operationId"] for _, _, op in _operations(document)]
    assert len(ids) == len(set(ids)), sorted({i for i in ids if ids.count(i) > 1})
    badly_named = [i for i in ids if not re.fullmatch(r"[a-z][a-z0-9_]*", i)]
    assert not badly_named
    assert document["paths"]["/v1/zones"]["post"]["operationId"] == "zones_create_zone"


def test_every_response_body_has_a_schema(document: dict[str, Any]) -> None:
    """A generated client cannot parse a body without a schema (e.g. /metrics' text)."""
    missing = [
        f"{method} {path} {status} {media_type}"
        for method, path, op in _operations(document)
        for status, response in op["responses"].items()
        for media_type, content in response.get("content", {}).items()
        if "schema" not in content
    ]
    assert not missing
    metrics = document["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert metrics == {"text/plain": {"schema": {"type": "string"}}}


def test_parameters_are_absent_or_a_value_never_null(document: dict[str, Any]) -> None:
    """HTTP has no null: a `str | None` parameter documented as nullable is sent as `null`."""
    nullable = [
        f"{method} {path} {parameter['name']}"
        for method, path, op in _operations(document)
        for parameter in op.get("parameters", ())
        if {"type": "null"} in parameter["schema"].get("anyOf", ())
    ]
    assert not nullable


def test_patch_bodies_are_nullable_only_where_null_clears(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    zone = schemas["ZoneUpdate"]["properties"]
    assert zone["name"]["type"] == "string"  # may be left out, not cleared
    assert "default" not in zone["name"]
    assert zone["version"]["type"] == "integer"
    assert {"type": "null"} in zone["latitude"]["anyOf"]  # null clears it
    schedule = schemas["ScheduleUpdate"]
    assert {"type": "null"} in schedule["properties"]["cron"]["anyOf"]
    assert schedule["not"]["anyOf"], "the fields that never go together"


def test_every_tz_database_name_has_the_documented_shape() -> None:
    shape = re.compile(TIMEZONE_PATTERN)
    assert not [name for name in zoneinfo.available_timezones() if not shape.match(name)]


@pytest.mark.parametrize(
    "cron",
    [
        "0 6 * * 1-5",
        "*/15 6-18 * * mon-fri",
        "0 0 1,15 jan-jun/2 *",
        "30 5 * * 0,7",
        "59-0 23 31 12 sun",
        "05 06 01 01 *",
    ],
)
def test_a_cron_of_the_documented_grammar_is_accepted(cron: str) -> None:
    assert re.fullmatch(CRON_PATTERN, cron)
    ScheduleCreate.model_validate({"zone_id": str(uuid.uuid4()), "cron": cron, "duration_s": 60})


@pytest.mark.parametrize(
    "cron", ["0 24 * * *", "60 * * * *", "0 0 0 * *", "0 0 * 13 *", "0 0 * * 8", "* * * *"]
)
def test_a_cron_the_api_refuses_is_outside_the_documented_grammar(cron: str) -> None:
    assert not re.fullmatch(CRON_PATTERN, cron)
    with pytest.raises(ValidationError):
        ScheduleCreate.model_validate(
            {"zone_id": str(uuid.uuid4()), "cron": cron, "duration_s": 60}
        )


def test_the_documented_schedule_examples_are_valid(document: dict[str, Any]) -> None:
    examples = document["components"]["schemas"]["ScheduleCreate"]["examples"]
    assert len(examples) == 2
    for example in examples:
        ScheduleCreate.model_validate(example)


# Routes whose class is not their method's (GET: read, anything else: write).
RATE_CLASSES = {
    ("POST", "/v1/readings"): "ingest",
    ("POST", "/v1/ingest/jobs"): "expensive",
    ("POST", "/v1/sensors/{sensor_id}/calibrations/backfill"): "expensive",
    ("POST", "/v1/webhooks/{webhook_id}/test"): "expensive",
    ("POST", "/v1/pumps/{pump_id}/activations"): "control",
    ("POST", "/v1/pumps/stop-all"): "control",
    ("POST", "/v1/pumps/{pump_id}/stop"): "control",
    ("POST", "/v1/pumps/{pump_id}/reset"): "control",
    ("POST", "/v1/water-sources/{water_source_id}/reset"): "control",
    ("DELETE", "/v1/run-queue/{request_id}"): "control",
    ("POST", "/v1/sites/current/pause"): "control",
    ("DELETE", "/v1/sites/current/pause"): "control",
    ("POST", "/v1/zones/{zone_id}/rain-delay"): "control",
    ("DELETE", "/v1/zones/{zone_id}/rain-delay"): "control",
    ("POST", "/v1/sites/current/rain-delay"): "control",
    ("DELETE", "/v1/sites/current/rain-delay"): "control",
    # Asking for a ticket is part of opening a stream, a read.
    ("POST", "/v1/live/tickets"): "read",
}
# Counted, never refused: stopping must always be possible.
NEVER_REFUSED = {("POST", "/v1/pumps/stop-all"), ("POST", "/v1/pumps/{pump_id}/stop")}


def test_every_api_route_documents_its_rate_limit_class_429_and_headers(
    document: dict[str, Any],
) -> None:
    headers = document["components"]["headers"]
    assert {"RateLimit", "RateLimit-Policy", "Retry-After"} <= set(headers)
    wrong = []
    for method, path, op in _operations(document):
        if path in PROBES:
            assert "x-rate-limit-class" not in op
            continue
        expected = RATE_CLASSES.get((method, path), "read" if method == "GET" else "write")
        if op.get("x-rate-limit-class") != expected:
            wrong.append(f"{method} {path}: class {op.get('x-rate-limit-class')}, not {expected}")
        for status, response in op["responses"].items():
            documented = set(response.get("headers", {}))
            if str(status).startswith("2") and not {"RateLimit", "RateLimit-Policy"} <= documented:
                wrong.append(f"{method} {path} {status}: no RateLimit headers")
        limited = op["responses"].get("429")
        if (method, path) in NEVER_REFUSED:
            if limited:
                wrong.append(f"{method} {path}: documents a 429 it never answers")
            continue
        if limited is None:
            wrong.append(f"{method} {path}: no 429")
        elif set(limited["headers"]) != {"Retry-After", "RateLimit", "RateLimit-Policy"}:
            wrong.append(f"{method} {path}: 429 headers {sorted(limited['headers'])}")
    assert not wrong, "\n".join(wrong)
    for name in ("read", "write", "ingest", "control", "expensive"):
        assert f"`{name}` " in document["info"]["description"], "the default limits"
