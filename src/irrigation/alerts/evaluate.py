"""Alert evaluation: every condition of every site in a few set-based statements.

One statement finds every condition that holds now (latest value outside the band, sensor
silent, pump in fault, a start or stop the device did not confirm, a device found running
with no run of ours, recent gateway failures, quarantine rate, rows automation or webhook
delivery could not process and backed off, runs stopped for their flow, a water source's
latched leak). The pumps domain records the device boundary's and flow supervision's
findings (the fault it latches, its device incidents, a source's leak); alerts, a layer
above, read them here. Then, in the same
transaction: open alerts whose condition no longer holds are cleared, open alerts whose
condition holds are touched (`last_seen_at`), and conditions without an open alert get a
new one (INSERT ... ON CONFLICT DO NOTHING on the partial unique index). Every transition
writes its webhook deliveries in that transaction too.

A transaction-scoped advisory lock makes overlapping runs (two workers, a slow run) skip
instead of racing each other."""

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from irrigation.alerts import notify
from irrigation.alerts.models import (
    Alert,
    AlertKind,
    Severity,
    SubjectType,
    WebhookEvent,
)
from irrigation.common.clock import utcnow
from irrigation.pumps.models import (
    HIGH_FLOW,
    LOW_FLOW,
    NO_FLOW,
    NOT_CONFIRMED,
    STOP_UNCONFIRMED,
    UNEXPECTED_RUN,
)
from irrigation.settings import Settings

log = structlog.get_logger(__name__)

# pg_try_advisory_xact_lock key of the evaluation ("alerts" in ASCII).
EVALUATION_LOCK = 0x616C65727473

