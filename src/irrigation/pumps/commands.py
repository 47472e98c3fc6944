"""What the pump jobs share around a device command: the fixed lock order, transitions with
their audit event, a pump's device address, fresh fencing numbers, and the faults they
latch.

A command is decided under the row locks (its sequence taken from the locked pump row) and
sent after they are released: no network call is awaited while a row lock is held."""

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from irrigation.fleet.models import Pump
from irrigation.gateway import Command, DeviceAddress, DeviceState, is_addressable
from irrigation.pumps import live
from irrigation.pumps.models import ActivationStatus, PumpActivation
from irrigation.pumps.service import lock_activation, lock_pump


@dataclass(frozen=True)
class Send:
    """A command decided under the row locks, to send once they are released."""

    device: DeviceAddress
    command: Command


async def lock(
    session: AsyncSession, activation_id: uuid.UUID
) -> tuple[Pump, PumpActivation, datetime] | None:
    """Pump then activation (the fixed lock order), both fresh, with the database clock."""
    pump_id = (
        await session.execute(
            select(PumpActivation.pump_id).where(PumpActivation.id == activation_id)
        )
    ).scalar_one_or_none()
    if pump_id is None:
        return None
    pump, now = await lock_pump(session, pump_id)
    return pump, await lock_activation(session, activation_id), now


def transition(
    session: AsyncSession,
    pump: Pump,
    activation: PumpActivation,
    status: ActivationStatus,
    at: datetime,
    cause: str,
    **detail: object,
) -> None:
    """Last in its step, once the step has set every other field of the activation and the
    pump: the audit row and the live events carry them as they now are (pumps/live.py)."""
    activation.status = status
    live.record(session, pump, activation, at, cause, **detail)


def release(pump: Pump, activation: PumpActivation) -> None:
    if pump.active_activation_id == activation.id:
        pump.active_activation_id = None


def address(pump: Pump) -> DeviceAddress | None:
    """The pump's device, or None for a hardware_id from before the address pattern."""
    if not is_addressable(pump.hardware_id):
        return None
    return DeviceAddress.of(pump.site_id, pump.hardware_id)


def next_sequence(pump: Pump) -> int:
    """A fresh fencing number, above every command this pump has sent (the row is locked):
    a start still in flight from before it is refused by the device if it arrives later."""
    pump.last_sequence += 1
    return pump.last_sequence


def adopt_fence(pump: Pump, state: DeviceState) -> None:
    """Raise the pump's counter to the device's fence when the device has seen more (a
    device that ran for a pump deleted since, a restored database): the next command is
    then above it instead of refused."""
    if state.sequence is not None and state.sequence > pump.last_sequence:
        pump.last_sequence = state.sequence


def latest_end(activation: PumpActivation, now: datetime) -> datetime:
    """The latest moment the device can have stopped this run by itself: its auto-off."""
    return max(now, activation.auto_off_at or now)


def device_stop_time(state: DeviceState | None, command_id: str, now: datetime) -> datetime:
    """When the run of `command_id` ended, by the device's own report when its idle state
    names that run; never later than now (the device's clock may run ahead of ours)."""
    ended = state is not None and not state.running and state.command_id == command_id
    if ended and state is not None and state.since is not None:
        return min(now, state.since)
    return now


def latch(pump: Pump, code: str, detail: str, now: datetime) -> None:
    """Latch the pump in fault until an operator resets it. The text starts with the code
    (`gateway`, `device`, `not_confirmed`, `stop_unconfirmed`), which alerts read."""
    pump.fault = f"{code}: {detail}"[:500]
    pump.fault_at = now
