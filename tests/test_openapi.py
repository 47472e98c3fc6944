"""openapi.yaml at the root is the API's published contract: current, and complete
about errors (every error response is an RFC 9457 problem)."""

import difflib
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from irrigation.cli import render_openapi

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
