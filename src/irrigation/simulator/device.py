"""The simulated pump controllers over HTTP: a thin transport over the `DeviceFleet` core
(`POST /devices/{site_id}/{hardware_id}/start|stop|halt`, `GET /devices/{site_id}/
{hardware_id}`), the faults about answers, and the routes tests use to inject faults
(`/faults`), read the physical truth (`/truth`) and the command log (`/commands`)."""

import asyncio
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse

from irrigation.gateway import HARDWARE_ID_PATTERN
from irrigation.simulator.core import DeviceFleet, HaltCommand, StartCommand, StopCommand
from irrigation.simulator.faults import Fault, FaultRequest, RequestKind

SiteId = Annotated[str, Path(pattern=HARDWARE_ID_PATTERN)]
HardwareId = Annotated[str, Path(pattern=HARDWARE_ID_PATTERN)]


async def _until_disconnected(request: Request) -> None:
    # The body is already read, so the server's next message is the client's disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _through_faults(
    fleet: DeviceFleet,
    site_id: str,
    hardware_id: str,
    request: Request,
    apply: Callable[[], dict[str, Any]],
    what: RequestKind,
) -> JSONResponse:
    """Play the device's answer faults (if any) around applying one request.

    Latency is spent even if the client gives up meanwhile: the command was already on the
    wire, so a real device would still act on it."""
    fault = fleet.faults.for_device(site_id, hardware_id)
    if fault is not None and not fault.answers(what):
        fault = None
    if fault is not None:
        if fault.offline:
            await _until_disconnected(request)
            return JSONResponse({"error": "offline"}, status_code=503)
        await asyncio.sleep(fault.latency_ms / 1000)
        if fleet.faults.fails(fault):
            return JSONResponse({"error": "injected"}, status_code=503)
        if fault.hang:
            await _until_disconnected(request)
            return JSONResponse({"error": "hung"}, status_code=503)
    body = apply()
    if fault is not None and fault.drop_ack and what != "state":
        await _until_disconnected(request)
    return JSONResponse(body)


def device_router(fleet: DeviceFleet) -> APIRouter:
    """The devices' routes over `fleet`: commands, state, faults, and the truth to read."""
    router = APIRouter()

    async def command(
        site_id: str, hardware_id: str, body: dict[str, Any], request: Request
    ) -> JSONResponse:
        return await _through_faults(
            fleet,
            site_id,
            hardware_id,
            request,
            lambda: fleet.handle(site_id, hardware_id, body),
            body["op"],
        )

    @router.post("/devices/{site_id}/{hardware_id}/start")
    async def start(
        site_id: SiteId, hardware_id: HardwareId, body: StartCommand, request: Request
    ) -> JSONResponse:
        return await command(site_id, hardware_id, body.model_dump(mode="json"), request)

    @router.post("/devices/{site_id}/{hardware_id}/stop")
    async def stop(
        site_id: SiteId, hardware_id: HardwareId, body: StopCommand, request: Request
    ) -> JSONResponse:
        return await command(site_id, hardware_id, body.model_dump(mode="json"), request)

    @router.post("/devices/{site_id}/{hardware_id}/halt")
    async def halt(
        site_id: SiteId, hardware_id: HardwareId, body: HaltCommand, request: Request
    ) -> JSONResponse:
        return await command(site_id, hardware_id, body.model_dump(mode="json"), request)

    @router.get("/devices/{site_id}/{hardware_id}")
    async def state(site_id: SiteId, hardware_id: HardwareId, request: Request) -> JSONResponse:
        return await _through_faults(
            fleet,
            site_id,
            hardware_id,
            request,
            lambda: fleet.state(site_id, hardware_id),
            "state",
        )

    @router.post("/faults")
    async def set_fault(body: FaultRequest) -> dict[str, Any]:
        fault = Fault.model_validate(body.model_dump(exclude={"seed"}))
        fleet.faults.set(fault, body.seed)
        return fault.model_dump()

    @router.get("/faults")
    async def list_faults() -> dict[str, Any]:
        return {"faults": [fault.model_dump() for fault in fleet.faults.all()]}

    @router.delete("/faults")
    async def clear_faults() -> dict[str, Any]:
        fleet.faults.clear()
        return {"faults": []}

    @router.get("/commands")
    async def commands(
        site_id: str | None = None, hardware_id: str | None = None
    ) -> dict[str, Any]:
        """The command log: what each device received and answered, oldest first."""
        return {"commands": [c.to_json() for c in fleet.commands(site_id, hardware_id)]}

    @router.get("/truth")
    async def truth(site_id: str | None = None, hardware_id: str | None = None) -> dict[str, Any]:
        return {"runs": [run.to_json() for run in fleet.truth(site_id, hardware_id)]}

    return router
