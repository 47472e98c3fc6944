"""What a soak records, and its reader: one JSON object per line (JSON Lines), each with
its `type`, written as the soak goes so that a soak that dies still leaves its history.

- `header`: `format` (`irrigation-soak-history`), `version`, `seed`, `params` (the
  soak's parameters, and the `plan` drawn from the seed), `started_at`.
- `config`: `sites` (`id`, `name`), `water_sources` (`id`, `site_id`, `name`,
  `max_concurrent_pumps`, `max_flow_lpm`), `pumps` (`id`, `site_id`, `name`,
  `hardware_id`, `max_runtime_s`, `cooldown_s`, `water_source_id`, `nominal_flow_lpm`);
  the flows are null when unset, and absent in older histories (read as null).
- `op`: one client operation: `id`, `client` (-1: the runner's own at the end), `action`
  (`activate`, `queue`, `stop`, `stop_all`, `reset`, `cancel`, `disable_schedule`),
  `site_id`, `pump_id`, `request` (method, path, body, attempts), `sent_at`, `answered_at`,
  `status` (null: no answer), `body`, `error`, and what the body says: `activation_id` (a
  202 activation), `run_request_id` (a 202 run request), `code` (a refusal's), `stopped`
  (activation ids a stop stopped).
- `fault`: one fault applied: `id`, `action`, `target`, `params`, `at`, `until`, `outcome`.
- `final`: read from the API once the stack is quiet: `read_at`, `quiescent`, `activations`
  (as the API reports them, with `site_id` and `reached_starting`: whether the audit trail
  shows it was ever handed to the device), `run_requests`.
- `truth`: the simulator's `GET /truth` at the end: `read_at`, `runs` (`hardware_id`,
  `command_id`, `sequence`, `started_at`, `stopped_at`, `stopped_by`, and `site_id` when
  the simulator addresses devices by site; absent in older simulators).

Times are ISO 8601 with their UTC offset. Lines of an unknown `type` are skipped, so an
older reader still reads a newer history."""

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

FORMAT = "irrigation-soak-history"
VERSION = 1

TERMINAL = frozenset({"completed", "rejected", "expired", "failed", "aborted"})

Json = dict[str, Any]


def parse_time(value: str | None) -> datetime | None:
    if value is None:
        return None
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        raise ValueError(f"time without a UTC offset: {value!r}")
    return moment


def _flow(value: Any) -> float | None:
    return None if value is None else float(value)


def _time(value: str) -> datetime:
    moment = parse_time(value)
    assert moment is not None
    return moment


def iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


@dataclass(frozen=True)
class Site:
    id: str
    name: str


@dataclass(frozen=True)
class WaterSource:
    id: str
    site_id: str
    name: str
    max_concurrent_pumps: int
    max_flow_lpm: float | None = None


@dataclass(frozen=True)
class Pump:
    id: str
    site_id: str
    name: str
    hardware_id: str
    max_runtime_s: int
    cooldown_s: int
    water_source_id: str
    nominal_flow_lpm: float | None = None


@dataclass(frozen=True)
class Config:
    sites: list[Site]
    water_sources: list[WaterSource]
    pumps: list[Pump]

    def to_json(self) -> Json:
        return {
            "type": "config",
            "sites": [vars(s) for s in self.sites],
            "water_sources": [vars(w) for w in self.water_sources],
            "pumps": [vars(p) for p in self.pumps],
        }

    @classmethod
    def from_json(cls, data: Json) -> "Config":
        return cls(
            sites=[Site(id=s["id"], name=s["name"]) for s in data["sites"]],
            water_sources=[
                WaterSource(
                    id=w["id"],
                    site_id=w["site_id"],
                    name=w.get("name", ""),
                    max_concurrent_pumps=int(w["max_concurrent_pumps"]),
                    max_flow_lpm=_flow(w.get("max_flow_lpm")),
                )
                for w in data["water_sources"]
            ],
            pumps=[
                Pump(
                    id=p["id"],
                    site_id=p["site_id"],
                    name=p.get("name", p["hardware_id"]),
                    hardware_id=p["hardware_id"],
                    max_runtime_s=int(p["max_runtime_s"]),
                    cooldown_s=int(p["cooldown_s"]),
                    water_source_id=p["water_source_id"],
                    nominal_flow_lpm=_flow(p.get("nominal_flow_lpm")),
                )
                for p in data["pumps"]
            ],
        )


