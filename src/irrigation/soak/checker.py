"""The offline checker: a pure function from a soak's history to the safety violations
in it, judged from the simulator's truth (what the devices really did), never from the
service's own tables; the API's final read is only compared with that truth.

A device is `(site_id, hardware_id)`. A truth run that names no site (a simulator that
addressed devices by hardware_id alone) is placed at the only site with a pump of that
hardware_id; when several sites have one, at the site of the activation whose command it
carries (the pump whose owner asked for it); else nowhere (its checks that need a pump are
skipped, and a run nobody owns is flagged anyway).

Invariants (`Violation.invariant`):

- `overlap`: two runs on one device at once (a double start).
- `max_runtime`: a run longer than its pump's `max_runtime_s` + `Tolerances.runtime_s`.
- `cooldown`: a run starting before the previous run's stop on that device + the pump's
  `cooldown_s` - `Tolerances.cooldown_s`.
- `capacity`: more devices of one water source running at one instant than its
  `max_concurrent_pumps`, or, for a source with a `max_flow_lpm`, the nominal flows of its
  running devices adding up past it at one instant (a pump without `nominal_flow_lpm`
  counts as the whole budget, as the service counts it) by more than
  `Tolerances.flow_lpm`.
- `not_terminal`: an admitted run (a 202) that is missing from the final read or not in a
  terminal state there; any activation left active; a run request still waiting.
- `unowned_run`: a run in truth whose `command_id` is no activation's.
- `db_truth`: the database disagrees with truth at the end: a run whose activation the API
  reports as never having run (expired, rejected, aborted before it was handed to the
  device), or as belonging to another device; an activation the API reports completed or
  aborted after it started with no run in truth; an activation completed (ran its course)
  whose run in truth was shorter than asked, and ended before the stop time the API
  reports, each by more than `Tolerances.agreement_s`; a device still running when the
  history ends."""

from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from irrigation.soak.history import Activation, History, Pump, TruthRun, iso

OVERLAP = "overlap"
MAX_RUNTIME = "max_runtime"
COOLDOWN = "cooldown"
CAPACITY = "capacity"
NOT_TERMINAL = "not_terminal"
UNOWNED_RUN = "unowned_run"
DB_TRUTH = "db_truth"
INVARIANTS = (OVERLAP, MAX_RUNTIME, COOLDOWN, CAPACITY, NOT_TERMINAL, UNOWNED_RUN, DB_TRUTH)

# The terminal statuses in which the device may have run the command.
MAY_HAVE_RUN = frozenset({"completed", "aborted", "failed"})

Device = tuple[str | None, str]


@dataclass(frozen=True)
class Tolerances:
    """How far truth may stray before it counts, in seconds."""

    # A run may outlast its cap by this much: a real device's timer wakes up late.
    runtime_s: float = 0.5
    # A start this much before its cooldown ends still counts as rested: clock granularity.
    cooldown_s: float = 0.05
    # A completed run may be this much shorter in truth than the activation asked.
    agreement_s: float = 0.5
    # Flows are floats: a sum this far past a source's budget still fits.
    flow_lpm: float = 1e-6


@dataclass(frozen=True)
class Violation:
    invariant: str
    detail: str
    at: datetime | None = None
    until: datetime | None = None
    site_id: str | None = None
    hardware_id: str | None = None
    activation_id: str | None = None

    def to_json(self) -> dict[str, str | None]:
        return {
            "invariant": self.invariant,
            "detail": self.detail,
            "at": iso(self.at),
            "until": iso(self.until),
            "site_id": self.site_id,
            "hardware_id": self.hardware_id,
            "activation_id": self.activation_id,
        }

    def __str__(self) -> str:
        where = f"{self.site_id or '?'}/{self.hardware_id}" if self.hardware_id else "-"
        span = iso(self.at) or ""
        if self.until is not None:
            span += f" .. {iso(self.until)}"
        activation = f" activation {self.activation_id}" if self.activation_id else ""
        return f"{self.invariant}: {self.detail} [device {where}{activation}; {span}]"


def check(history: History, tolerances: Tolerances | None = None) -> list[Violation]:
    """Every violation in `history`, in the order of the invariants above."""
    return _Check(history, tolerances or Tolerances()).run()


def _more_than(limit: int) -> Callable[[set[Device]], bool]:
    return lambda running: len(running) > limit


def _names(devices: set[Device]) -> str:
    return ", ".join(f"{s}/{h}" for s, h in sorted((s or "?", h) for s, h in devices))


def _seconds(a: datetime, b: datetime) -> float:
    return (b - a).total_seconds()


