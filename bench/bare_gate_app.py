"""The bare gate: the baseline of bench/activation.py's herd and sustained phases (issue 20).

A minimal FastAPI app, served by the same uvicorn command line as `irrigation serve`
(uvloop, httptools, no access log), with one asyncpg pool, doing the activation gate's
transaction on the real tables and nothing else: no auth, no rate limit, no idempotency,
no outbox, no audit row, no live-feed event, no Redis enqueue.

    POST /v1/pumps/{pump_id}/activations   {"duration_s": 1, "priority": "manual"}

    BEGIN
    SELECT ... FROM water_sources WHERE id = (the pump's) FOR NO KEY UPDATE
    SELECT ... FROM pumps LEFT JOIN its active run ... FOR NO KEY UPDATE OF pumps
    checks: enabled, fault, max_runtime_s, busy, cooldown   -> 409 / 422
    SELECT count(*) of the source's active runs (capacity)   -> 409
    INSERT INTO pump_activations ...
    UPDATE pumps SET last_sequence, active_activation_id
    COMMIT                                                   -> 202

Nothing runs what it admits, so a run of its own counts as ended once its `run_deadline`
(requested_at + duration_s) has passed: the next admission on the pump marks it
`completed` first (one UPDATE the real gate leaves to the worker), which keeps the
sustained load's mix of 202 and 409 like the real API's. Its rows carry the origin
`bench-bare`; `cleanup()` ends them all, so the real API then finds the pumps free.

    uvicorn bare_gate_app:create_app --factory --app-dir bench   (BARE_DATABASE_URL=...)
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import asyncpg
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

ORIGIN = "bench-bare"
ACTIVE = ("queued", "starting", "running")

LOCK_SOURCE = """
SELECT id, max_concurrent_pumps FROM water_sources
WHERE id = (SELECT water_source_id FROM pumps WHERE id = $1)
FOR NO KEY UPDATE
"""
LOCK_PUMP = """
SELECT p.water_source_id, p.site_id, p.enabled, p.fault, p.max_runtime_s, p.cooldown_until,
       p.last_sequence, p.active_activation_id, a.run_deadline, a.origin,
       clock_timestamp() AS now
FROM pumps p LEFT JOIN pump_activations a ON a.id = p.active_activation_id
WHERE p.id = $1
FOR NO KEY UPDATE OF p
"""
END_OWN_RUN = "UPDATE pump_activations SET status = 'completed', stopped_at = $2 WHERE id = $1"
RUNNING = """
SELECT count(*) FROM pump_activations
WHERE water_source_id = $1 AND status IN ('queued', 'starting', 'running')
"""
INSERT = """
INSERT INTO pump_activations (id, site_id, pump_id, water_source_id, priority, status,
    duration_s, origin, command_id, sequence, requested_at, start_deadline, run_deadline)
VALUES ($1, $2, $3, $4, $5, 'queued', $6, $7, $8, $9, $10, $11, $12)
"""
UPDATE_PUMP = "UPDATE pumps SET last_sequence = $2, active_activation_id = $1 WHERE id = $3"
CLEANUP = f"""
WITH ended AS (
    UPDATE pump_activations SET status = 'completed', stopped_at = clock_timestamp()
    WHERE origin = '{ORIGIN}' AND status IN ('queued', 'starting', 'running')
    RETURNING id
)
UPDATE pumps SET active_activation_id = NULL WHERE active_activation_id IN (SELECT id FROM ended)
"""


class RunIn(BaseModel):
    duration_s: int = Field(ge=1, le=86_400)
    priority: str = "manual"


def _refused(code: str) -> JSONResponse:
    return JSONResponse({"code": code}, status_code=409, media_type="application/problem+json")


async def gate(conn: asyncpg.Connection, pump_id: uuid.UUID, run: RunIn) -> JSONResponse:
    async with conn.transaction():
        source = await conn.fetchrow(LOCK_SOURCE, pump_id)
        if source is None:
            return JSONResponse({"code": "not_found"}, status_code=404)
        pump = await conn.fetchrow(LOCK_PUMP, pump_id)
        now = pump["now"]
        if not pump["enabled"]:
            return _refused("disabled")
        if pump["fault"]:
            return _refused("fault")
        if run.duration_s > pump["max_runtime_s"]:
            return JSONResponse({"code": "duration_exceeds_max_runtime"}, status_code=422)
        if pump["active_activation_id"] is not None:
            own_run_ended = pump["origin"] == ORIGIN and pump["run_deadline"] <= now
            if not own_run_ended:
                return _refused("pump_busy")
            await conn.execute(END_OWN_RUN, pump["active_activation_id"], now)
        if pump["cooldown_until"] is not None and pump["cooldown_until"] > now:
            return _refused("cooldown")
        if await conn.fetchval(RUNNING, source["id"]) >= source["max_concurrent_pumps"]:
            return _refused("capacity")
        activation_id = uuid.uuid4()
        sequence = pump["last_sequence"] + 1
        await conn.execute(
            INSERT,
            activation_id,
            pump["site_id"],
            pump_id,
            source["id"],
            run.priority,
            run.duration_s,
            ORIGIN,
            str(activation_id),
            sequence,
            now,
            now + timedelta(days=1),  # never expired by the real worker's watchdog
            now + timedelta(seconds=run.duration_s),
        )
        await conn.execute(UPDATE_PUMP, activation_id, sequence, pump_id)
    body = {"id": str(activation_id), "command_id": str(activation_id)}
    return JSONResponse(body | {"requested_at": now.isoformat()}, status_code=202)


async def cleanup(conn: asyncpg.Connection) -> None:
    """End every run the bare gate admitted: the pumps are free again for the real API."""
    await conn.execute(CLEANUP)


def create_app() -> FastAPI:
    url = os.environ["BARE_DATABASE_URL"]
    # The API's default pool: IRRIGATION_DB_POOL_SIZE 10 + IRRIGATION_DB_MAX_OVERFLOW 5.
    size = int(os.environ.get("BARE_POOL_SIZE", "10"))
    ceiling = int(os.environ.get("BARE_POOL_MAX", "15"))
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        state["pool"] = await asyncpg.create_pool(url, min_size=size, max_size=ceiling)
        try:
            yield
        finally:
            await state["pool"].close()

    app = FastAPI(lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/pumps/{pump_id}/activations")
    async def request_activation(pump_id: uuid.UUID, body: RunIn) -> JSONResponse:
        async with state["pool"].acquire() as conn:
            return await gate(conn, pump_id, body)

    return app