@dataclass(frozen=True)
class Operation:
    """One request a client sent, and what came back (nothing, if `status` is None)."""

    id: int
    client: int
    action: str
    site_id: str
    pump_id: str | None
    request: Json
    sent_at: datetime
    answered_at: datetime | None
    status: int | None
    body: Any = None
    error: str | None = None
    activation_id: str | None = None
    run_request_id: str | None = None
    code: str | None = None
    stopped: list[str] = field(default_factory=list)

    def to_json(self) -> Json:
        return {
            "type": "op",
            **{k: v for k, v in vars(self).items() if k not in ("sent_at", "answered_at")},
            "sent_at": iso(self.sent_at),
            "answered_at": iso(self.answered_at),
        }

    @classmethod
    def from_json(cls, data: Json) -> "Operation":
        return cls(
            id=int(data["id"]),
            client=int(data.get("client", 0)),
            action=data["action"],
            site_id=data["site_id"],
            pump_id=data.get("pump_id"),
            request=data.get("request") or {},
            sent_at=_time(data["sent_at"]),
            answered_at=parse_time(data.get("answered_at")),
            status=data.get("status"),
            body=data.get("body"),
            error=data.get("error"),
            activation_id=data.get("activation_id"),
            run_request_id=data.get("run_request_id"),
            code=data.get("code"),
            stopped=list(data.get("stopped") or []),
        )


@dataclass(frozen=True)
class FaultEvent:
    """One fault as applied: `until` is when it was lifted (None: it is instantaneous)."""

    id: int
    action: str
    target: str | None
    params: Json
    at: datetime
    until: datetime | None
    outcome: str

    def to_json(self) -> Json:
        return {
            "type": "fault",
            "id": self.id,
            "action": self.action,
            "target": self.target,
            "params": self.params,
            "at": iso(self.at),
            "until": iso(self.until),
            "outcome": self.outcome,
        }

    @classmethod
    def from_json(cls, data: Json) -> "FaultEvent":
        return cls(
            id=int(data["id"]),
            action=data["action"],
            target=data.get("target"),
            params=data.get("params") or {},
            at=_time(data["at"]),
            until=parse_time(data.get("until")),
            outcome=data.get("outcome", ""),
        )


@dataclass(frozen=True)
class Activation:
    """An activation as the API reports it at the end."""

    id: str
    site_id: str
    pump_id: str
    status: str
    command_id: str
    sequence: int | None
    duration_s: int
    origin: str
    requested_at: datetime | None
    started_at: datetime | None
    stopped_at: datetime | None
    stop_cause: str | None
    error: str | None
    # The audit trail shows `starting`: the command may have reached the device.
    reached_starting: bool

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL

    def to_json(self) -> Json:
        times = ("requested_at", "started_at", "stopped_at")
        return {
            **{k: v for k, v in vars(self).items() if k not in times},
            **{k: iso(getattr(self, k)) for k in times},
        }

    @classmethod
    def from_json(cls, data: Json) -> "Activation":
        started_at = parse_time(data.get("started_at"))
        return cls(
            id=data["id"],
            site_id=data["site_id"],
            pump_id=data["pump_id"],
            status=data["status"],
            command_id=data["command_id"],
            sequence=data.get("sequence"),
            duration_s=int(data["duration_s"]),
            origin=data.get("origin", ""),
            requested_at=parse_time(data.get("requested_at")),
            started_at=started_at,
            stopped_at=parse_time(data.get("stopped_at")),
            stop_cause=data.get("stop_cause"),
            error=data.get("error"),
            reached_starting=bool(data.get("reached_starting", started_at is not None)),
        )


@dataclass(frozen=True)
class RunRequestState:
    """A run request (a queued wish) as the API reports it at the end."""

    id: str
    site_id: str
    pump_id: str
    status: str
    activation_id: str | None

    @classmethod
    def from_json(cls, data: Json) -> "RunRequestState":
        return cls(
            id=data["id"],
            site_id=data["site_id"],
            pump_id=data["pump_id"],
            status=data["status"],
            activation_id=data.get("activation_id"),
        )


@dataclass(frozen=True)
class Final:
    read_at: datetime
    quiescent: bool
    activations: list[Activation]
    run_requests: list[RunRequestState]

    def to_json(self) -> Json:
        return {
            "type": "final",
            "read_at": iso(self.read_at),
            "quiescent": self.quiescent,
            "activations": [a.to_json() for a in self.activations],
            "run_requests": [vars(r) for r in self.run_requests],
        }

    @classmethod
    def from_json(cls, data: Json) -> "Final":
        return cls(
            read_at=_time(data["read_at"]),
            quiescent=bool(data.get("quiescent", True)),
            activations=[Activation.from_json(a) for a in data.get("activations", [])],
            run_requests=[RunRequestState.from_json(r) for r in data.get("run_requests", [])],
        )