class _Check:
    def __init__(self, history: History, tolerances: Tolerances) -> None:
        self.history = history
        self.tol = tolerances
        config = history.config
        self.pump_at: dict[Device, Pump] = {(p.site_id, p.hardware_id): p for p in config.pumps}
        self.pump_by_id = {p.id: p for p in config.pumps}
        self.sites_of: dict[str, set[str]] = defaultdict(set)
        for p in config.pumps:
            self.sites_of[p.hardware_id].add(p.site_id)
        self.capacity = {w.id: w.max_concurrent_pumps for w in config.water_sources}
        self.max_flow = {
            w.id: w.max_flow_lpm for w in config.water_sources if w.max_flow_lpm is not None
        }
        final = history.final
        self.activations = final.activations if final is not None else []
        self.by_command = {a.command_id: a for a in self.activations}
        truth = history.truth
        self.runs = sorted(truth.runs if truth else [], key=lambda r: r.started_at)
        self.end = truth.read_at if truth is not None else None

    def run(self) -> list[Violation]:
        found: list[Violation] = []
        by_device: dict[Device, list[TruthRun]] = defaultdict(list)
        for run in self.runs:
            by_device[self.device(run)].append(run)
        for device, runs in sorted(by_device.items(), key=lambda kv: (kv[0][0] or "", kv[0][1])):
            found += self.overlap_and_cooldown(device, runs)
        found += self.max_runtime()
        found += self.capacity_breaches(by_device)
        found += self.not_terminal()
        found += self.db_truth()
        order = {name: i for i, name in enumerate(INVARIANTS)}
        return sorted(found, key=lambda v: order[v.invariant])

    # Where a run happened ------------------------------------------------------------

    def device(self, run: TruthRun) -> Device:
        if run.site_id is not None:
            return run.site_id, run.hardware_id
        sites = self.sites_of.get(run.hardware_id, set())
        if len(sites) == 1:
            return next(iter(sites)), run.hardware_id
        owner = self.by_command.get(run.command_id)
        pump = self.pump_by_id.get(owner.pump_id) if owner is not None else None
        if pump is not None and pump.hardware_id == run.hardware_id:
            return pump.site_id, run.hardware_id
        return None, run.hardware_id

    def stop_of(self, run: TruthRun) -> datetime | None:
        """When the run ended; still on: the end of the history (None if it has none)."""
        return run.stopped_at or self.end

    def violation(
        self,
        invariant: str,
        device: Device,
        run: TruthRun,
        detail: str,
        at: datetime | None = None,
        until: datetime | None = None,
    ) -> Violation:
        """About one run: its times unless others are given, and its owner if it has one."""
        owner = self.by_command.get(run.command_id)
        return Violation(
            invariant=invariant,
            detail=detail,
            site_id=device[0],
            hardware_id=device[1],
            activation_id=owner.id if owner is not None else None,
            at=at or run.started_at,
            until=until or self.stop_of(run),
        )

    # Per device ----------------------------------------------------------------------

    def overlap_and_cooldown(self, device: Device, runs: list[TruthRun]) -> list[Violation]:
        found: list[Violation] = []
        pump = self.pump_at.get(device) if device[0] is not None else None
        previous: TruthRun | None = None
        previous_stop: datetime | None = None
        for run in runs:
            if previous is not None and previous_stop is not None:
                if run.started_at < previous_stop:
                    found.append(
                        self.violation(
                            OVERLAP,
                            device,
                            run,
                            f"command {run.command_id} started while command "
                            f"{previous.command_id} ran (started {iso(previous.started_at)}, "
                            f"stopped {iso(previous.stopped_at) or 'never'})",
                        )
                    )
                elif pump is not None:
                    rested = _seconds(previous_stop, run.started_at)
                    if rested < pump.cooldown_s - self.tol.cooldown_s:
                        found.append(
                            self.violation(
                                COOLDOWN,
                                device,
                                run,
                                f"command {run.command_id} started {rested:.3f} s after "
                                f"command {previous.command_id} stopped; the pump's "
                                f"cooldown is {pump.cooldown_s} s",
                                at=previous_stop,
                                until=run.started_at,
                            )
                        )
            stop = self.stop_of(run)
            if previous_stop is None or stop is None or stop >= previous_stop:
                previous, previous_stop = run, stop
        return found

    def max_runtime(self) -> list[Violation]:
        found: list[Violation] = []
        for run in self.runs:
            device = self.device(run)
            pump = self.pump_at.get(device) if device[0] is not None else None
            stop = self.stop_of(run)
            if pump is None or stop is None:
                continue
            ran = _seconds(run.started_at, stop)
            if ran > pump.max_runtime_s + self.tol.runtime_s:
                still = "" if run.stopped_at else " and was still on"
                found.append(
                    self.violation(
                        MAX_RUNTIME,
                        device,
                        run,
                        f"command {run.command_id} ran {ran:.3f} s{still}; the pump's "
                        f"max_runtime_s is {pump.max_runtime_s}",
                    )
                )
        return found

    def capacity_breaches(self, by_device: dict[Device, list[TruthRun]]) -> list[Violation]:
        """Sweep each water source's starts and stops in time order; a device counts once
        however many runs it has on (a double start is an `overlap`, not more water)."""
        events: dict[str, list[tuple[datetime, int, Device]]] = defaultdict(list)
        for device, runs in by_device.items():
            pump = self.pump_at.get(device) if device[0] is not None else None
            if pump is None:
                continue
            for run in runs:
                stop = self.stop_of(run)
                events[pump.water_source_id].append((run.started_at, 1, device))
                if stop is not None:
                    # At one instant, a stop sorts before a start: touching is not overlapping.
                    events[pump.water_source_id].append((stop, -1, device))
        found: list[Violation] = []
        for source_id, timeline in sorted(events.items()):
            limit = self.capacity.get(source_id)
            if limit is not None:
                found += self._breaches(source_id, timeline, _more_than(limit), self._capacity)
            max_flow = self.max_flow.get(source_id)
            if max_flow is not None:
                found += self._breaches(source_id, timeline, self._overdrawn(max_flow), self._flow)
        return found

    def _overdrawn(self, max_flow: float) -> Callable[[set[Device]], bool]:
        return lambda running: self.flow_of(running, max_flow) > max_flow + self.tol.flow_lpm

    def flow_of(self, devices: set[Device], max_flow: float) -> float:
        """What these devices draw, each at its pump's nominal flow (unknown: the budget)."""
        flows = (self.pump_at[d].nominal_flow_lpm for d in devices)
        return sum(max_flow if f is None else f for f in flows)

    def _breaches(
        self,
        source_id: str,
        timeline: list[tuple[datetime, int, Device]],
        over: Callable[[set[Device]], bool],
        violation: Callable[[str, set[Device], datetime, datetime | None], Violation],
    ) -> list[Violation]:
        """The spans of `timeline` during which the devices on are `over` the source's
        limit, each with every device that was on during it."""
        found: list[Violation] = []
        on: Counter[Device] = Counter()
        breach_at: datetime | None = None
        peak: set[Device] = set()
        for moment, delta, device in sorted(timeline, key=lambda e: (e[0], e[1])):
            on[device] += delta
            running = {d for d, n in on.items() if n > 0}
            if over(running) and breach_at is None:
                breach_at, peak = moment, set(running)
            elif over(running):
                peak |= running
            elif breach_at is not None:
                found.append(violation(source_id, peak, breach_at, moment))
                breach_at, peak = None, set()
        if breach_at is not None:
            found.append(violation(source_id, peak, breach_at, self.end))
        return found

    def _capacity(
        self, source_id: str, devices: set[Device], at: datetime, until: datetime | None
    ) -> Violation:
        return Violation(
            invariant=CAPACITY,
            detail=f"water source {source_id} had {len(devices)} devices running at once "
            f"({_names(devices)}); its max_concurrent_pumps is {self.capacity[source_id]}",
            at=at,
            until=until,
        )

    def _flow(
        self, source_id: str, devices: set[Device], at: datetime, until: datetime | None
    ) -> Violation:
        max_flow = self.max_flow[source_id]
        return Violation(
            invariant=CAPACITY,
            detail=f"water source {source_id} had devices drawing "
            f"{self.flow_of(devices, max_flow):g} L/min at once ({_names(devices)}); its "
            f"max_flow_lpm is {max_flow:g}",
            at=at,
            until=until,
        )

    # The end -------------------------------------------------------------------------

    def not_terminal(self) -> list[Violation]:
        found: list[Violation] = []
        final = self.history.final
        if final is None:
            return [Violation(NOT_TERMINAL, "the history has no final read of the API")]
        by_id = {a.id: a for a in final.activations}
        requests = {r.id: r for r in final.run_requests}
        for op in self.history.operations:
            if op.status != 202:
                continue
            if op.activation_id is not None and op.activation_id not in by_id:
                found.append(
                    Violation(
                        NOT_TERMINAL,
                        f"admitted by operation {op.id} but missing from the final read",
                        at=op.sent_at,
                        activation_id=op.activation_id,
                    )
                )
            if op.run_request_id is not None and op.run_request_id not in requests:
                found.append(
                    Violation(
                        NOT_TERMINAL,
                        f"run request {op.run_request_id} (operation {op.id}) is missing "
                        "from the final read",
                        at=op.sent_at,
                    )
                )
        for activation in final.activations:
            if not activation.is_terminal:
                site_id, hardware_id = self._device_of(activation)
                found.append(
                    Violation(
                        NOT_TERMINAL,
                        f"still {activation.status} at the end",
                        at=activation.requested_at,
                        site_id=site_id,
                        hardware_id=hardware_id,
                        activation_id=activation.id,
                    )
                )
        for request in final.run_requests:
            if request.status == "waiting":
                found.append(
                    Violation(NOT_TERMINAL, f"run request {request.id} still waiting at the end")
                )
        return found

    def _device_of(self, activation: Activation) -> tuple[str, str | None]:
        pump = self.pump_by_id.get(activation.pump_id)
        return activation.site_id, pump.hardware_id if pump is not None else None

    def db_truth(self) -> list[Violation]:
        found: list[Violation] = []
        runs_of: dict[str, list[TruthRun]] = defaultdict(list)
        for run in self.runs:
            device = self.device(run)
            runs_of[run.command_id].append(run)
            owner = self.by_command.get(run.command_id)
            if run.stopped_at is None:
                status = owner.status if owner is not None else "unknown"
                found.append(
                    self.violation(
                        DB_TRUTH,
                        device,
                        run,
                        f"command {run.command_id} still running when the history ends "
                        f"(its activation is {status})",
                    )
                )
            if owner is None:
                found.append(
                    self.violation(
                        UNOWNED_RUN,
                        device,
                        run,
                        f"command {run.command_id} ran, and no activation has that command_id",
                    )
                )
                continue
            never_ran = owner.status in ("expired", "rejected", "queued") or (
                owner.status == "aborted" and not owner.reached_starting
            )
            if never_ran:
                found.append(
                    self.violation(
                        DB_TRUTH,
                        device,
                        run,
                        f"command {run.command_id} ran, but the API reports its activation "
                        f"{owner.status} without ever starting",
                    )
                )
            pump = self.pump_by_id.get(owner.pump_id)
            if pump is not None and (
                pump.hardware_id != run.hardware_id
                or (run.site_id is not None and run.site_id != pump.site_id)
            ):
                found.append(
                    self.violation(
                        DB_TRUTH,
                        device,
                        run,
                        f"command {run.command_id} ran on {run.site_id or '?'}/"
                        f"{run.hardware_id}, but its activation's pump is "
                        f"{pump.site_id}/{pump.hardware_id}",
                    )
                )
        for activation in self.activations:
            site_id, hardware_id = self._device_of(activation)
            mine = runs_of.get(activation.command_id, [])
            said_it_ran = activation.started_at is not None and activation.status in (
                "completed",
                "aborted",
            )
            if said_it_ran and not mine:
                found.append(
                    Violation(
                        DB_TRUTH,
                        f"the API reports it {activation.status} after starting at "
                        f"{iso(activation.started_at)}, but no device ran command "
                        f"{activation.command_id}",
                        at=activation.started_at,
                        until=activation.stopped_at,
                        site_id=site_id,
                        hardware_id=hardware_id,
                        activation_id=activation.id,
                    )
                )
            if activation.status == "completed" and mine:
                found += self._cut_short(activation, mine, site_id, hardware_id)
        return found

    def _cut_short(
        self,
        activation: Activation,
        mine: list[TruthRun],
        site_id: str,
        hardware_id: str | None,
    ) -> list[Violation]:
        """A completed run that the device ended early, while the API went on believing it
        ran (its stop time is later than the device's). One the API saw end early, with
        the device's own stop time, agrees with truth."""
        run = max(mine, key=lambda r: _seconds(r.started_at, self.stop_of(r) or r.started_at))
        stop = self.stop_of(run) or run.started_at
        ran = _seconds(run.started_at, stop)
        if ran >= activation.duration_s - self.tol.agreement_s:
            return []
        believed = activation.stopped_at
        if believed is not None and _seconds(stop, believed) <= self.tol.agreement_s:
            return []
        return [
            Violation(
                DB_TRUTH,
                f"the API reports it completed its {activation.duration_s} s (stopped at "
                f"{iso(believed)}), but the device ran command {activation.command_id} for "
                f"{ran:.3f} s",
                at=run.started_at,
                until=stop,
                site_id=site_id,
                hardware_id=hardware_id,
                activation_id=activation.id,
            )
        ]


def summary(violations: list[Violation]) -> dict[str, int]:
    """How many violations of each invariant (those with none left out)."""
    counts = Counter(v.invariant for v in violations)
    return {name: counts[name] for name in INVARIANTS if counts[name]}