# Every condition that holds now, one row each: (site_id, kind, subject_id, detail).
_CONDITIONS = """
SELECT s.site_id, 'sensor_out_of_band' AS kind, s.id AS subject_id,
       jsonb_build_object('sensor_name', s.name, 'unit', s.unit, 'value', r.value,
                          'ts', r.ts, 'alert_min', s.alert_min, 'alert_max', s.alert_max)
FROM sensors AS s
CROSS JOIN LATERAL (
    SELECT value, ts FROM sensor_readings WHERE sensor_id = s.id ORDER BY ts DESC LIMIT 1
) AS r
WHERE (s.alert_min IS NOT NULL OR s.alert_max IS NOT NULL)
  AND (r.value < s.alert_min OR r.value > s.alert_max)
UNION ALL
SELECT s.site_id, 'sensor_silent', s.id,
       jsonb_build_object('sensor_name', s.name, 'last_seen_at', s.last_seen_at,
                          'silent_after_s', s.silent_after_s,
                          'silent_for_s', floor(extract(epoch FROM
                              CAST(:now AS timestamptz) - coalesce(s.last_seen_at, s.created_at))))
FROM sensors AS s
WHERE s.silent_after_s IS NOT NULL
  AND coalesce(s.last_seen_at, s.created_at)
      < CAST(:now AS timestamptz) - make_interval(secs => s.silent_after_s)
UNION ALL
SELECT p.site_id, 'pump_fault', p.id,
       jsonb_build_object('pump_name', p.name, 'fault', p.fault, 'fault_at', p.fault_at)
FROM pumps AS p
WHERE p.fault IS NOT NULL
UNION ALL
SELECT p.site_id, 'actuation_unconfirmed', p.id,
       jsonb_build_object('pump_name', p.name, 'fault', p.fault, 'fault_at', p.fault_at)
FROM pumps AS p
WHERE p.fault LIKE :not_confirmed
UNION ALL
SELECT p.site_id, 'stop_unconfirmed', p.id,
       jsonb_build_object('pump_name', p.name, 'fault', p.fault, 'fault_at', p.fault_at)
FROM pumps AS p
WHERE p.fault LIKE :stop_unconfirmed
UNION ALL
SELECT i.site_id, 'unexpected_run', i.pump_id,
       jsonb_build_object('pump_name', p.name, 'hardware_id', p.hardware_id,
                          'runs', count(*), 'window_s', CAST(:gateway_window_s AS int),
                          'latest_at', max(i.at),
                          'latest_command_id', (array_agg(i.command_id ORDER BY i.at DESC))[1])
FROM device_incidents AS i
JOIN pumps AS p ON p.id = i.pump_id
WHERE i.kind = :unexpected_run
  AND i.at >= CAST(:now AS timestamptz) - make_interval(secs => :gateway_window_s)
GROUP BY i.site_id, i.pump_id, p.name, p.hardware_id
UNION ALL
SELECT p.site_id, 'no_flow', p.id,
       jsonb_build_object('pump_name', p.name, 'fault', p.fault, 'fault_at', p.fault_at)
FROM pumps AS p
WHERE p.fault LIKE :no_flow
UNION ALL
SELECT p.site_id, 'high_flow', p.id,
       jsonb_build_object('pump_name', p.name, 'fault', p.fault, 'fault_at', p.fault_at)
FROM pumps AS p
WHERE p.fault LIKE :high_flow
UNION ALL
SELECT i.site_id, 'low_flow', i.pump_id,
       jsonb_build_object('pump_name', p.name, 'runs', count(*),
                          'window_s', CAST(:gateway_window_s AS int), 'latest_at', max(i.at),
                          'latest', (array_agg(i.detail ORDER BY i.at DESC))[1])
FROM device_incidents AS i
JOIN pumps AS p ON p.id = i.pump_id
WHERE i.kind = :low_flow
  AND i.at >= CAST(:now AS timestamptz) - make_interval(secs => :gateway_window_s)
GROUP BY i.site_id, i.pump_id, p.name
UNION ALL
SELECT ws.site_id, 'leak', ws.id,
       jsonb_build_object('source_name', ws.name, 'leak_detected_at', ws.leak_detected_at,
                          'leak_flow_lpm', ws.leak_flow_lpm,
                          'leak_threshold_lpm', ws.leak_threshold_lpm,
                          'leak_after_s', ws.leak_after_s, 'halted_at', ws.halted_at)
FROM water_sources AS ws
WHERE ws.leak_detected_at IS NOT NULL
UNION ALL
SELECT a.site_id, 'gateway_failure', a.site_id,
       jsonb_build_object('failures', count(*), 'window_s', CAST(:gateway_window_s AS int),
                          'latest_at', max(a.stopped_at),
                          'latest_pump_id', (array_agg(a.pump_id ORDER BY a.stopped_at DESC))[1],
                          'latest_pump_name', (array_agg(p.name ORDER BY a.stopped_at DESC))[1],
                          'latest_error', (array_agg(a.error ORDER BY a.stopped_at DESC))[1])
FROM pump_activations AS a
JOIN pumps AS p ON p.id = a.pump_id
WHERE (a.status = 'failed' OR a.error IS NOT NULL)
  AND a.stopped_at >= CAST(:now AS timestamptz) - make_interval(secs => :gateway_window_s)
  -- what the device did not confirm has its own alerts
  AND coalesce(a.error, '') NOT IN (:not_confirmed_error, :stop_unconfirmed_error)
GROUP BY a.site_id
UNION ALL
SELECT site.id, 'quarantine_rate', site.id,
       jsonb_build_object('quarantined', q.quarantined, 'total', q.total,
                          'rate', CAST(q.quarantined AS float8) / q.total,
                          'threshold', CAST(:threshold AS float8),
                          'window_s', CAST(:quarantine_window_s AS int))
FROM sites AS site
CROSS JOIN LATERAL (
    SELECT coalesce(sum(j.quarantined), 0) AS quarantined,
           coalesce(sum(j.inserted + j.duplicates + j.quarantined), 0) AS total
    FROM ingestion_jobs AS j
    WHERE j.site_id = site.id
      AND j.created_at >= CAST(:now AS timestamptz) - make_interval(secs => :quarantine_window_s)
) AS q
WHERE q.total >= CAST(:min_items AS int)
  AND q.quarantined > CAST(:threshold AS float8) * q.total
UNION ALL
SELECT f.site_id, 'automation_failure', f.site_id,
       jsonb_build_object('rows', count(*),
                          'row_kind', (array_agg(f.row_kind ORDER BY f.failures DESC, f.id))[1],
                          'row_id', (array_agg(f.id ORDER BY f.failures DESC, f.id))[1],
                          'failures', max(f.failures),
                          'retry_at', (array_agg(f.retry_at ORDER BY f.failures DESC, f.id))[1])
FROM (
    SELECT site_id, 'schedule' AS row_kind, id, failures, retry_at
    FROM schedules WHERE failures > 0 AND enabled
    UNION ALL
    SELECT site_id, 'threshold_rule', id, failures, retry_at
    FROM threshold_rules WHERE failures > 0 AND enabled
    UNION ALL
    SELECT site_id, 'run_request', id, failures, retry_at
    FROM run_requests WHERE failures > 0 AND status = 'waiting'
    UNION ALL
    -- still retried, or given up within the window; the class written out, not a
    -- parameter, so that a generic plan still uses the partial index
    SELECT site_id, 'webhook_delivery', id, attempts,
           CASE WHEN status = 'pending' THEN next_attempt_at END
    FROM webhook_deliveries
    WHERE last_error = 'internal_error'
      AND (status = 'pending' OR last_attempt_at
           >= CAST(:now AS timestamptz) - make_interval(secs => :gateway_window_s))
) AS f
GROUP BY f.site_id
"""

