"""What a client checks on every error: the problem+json shape and the fields named in 422s."""

from typing import Any

import httpx

PROBLEM_BASE = "https://irrigation.dev/problems/"


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """An RFC 9457 body with a stable `code`; returns it for further checks."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["type"] == PROBLEM_BASE + code.replace("_", "-")
    assert body["status"] == status
    assert body["code"] == code
    assert isinstance(body["title"], str)
    assert body["title"]
    assert isinstance(body["detail"], str)
    assert body["detail"]
    return body


def assert_invalid(
    response: httpx.Response, *paths: str, code: str = "validation_error"
) -> dict[str, Any]:
    """A 422 whose `errors[].path` names every given field."""
    body = assert_problem(response, 422, code)
    named = {error["path"] for error in body["errors"]}
    for path in paths:
        assert path in named, body
    return body