@dataclass(frozen=True)
class TruthRun:
    """One physical on/off interval of one device, as the simulator saw it."""

    hardware_id: str
    command_id: str
    sequence: int | None
    started_at: datetime
    stopped_at: datetime | None
    stopped_by: str | None
    # None: the simulator addressed devices by hardware_id alone (before sites).
    site_id: str | None = None

    def to_json(self) -> Json:
        data: Json = {
            "hardware_id": self.hardware_id,
            "command_id": self.command_id,
            "sequence": self.sequence,
            "started_at": iso(self.started_at),
            "stopped_at": iso(self.stopped_at),
            "stopped_by": self.stopped_by,
        }
        if self.site_id is not None:
            data["site_id"] = self.site_id
        return data

    @classmethod
    def from_json(cls, data: Json) -> "TruthRun":
        return cls(
            hardware_id=data["hardware_id"],
            command_id=data["command_id"],
            sequence=data.get("sequence"),
            started_at=_time(data["started_at"]),
            stopped_at=parse_time(data.get("stopped_at")),
            stopped_by=data.get("stopped_by"),
            site_id=data.get("site_id"),
        )


@dataclass(frozen=True)
class Truth:
    read_at: datetime
    runs: list[TruthRun]

    def to_json(self) -> Json:
        return {
            "type": "truth",
            "read_at": iso(self.read_at),
            "runs": [r.to_json() for r in self.runs],
        }

    @classmethod
    def from_json(cls, data: Json) -> "Truth":
        return cls(
            read_at=_time(data["read_at"]),
            runs=[TruthRun.from_json(r) for r in data.get("runs", [])],
        )


@dataclass(frozen=True)
class History:
    header: Json
    config: Config
    operations: list[Operation] = field(default_factory=list)
    faults: list[FaultEvent] = field(default_factory=list)
    final: Final | None = None
    truth: Truth | None = None

    @property
    def seed(self) -> int | None:
        seed = self.header.get("seed")
        return int(seed) if seed is not None else None

    def lines(self) -> Iterator[Json]:
        yield {"type": "header", **self.header}
        yield self.config.to_json()
        yield from (op.to_json() for op in self.operations)
        yield from (fault.to_json() for fault in self.faults)
        if self.final is not None:
            yield self.final.to_json()
        if self.truth is not None:
            yield self.truth.to_json()


def header(seed: int, params: Json, started_at: datetime) -> Json:
    """The header line's fields; `params` as JSON gives them back (tuples as lists), so a
    history read from its file equals the one recorded."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "seed": seed,
        "params": json.loads(json.dumps(params, default=str)),
        "started_at": iso(started_at),
    }


def parse(lines: Iterable[str]) -> History:
    """A history from its lines; fails on a missing header or config, or another format."""
    head: Json | None = None
    config: Config | None = None
    operations: list[Operation] = []
    faults: list[FaultEvent] = []
    final: Final | None = None
    truth: Truth | None = None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        data = json.loads(line)
        kind = data.get("type")
        try:
            if kind == "header":
                if data.get("format") != FORMAT:
                    raise ValueError(f"not a soak history: format {data.get('format')!r}")
                head = {k: v for k, v in data.items() if k != "type"}
            elif kind == "config":
                config = Config.from_json(data)
            elif kind == "op":
                operations.append(Operation.from_json(data))
            elif kind == "fault":
                faults.append(FaultEvent.from_json(data))
            elif kind == "final":
                final = Final.from_json(data)
            elif kind == "truth":
                truth = Truth.from_json(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"line {number} ({kind}): {exc!r}") from exc
    if head is None or config is None:
        raise ValueError("a soak history needs its header and config lines")
    return History(head, config, operations, faults, final, truth)


def read(path: Path) -> History:
    with path.open() as f:
        return parse(f)


class Writer:
    """Appends a history's lines as they happen, each flushed at once."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def write(self, line: Json) -> None:
        self.out.write(json.dumps(line, default=str) + "\n")
        self.out.flush()

    def write_all(self, history: History) -> None:
        for line in history.lines():
            self.write(line)