_HOLDING = """unnest(CAST(:sites AS uuid[]), CAST(:kinds AS text[]), CAST(:subjects AS uuid[]),
                     CAST(:severities AS text[]), CAST(:subject_types AS text[]),
                     CAST(:messages AS text[]), CAST(:details AS text[]))
              AS h(site_id, kind, subject_id, severity, subject_type, message, detail)"""

_CLEAR = f"""
UPDATE alerts AS a SET status = 'cleared', cleared_at = :now
WHERE a.status <> 'cleared'
  AND NOT EXISTS (SELECT 1 FROM {_HOLDING}
                  WHERE h.site_id = a.site_id AND h.kind = a.kind AND h.subject_id = a.subject_id)
RETURNING a.*
"""

_TOUCH = f"""
UPDATE alerts AS a SET last_seen_at = :now, message = h.message, detail = CAST(h.detail AS jsonb)
FROM {_HOLDING}
WHERE a.status <> 'cleared'
  AND a.site_id = h.site_id AND a.kind = h.kind AND a.subject_id = h.subject_id
"""

_RAISE = f"""
INSERT INTO alerts (id, created_at, site_id, kind, severity, subject_type, subject_id, status,
                    message, detail, raised_at, last_seen_at)
SELECT gen_random_uuid(), :now, h.site_id, h.kind, h.severity, h.subject_type, h.subject_id,
       'raised', h.message, CAST(h.detail AS jsonb), :now, :now
FROM {_HOLDING}
ON CONFLICT (site_id, kind, subject_id) WHERE status <> 'cleared' DO NOTHING
RETURNING alerts.*
"""


@dataclass(frozen=True)
class Condition:
    site_id: uuid.UUID
    kind: AlertKind
    subject_id: uuid.UUID
    detail: dict[str, Any]

    @property
    def severity(self) -> Severity:
        return SEVERITY[self.kind]

    @property
    def subject_type(self) -> SubjectType:
        return SUBJECT_TYPE[self.kind]

    @property
    def message(self) -> str:
        return MESSAGES[self.kind](self.detail)[:1000]


