"""What the pumps tell the live feed: every transition of an activation, written here with
its audit row so that no writer can record one without the other (admission writes its
row in its one statement and emits here, pumps/service.py), and every change of a
pump that its event is about (status, fault, cooldown, active run). Both are published
when the transaction commits, never for one that rolls back (irrigation/feed.py). The end
of a run that ran is marked here too, for the water-use rollup, whichever writer ends it."""

import uuid
from datetime import datetime

from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import AsyncSession

from irrigation import feed
from irrigation.fleet.models import Pump
from irrigation.fleet.service import emit_pump
from irrigation.pumps.models import ACTIVE, ActivationEvent, EndedRun, PumpActivation
from irrigation.pumps.schemas import ActivationOut

# What PumpOut's status and the pump's event follow (`enabled` changes by PATCH, in fleet).
WATCHED = ("fault", "cooldown_until", "active_activation_id", "enabled")


def record(
    session: AsyncSession,
    pump: Pump,
    activation: PumpActivation,
    at: datetime,
    cause: str,
    **detail: object,
) -> None:
    """The transition of `activation` to its current status: its audit row and its event
    (ActivationOut with the pump's `zone_id` and the `cause`), and the pump's event if this
    step changed the pump. Last in the step, after every field the step sets and before
    any flush: the events carry the rows as they now are."""
    session.add(
        ActivationEvent(
            activation_id=activation.id,
            at=at,
            status=activation.status,
            cause=cause,
            detail=detail or None,
        )
    )
    emit_transition(session, activation, pump.zone_id, at, cause)
    pump_changed(session, pump, at)
    if ran_and_ended(activation):
        session.add(EndedRun(activation_id=activation.id))


def emit_transition(
    session: AsyncSession, activation: PumpActivation, zone_id: uuid.UUID, at: datetime, cause: str
) -> None:
    """The activation's event alone: for a writer that wrote the audit row itself (the
    admission's one statement, pumps/service.py) and emits the pump's event knowing it
    changed."""
    data = ActivationOut.model_validate(activation).model_dump(mode="json")
    data |= {"zone_id": str(zone_id), "cause": cause}
    feed.emit(session, feed.EventType.activation, activation.site_id, data, at)


def ran_and_ended(activation: PumpActivation) -> bool:
    """A run that the device confirmed and that has ended: it moved water to account. A
    terminal status is reached once per activation, so it is marked once."""
    return (
        activation.status not in ACTIVE
        and activation.started_at is not None
        and activation.stopped_at is not None
    )


def pump_changed(session: AsyncSession, pump: Pump, now: datetime) -> None:
    """The pump's event, if anything it is about changed since the row was read (or last
    flushed): the ORM's own record of the attributes set, so a value set to what it was is
    no change."""
    state = inspect(pump)
    if any(state.attrs[name].history.has_changes() for name in WATCHED):
        emit_pump(session, pump, now)
