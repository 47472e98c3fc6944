"""The soak's clients: each sends its share of the planned requests at their planned
moments (or as soon as it can, when the stack answers late), and records every request
with what came back. A request that got no answer is sent once more with the same
`Idempotency-Key`, as a careful client would."""

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from irrigation.soak.fleet import Fleet
from irrigation.soak.history import Operation
from irrigation.soak.plan import OpPlan, SoakParams

Record = Callable[[Operation], None]
RETRY_AFTER_S = 0.5
READ_ATTEMPTS = 5
PAGE = 500
# The runner's own requests at the end (not a planned client's).
RUNNER = -1


def _request(op: OpPlan, fleet: Fleet, params: SoakParams) -> tuple[str, dict[str, Any] | None]:
    site = fleet.sites[op.site]
    if op.action == "stop_all":
        return "/v1/pumps/stop-all", None
    assert op.pump is not None
    pump_id = site.pump_ids[op.pump]
    if op.action in ("stop", "reset"):
        return f"/v1/pumps/{pump_id}/{op.action}", None
    body: dict[str, Any] = {"duration_s": op.duration_s, "priority": op.priority}
    if op.action == "queue":
        deadline = datetime.now(UTC) + timedelta(seconds=params.queue_deadline_s)
        body |= {"queue": op.queue, "deadline": deadline.isoformat()}
    return f"/v1/pumps/{pump_id}/activations", body


def _answer(response: httpx.Response) -> dict[str, Any]:
    """What the history keeps of an answer: its body, and what the body says."""
    try:
        body: Any = response.json()
    except ValueError:
        return {"body": response.text[:500]}
    said: dict[str, Any] = {"body": body}
    if not isinstance(body, dict):
        return said
    if response.status_code == 202 and body.get("kind") == "activation":
        said["activation_id"] = body["id"]
    elif response.status_code == 202 and body.get("kind") == "run_request":
        said["run_request_id"] = body["id"]
    elif response.status_code == 200 and "stopped" in body:
        said["stopped"] = [a["id"] for a in body["stopped"]]
    elif "code" in body:
        said["code"] = body["code"]
    return said


async def read_json(
    client: httpx.AsyncClient, path: str, headers: dict[str, str] | None = None, **params: Any
) -> Any:
    """GET, tried again on a server error or a lost connection: the runner's own reads
    must not fail on what the faults left behind (a pooled database connection that was
    killed answers 500 once)."""
    for attempt in range(1, READ_ATTEMPTS + 1):
        try:
            response = await client.get(path, params=params, headers=headers)
        except httpx.TransportError:
            if attempt == READ_ATTEMPTS:
                raise
        else:
            if response.status_code < 500 or attempt == READ_ATTEMPTS:
                response.raise_for_status()
                return response.json()
        await asyncio.sleep(RETRY_AFTER_S)
    raise AssertionError("unreachable")


async def pages(
    api: httpx.AsyncClient, path: str, headers: dict[str, str], **filters: str
) -> list[dict[str, Any]]:
    """Every item of a list, following `next_cursor`."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {**filters, "limit": PAGE}
        if cursor is not None:
            params["cursor"] = cursor
        page = await read_json(api, path, headers, **params)
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items


async def send(
    api: httpx.AsyncClient,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    headers: dict[str, str],
    *,
    op_id: int,
    client: int,
    action: str,
    site_id: str,
    pump_id: str | None,
) -> Operation:
    """One request, sent again once if it got no answer; recorded either way."""
    sent_at = datetime.now(UTC)
    error: str | None = None
    response: httpx.Response | None = None
    for attempt in range(2):
        if attempt:
            await asyncio.sleep(RETRY_AFTER_S)
        try:
            response = await api.request(method, path, json=body, headers=headers)
            break
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
    answered_at = datetime.now(UTC) if response is not None else None
    said = _answer(response) if response is not None else {}
    return Operation(
        id=op_id,
        client=client,
        action=action,
        site_id=site_id,
        pump_id=pump_id,
        request={"method": method, "path": path, "body": body, "attempts": attempt + 1},
        sent_at=sent_at,
        answered_at=answered_at,
        status=response.status_code if response is not None else None,
        error=None if response is not None else error,
        **said,
    )


async def run_client(
    api: httpx.AsyncClient,
    fleet: Fleet,
    params: SoakParams,
    ops: list[OpPlan],
    started: float,
    record: Record,
) -> None:
    """Send `ops` in order, each no earlier than its planned moment after `started`."""
    for op in ops:
        delay = started + op.at_s - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        path, body = _request(op, fleet, params)
        site = fleet.sites[op.site]
        headers = dict(site.headers)
        if body is not None:
            headers["Idempotency-Key"] = f"soak-op-{op.id}"
        record(
            await send(
                api,
                "POST",
                path,
                body,
                headers,
                op_id=op.id,
                client=op.client,
                action=op.action,
                site_id=site.id,
                pump_id=site.pump_ids[op.pump] if op.pump is not None else None,
            )
        )


async def wind_down(api: httpx.AsyncClient, fleet: Fleet, first_id: int, record: Record) -> int:
    """Stop new work: disable the schedules, cancel the run requests still waiting.
    Returns the next free operation id."""
    op_id = first_id
    for site in fleet.sites:
        for schedule_id in site.schedule_ids:
            schedule = await read_json(api, f"/v1/schedules/{schedule_id}", site.headers)
            record(
                await send(
                    api,
                    "PATCH",
                    f"/v1/schedules/{schedule_id}",
                    {"enabled": False, "version": schedule["version"]},
                    site.headers,
                    op_id=op_id,
                    client=RUNNER,
                    action="disable_schedule",
                    site_id=site.id,
                    pump_id=None,
                )
            )
            op_id += 1
    for site in fleet.sites:
        for request in await pages(api, "/v1/run-queue", site.headers, status="waiting"):
            record(
                await send(
                    api,
                    "DELETE",
                    f"/v1/run-queue/{request['id']}",
                    None,
                    site.headers,
                    op_id=op_id,
                    client=RUNNER,
                    action="cancel",
                    site_id=site.id,
                    pump_id=request["pump_id"],
                )
            )
            op_id += 1
    return op_id