@dataclass
class Evaluation:
    holding: int = 0
    raised: list[uuid.UUID] = field(default_factory=list)
    cleared: list[uuid.UUID] = field(default_factory=list)
    deliveries: int = 0
    skipped: bool = False
    """True when another evaluation held the lock: this run did nothing."""


SEVERITY = {
    AlertKind.sensor_out_of_band: Severity.warning,
    AlertKind.sensor_silent: Severity.warning,
    AlertKind.pump_fault: Severity.critical,
    AlertKind.gateway_failure: Severity.critical,
    AlertKind.quarantine_rate: Severity.warning,
    # The pump is latched in fault too (pump_fault, critical): this one says why.
    AlertKind.actuation_unconfirmed: Severity.warning,
    # Water may be running that nobody can stop from here.
    AlertKind.stop_unconfirmed: Severity.critical,
    AlertKind.unexpected_run: Severity.critical,
    # The other rows and sites went on; this one is retried with back-off.
    AlertKind.automation_failure: Severity.warning,
    # The run was stopped. `no_flow` and `high_flow` latch the pump's fault too (pump_fault,
    # critical): these say why.
    AlertKind.low_flow: Severity.warning,
    AlertKind.no_flow: Severity.warning,
    AlertKind.high_flow: Severity.warning,
    # Water runs that nobody asked for.
    AlertKind.leak: Severity.critical,
}

SUBJECT_TYPE = {
    AlertKind.sensor_out_of_band: SubjectType.sensor,
    AlertKind.sensor_silent: SubjectType.sensor,
    AlertKind.pump_fault: SubjectType.pump,
    AlertKind.gateway_failure: SubjectType.site,
    AlertKind.quarantine_rate: SubjectType.site,
    AlertKind.actuation_unconfirmed: SubjectType.pump,
    AlertKind.stop_unconfirmed: SubjectType.pump,
    AlertKind.unexpected_run: SubjectType.pump,
    AlertKind.automation_failure: SubjectType.site,
    AlertKind.low_flow: SubjectType.pump,
    AlertKind.no_flow: SubjectType.pump,
    AlertKind.high_flow: SubjectType.pump,
    AlertKind.leak: SubjectType.water_source,
}


def _num(value: float) -> str:
    return f"{value:g}"


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    if minutes < 120:
        return f"{minutes} minute{'s' if minutes != 1 else ''}"
    hours = round(seconds / 3600)
    if hours < 48:
        return f"{hours} hours"
    return f"{round(seconds / 86400)} days"


def _out_of_band(d: dict[str, Any]) -> str:
    value, low, high = d["value"], d["alert_min"], d["alert_max"]
    unit = f" {d['unit']}" if d.get("unit") else ""
    if low is not None and high is not None:
        band = f"its alert band {_num(low)} to {_num(high)}{unit}"
    elif low is not None:
        band = f"its alert minimum {_num(low)}{unit}"
    else:
        band = f"its alert maximum {_num(high)}{unit}"
    side = "below" if low is not None and value < low else "above"
    return f"Sensor '{d['sensor_name']}' reads {_num(value)}{unit}, {side} {band}."


def _silent(d: dict[str, Any]) -> str:
    limit = _duration(d["silent_after_s"])
    if d["last_seen_at"] is None:
        return (
            f"Sensor '{d['sensor_name']}' has not sent a reading since it was created "
            f"{_duration(d['silent_for_s'])} ago (alert after {limit} of silence)."
        )
    return (
        f"Sensor '{d['sensor_name']}' has been silent for {_duration(d['silent_for_s'])} "
        f"(alert after {limit})."
    )


def _pump_fault(d: dict[str, Any]) -> str:
    return f"Pump '{d['pump_name']}' is in fault: {d['fault']}. Reset it once it is fixed."


def _gateway(d: dict[str, Any]) -> str:
    count = d["failures"]
    runs = "activation" if count == 1 else "activations"
    return (
        f"{count} pump {runs} failed at the gateway in the last {_duration(d['window_s'])} "
        f"(latest: pump '{d['latest_pump_name']}': {d['latest_error'] or 'no detail'})."
    )


