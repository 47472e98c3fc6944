"""Reconciliation (arq cron, every few seconds): what the devices report, compared with
what the database thinks they do. One query reads every pump and its active run; then the
devices' states. A device running with no active run of ours gets a `halt` and leaves a
`DeviceIncident` (the alert `unexpected_run`); a run the database thinks is running on a
device that reports it ended is closed with `stop_cause` `device` and the device's own
stop time.

Each finding is checked again under the pump's row lock before anything is done: the
sweep's reading is seconds old, and a run admitted or started since must not be touched."""

import contextlib
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from irrigation import queue
from irrigation.common.clock import db_now_expr
from irrigation.common.worker_context import WorkerContext, worker_context
from irrigation.fleet.models import Pump
from irrigation.gateway import Command, DeviceAddress, DeviceState, GatewayError, is_addressable
from irrigation.pumps.commands import (
    Send,
    adopt_fence,
    device_stop_time,
    lock,
    next_sequence,
    release,
    transition,
)
from irrigation.pumps.models import (
    UNEXPECTED_RUN,
    ActivationStatus,
    DeviceIncident,
    PumpActivation,
)
from irrigation.pumps.service import lock_activation, lock_pump

log = structlog.get_logger(__name__)

# A device that reports a run ended this much before its deadline stopped it early by
# itself; nearer the deadline, its auto-off did, and the deadline's stop job records it.
EARLY_S = 1.0
IN_FLIGHT = (ActivationStatus.starting, ActivationStatus.running)


@dataclass(frozen=True)
class _Seen:
    """One pump as the sweep's query saw it."""

    pump_id: uuid.UUID
    device: DeviceAddress
    activation_id: uuid.UUID | None
    status: str | None
    command_id: str | None
    run_deadline: datetime | None
    stop_requested_at: datetime | None


async def reconcile_devices(ctx: dict[str, Any]) -> int:
    """Compare every device's state with the database; returns how many it corrected."""
    jc = worker_context(ctx)
    async with jc.sessions() as session:
        async with session.begin():
            now = (await session.execute(select(db_now_expr()))).scalar_one()
            rows = (
                await session.execute(
                    select(
                        Pump.id,
                        Pump.site_id,
                        Pump.hardware_id,
                        PumpActivation.id,
                        PumpActivation.status,
                        PumpActivation.command_id,
                        PumpActivation.run_deadline,
                        PumpActivation.stop_requested_at,
                    ).outerjoin(PumpActivation, PumpActivation.id == Pump.active_activation_id)
                )
            ).all()
        seen = [
            _Seen(r[0], DeviceAddress.of(r[1], r[2]), *r[3:]) for r in rows if is_addressable(r[2])
        ]
        states = await jc.gateway.states([s.device for s in seen])
        corrected = 0
        for pump in seen:
            state = states.get(pump.device)
            if state is None:
                continue  # no answer: nothing known, nothing done
            if state.running and not _is_ours(pump, state):
                corrected += await _halt_unexpected(jc, session, pump, state)
            elif not state.running and _ended_early(pump, state, now):
                corrected += await _close_ended(jc, session, pump, state)
    return corrected


def _is_ours(pump: _Seen, state: DeviceState) -> bool:
    # A start in flight or running is the start job's and the stop job's to judge, even if
    # the device runs another command (its start then fails, and halts the device).
    return pump.status in IN_FLIGHT


def _ended_early(pump: _Seen, state: DeviceState, now: datetime) -> bool:
    if pump.status != ActivationStatus.running or pump.stop_requested_at is not None:
        return False
    if pump.run_deadline is None:
        return False
    early = pump.run_deadline - timedelta(seconds=EARLY_S)
    if state.command_id == pump.command_id and state.since is not None:
        return state.since < early
    # The device forgot the run (a restart): ended, when is not known.
    return now < early


async def _halt_unexpected(
    jc: WorkerContext, session: AsyncSession, seen: _Seen, state: DeviceState
) -> int:
    async with session.begin():
        pump, now = await lock_pump(session, seen.pump_id)
        if pump.active_activation_id is not None:
            active = await lock_activation(session, pump.active_activation_id)
            if active.status in IN_FLIGHT:
                return 0  # started since the sweep's reading: it is ours now
        if DeviceAddress.of(pump.site_id, pump.hardware_id) != seen.device:
            return 0
        # Above the device's fence, so the halt is not refused as stale; a run queued for
        # this pump takes a fresh number when it starts.
        adopt_fence(pump, state)
        halt = Send(seen.device, Command.halt(next_sequence(pump)))
        session.add(
            DeviceIncident(
                site_id=pump.site_id,
                pump_id=pump.id,
                kind=UNEXPECTED_RUN,
                at=now,
                command_id=state.command_id,
                detail={
                    "hardware_id": pump.hardware_id,
                    "device_sequence": state.sequence,
                    "since": state.since.isoformat() if state.since else None,
                    "auto_off_at": state.auto_off_at.isoformat() if state.auto_off_at else None,
                    "halt_sequence": halt.command.sequence,
                },
            )
        )
    log.warning(
        UNEXPECTED_RUN, device=str(seen.device), command_id=state.command_id, pump_id=str(pump.id)
    )
    with contextlib.suppress(GatewayError):
        await jc.gateway.send(halt.device, halt.command)
    return 1


async def _close_ended(
    jc: WorkerContext, session: AsyncSession, seen: _Seen, state: DeviceState
) -> int:
    assert seen.activation_id is not None
    async with session.begin():
        locked = await lock(session, seen.activation_id)
        if locked is None:
            return 0
        pump, activation, now = locked
        if activation.status != ActivationStatus.running or activation.stop_requested_at:
            return 0
        stopped_at = device_stop_time(state, activation.command_id, now)
        activation.stopped_at = stopped_at
        activation.stop_cause = "device"
        release(pump, activation)
        pump.cooldown_until = stopped_at + timedelta(seconds=pump.cooldown_s)
        transition(
            session,
            pump,
            activation,
            ActivationStatus.aborted,
            now,
            "device",
            device_stopped_at=stopped_at.isoformat(),
        )
        site_id = pump.site_id
    log.warning("device_ended_run", device=str(seen.device), activation_id=str(activation.id))
    await queue.enqueue_dispatch(jc.redis, site_id)
    return 1