def _actuation_unconfirmed(d: dict[str, Any]) -> str:
    return (
        f"Pump '{d['pump_name']}' did not confirm a start ({d['fault']}); it was halted and "
        "is latched in fault. Check its relay and wiring, then reset it."
    )


def _stop_unconfirmed(d: dict[str, Any]) -> str:
    return (
        f"Pump '{d['pump_name']}' did not confirm a stop ({d['fault']}): it may run until its "
        "own auto-off. Check it on site now, then reset it."
    )


def _unexpected_run(d: dict[str, Any]) -> str:
    times = "once" if d["runs"] == 1 else f"{d['runs']} times"
    return (
        f"Pump '{d['pump_name']}' (device {d['hardware_id']}) was found running with no run "
        f"of ours ({times} in the last {_duration(d['window_s'])}, latest command "
        f"{d['latest_command_id'] or 'unknown'}); it was halted."
    )


def _quarantine(d: dict[str, Any]) -> str:
    return (
        f"{d['rate']:.0%} of the {d['total']} readings ingested in the last "
        f"{_duration(d['window_s'])} were quarantined (threshold {d['threshold']:.0%})."
    )


_ROW_KINDS = {
    "schedule": "schedule",
    "threshold_rule": "threshold rule",
    "run_request": "run request",
    "webhook_delivery": "webhook delivery",
}


def _automation_failure(d: dict[str, Any]) -> str:
    # The row's kind and id, never the exception's text (that is in the worker's log).
    failures = d["failures"]
    times = "once" if failures == 1 else f"{failures} times"
    if d["retry_at"] is None:
        then = "it was given up"
    else:
        again = datetime.fromisoformat(d["retry_at"]).astimezone(UTC)
        then = f"tried again from {again:%Y-%m-%d %H:%M:%S} UTC"
    others = d["rows"] - 1
    more = f" {others} more of this site's rows failed too." if others else ""
    return (
        f"Processing {_ROW_KINDS.get(d['row_kind'], d['row_kind'])} {d['row_id']} failed "
        f"{times} ({then}); the site's other rows and other sites went on.{more}"
    )


def _flow_cause(fault: str) -> str:
    """The figures of a flow fault (`no_flow: mean ...`), without its code."""
    return fault.split(": ", 1)[-1]


def _low_flow(d: dict[str, Any]) -> str:
    latest = d["latest"] or {}
    times = "once" if d["runs"] == 1 else f"{d['runs']} times"
    figures = ""
    if "mean_flow_lpm" in latest:
        figures = (
            f" (latest: mean {latest['mean_flow_lpm']:g} L/min, {latest['flow_pct']:g} % of "
            f"the expected {latest['expected_flow_lpm']:g} L/min)"
        )
    return (
        f"Pump '{d['pump_name']}' was stopped for low flow {times} in the last "
        f"{_duration(d['window_s'])}{figures}. Check its intake, filters and valves."
    )


def _no_flow(d: dict[str, Any]) -> str:
    return (
        f"Pump '{d['pump_name']}' ran with no flow ({_flow_cause(d['fault'])}): a dry pump, a "
        "closed valve or a blocked line. Its run was stopped and it is latched in fault; "
        "reset it once it is fixed."
    )


def _high_flow(d: dict[str, Any]) -> str:
    return (
        f"Pump '{d['pump_name']}' drew too much water ({_flow_cause(d['fault'])}): a burst "
        "pipe or an open line. Its run was stopped and it is latched in fault; reset it once "
        "it is fixed."
    )


def _leak(d: dict[str, Any]) -> str:
    halted = (
        " It was halted: no run starts on it until it is reset."
        if d["halted_at"] is not None
        else " Reset it once it is fixed."
    )
    lowest = f"at least {_num(d['leak_flow_lpm'])} L/min, " if d["leak_flow_lpm"] else ""
    return (
        f"Water source '{d['source_name']}' had water flowing ({lowest}above its leak "
        f"threshold of {_num(d['leak_threshold_lpm'])} L/min) for {d['leak_after_s']} s while "
        f"none of its pumps ran.{halted}"
    )


MESSAGES: dict[AlertKind, Callable[[dict[str, Any]], str]] = {
    AlertKind.sensor_out_of_band: _out_of_band,
    AlertKind.sensor_silent: _silent,
    AlertKind.pump_fault: _pump_fault,
    AlertKind.gateway_failure: _gateway,
    AlertKind.quarantine_rate: _quarantine,
    AlertKind.actuation_unconfirmed: _actuation_unconfirmed,
    AlertKind.stop_unconfirmed: _stop_unconfirmed,
    AlertKind.unexpected_run: _unexpected_run,
    AlertKind.automation_failure: _automation_failure,
    AlertKind.low_flow: _low_flow,
    AlertKind.no_flow: _no_flow,
    AlertKind.high_flow: _high_flow,
    AlertKind.leak: _leak,
}


async def holding_conditions(
    session: AsyncSession, settings: Settings, now: datetime
) -> list[Condition]:
    rows = await session.execute(
        text(_CONDITIONS),
        {
            "now": now,
            "gateway_window_s": settings.alert_gateway_window_s,
            "quarantine_window_s": settings.alert_quarantine_window_s,
            "threshold": settings.alert_quarantine_threshold,
            "min_items": settings.alert_quarantine_min_items,
            "not_confirmed": f"{NOT_CONFIRMED}:%",
            "stop_unconfirmed": f"{STOP_UNCONFIRMED}:%",
            "not_confirmed_error": NOT_CONFIRMED,
            "stop_unconfirmed_error": STOP_UNCONFIRMED,
            "unexpected_run": UNEXPECTED_RUN,
            "no_flow": f"{NO_FLOW}:%",
            "high_flow": f"{HIGH_FLOW}:%",
            "low_flow": LOW_FLOW,
        },
    )
    return [
        Condition(site_id, AlertKind(kind), subject_id, detail)
        for site_id, kind, subject_id, detail in rows.all()
    ]


def _holding_params(conditions: list[Condition]) -> dict[str, list[Any]]:
    return {
        "sites": [c.site_id for c in conditions],
        "kinds": [c.kind.value for c in conditions],
        "subjects": [c.subject_id for c in conditions],
        "severities": [c.severity.value for c in conditions],
        "subject_types": [c.subject_type.value for c in conditions],
        "messages": [c.message for c in conditions],
        "details": [json.dumps(c.detail) for c in conditions],
    }


async def evaluate_alerts(
    session: AsyncSession, settings: Settings, now: datetime | None = None
) -> Evaluation:
    """Raise, touch and clear alerts for every site; one transaction, committed here."""
    now = now or utcnow()
    async with session.begin():
        locked = await session.execute(
            text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": EVALUATION_LOCK}
        )
        if not locked.scalar_one():
            return Evaluation(skipped=True)
        conditions = await holding_conditions(session, settings, now)
        params: dict[str, Any] = {**_holding_params(conditions), "now": now}
        cleared = (await session.scalars(select(Alert).from_statement(text(_CLEAR)), params)).all()
        await session.execute(text(_TOUCH), params)
        raised = (await session.scalars(select(Alert).from_statement(text(_RAISE)), params)).all()
        events = [notify.alert_event(WebhookEvent.alert_raised, a) for a in raised]
        events += [notify.alert_event(WebhookEvent.alert_cleared, a) for a in cleared]
        deliveries = await notify.alert_changes(session, events)
    if raised or cleared:
        log.info("alerts_evaluated", raised=len(raised), cleared=len(cleared))
    return Evaluation(
        holding=len(conditions),
        raised=[a.id for a in raised],
        cleared=[a.id for a in cleared],
        deliveries=deliveries,
    )
