"""What a soak will do, drawn from its seed alone: the fleet it builds, the operator
requests each client sends and when, and the fault schedule. Timing varies from one run
to the next (a loaded machine answers late); the decisions never do."""

import random
from dataclasses import asdict, dataclass, field
from typing import Any

# What the simulator's `POST /faults` takes: answers slow, failing, hung, lost or never
# given (`offline`), and relays stuck off or on.
DEVICE_FAULTS = (
    "latency_ms",
    "error_rate",
    "hang",
    "drop_ack",
    "offline",
    "stuck_off",
    "stuck_on",
)
PROCESS_FAULTS = ("worker_kill", "worker_pause", "redis_restart", "pg_kill")
# With the MQTT driver, the broker goes down too (SIGKILL: what it had not saved is lost).
MQTT_FAULTS = ("broker_restart",)
GATEWAYS = ("http", "mqtt")

# arq's lease on a job in progress: the longest job timeout of the worker (30 s, pump jobs)
# + 10 s. A worker paused longer than this has its job run again by another worker.
ARQ_LEASE_S = 40.0
WORKERS = 2

# Weights of the requests. `reset` clears a pump's fault latch, as an operator does once
# the device looks fine again: without it, a faulted pump would sit out the rest of a soak.
ACTIONS = {"activate": 58, "queue": 12, "stop": 18, "stop_all": 4, "over_cap": 4, "reset": 4}


@dataclass(frozen=True)
class SoakParams:
    """A soak's knobs; with the seed, they fix the plan."""

    seed: int
    minutes: float = 1.0
    sites: int = 3
    pumps_per_site: int = 3
    # Pumps of several sites with one hardware_id: each site's device is its own.
    shared_hardware_ids: bool = True
    clients: int = 4
    ops_per_s: float = 3.0
    device_faults: tuple[str, ...] = DEVICE_FAULTS
    process_faults: tuple[str, ...] = PROCESS_FAULTS
    # Seconds between one fault and the next, drawn uniformly.
    fault_gap_s: tuple[float, float] = (2.0, 8.0)
    # How long a device fault lasts before it is lifted.
    device_fault_s: tuple[float, float] = (2.0, 8.0)
    # How long a paused worker stays stopped: past arq's lease, so its job runs elsewhere.
    pause_hold_s: float = ARQ_LEASE_S + 5
    # A queued run request may wait this long before it is skipped.
    queue_deadline_s: float = 20.0
    # A schedule firing every minute at each site (automation's own requests).
    schedules: bool = True
    # How the workers reach the devices: the simulator's HTTP dialect or MQTT.
    gateway: str = "http"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PumpPlan:
    name: str
    hardware_id: str
    max_runtime_s: int
    cooldown_s: int
    source: int  # index into its site's water sources
    # L/min; None: unknown (it counts as its source's whole flow budget).
    nominal_flow_lpm: float | None = None


@dataclass(frozen=True)
class SitePlan:
    name: str
    source_capacities: list[int]
    pumps: list[PumpPlan]
    # Each source's flow budget, L/min (None: none); empty in plans made before flows.
    source_flows: list[float | None] = field(default_factory=list)


@dataclass(frozen=True)
class OpPlan:
    """One request: `site` and `pump` are indexes into the plan's fleet."""

    id: int
    client: int
    at_s: float
    action: str  # activate | queue | stop | stop_all | reset
    site: int
    pump: int | None = None
    duration_s: int | None = None
    priority: str = "manual"
    queue: str | None = None


@dataclass(frozen=True)
class FaultPlan:
    """One fault: `target` names a device (`site:pump` indexes) or a worker (`worker-N`)."""

    id: int
    at_s: float
    action: str
    target: str | None
    params: dict[str, Any] = field(default_factory=dict)
    # How long it holds before it is lifted (None: instantaneous).
    hold_s: float | None = None


@dataclass(frozen=True)
class Plan:
    sites: list[SitePlan]
    ops: list[OpPlan]
    faults: list[FaultPlan]

    @property
    def window_s(self) -> float:
        return max([0.0, *(o.at_s for o in self.ops), *(f.at_s for f in self.faults)])

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def make_plan(params: SoakParams) -> Plan:
    rng = random.Random(f"irrigation-soak:{params.seed}")
    window = params.minutes * 60
    sites = _fleet(rng, params)
    return Plan(sites, _operations(rng, params, sites, window), _faults(rng, params, sites, window))


def _fleet(rng: random.Random, params: SoakParams) -> list[SitePlan]:
    # Flows from a generator of their own: the draws of every other choice, and so the
    # plans of seeds recorded before flows existed, stay as they were.
    flows = random.Random(f"irrigation-soak-flows:{params.seed}")
    sites = []
    for s in range(params.sites):
        capacities = [rng.choice([1, 1, 2]) for _ in range(2)]
        # Every source that feeds two pumps at once gets a budget that two of its larger
        # pumps, or one of unknown flow and any other, overdraw: there the flow decides.
        source_flows = [100.0 if c > 1 else flows.choice([None, 100.0]) for c in capacities]
        pumps = []
        for p in range(params.pumps_per_site):
            # The first pump of every site always shares its hardware_id; the others
            # share one half of the time.
            shared = params.shared_hardware_ids and (p == 0 or rng.random() < 0.5)
            pumps.append(
                PumpPlan(
                    name=f"pump {p}",
                    hardware_id=f"shared-{p}" if shared else f"s{s}-p{p}",
                    max_runtime_s=rng.randint(2, 5),
                    cooldown_s=rng.randint(1, 3),
                    source=rng.randrange(len(capacities)),
                    nominal_flow_lpm=flows.choice([None, 40.0, 60.0, 60.0]),
                )
            )
        sites.append(SitePlan(f"site {s}", capacities, pumps, source_flows))
    return sites


def _operations(
    rng: random.Random, params: SoakParams, sites: list[SitePlan], window: float
) -> list[OpPlan]:
    count = max(1, round(window * params.ops_per_s))
    moments = sorted(rng.uniform(0, window) for _ in range(count))
    actions, weights = list(ACTIONS), list(ACTIONS.values())
    ops = []
    for i, at in enumerate(moments):
        action = rng.choices(actions, weights)[0]
        site = rng.randrange(len(sites))
        pump = rng.randrange(len(sites[site].pumps))
        cap = sites[site].pumps[pump].max_runtime_s
        priority = "emergency" if rng.random() < 0.1 else "manual"
        client = i % params.clients
        if action in ("activate", "over_cap", "queue"):
            ops.append(
                OpPlan(
                    id=i,
                    client=client,
                    at_s=round(at, 3),
                    # Over the cap: the API must refuse it (422), never shorten it.
                    action="activate" if action == "over_cap" else action,
                    site=site,
                    pump=pump,
                    duration_s=cap + 1 if action == "over_cap" else rng.randint(1, cap),
                    priority=priority,
                    queue=rng.choice(["append", "append", "front", "replace"])
                    if action == "queue"
                    else None,
                )
            )
        elif action in ("stop", "reset"):
            ops.append(OpPlan(i, client, round(at, 3), action, site, pump))
        else:
            ops.append(OpPlan(i, client, round(at, 3), "stop_all", site))
    return ops


def _faults(
    rng: random.Random, params: SoakParams, sites: list[SitePlan], window: float
) -> list[FaultPlan]:
    kinds = [*params.device_faults, *params.process_faults]
    faults: list[FaultPlan] = []
    if not kinds:
        return faults
    # One worker paused at a time, so the other keeps the pumps' jobs going.
    paused_until = 0.0
    at = rng.uniform(*params.fault_gap_s) / 2
    while at < window:
        kind = rng.choice(kinds)
        worker = f"worker-{rng.randrange(WORKERS)}"
        fault_id = len(faults)
        if kind == "worker_pause" and at < paused_until:
            kind = "worker_kill"
        if kind in params.device_faults:
            site = rng.randrange(len(sites))
            pump = rng.randrange(len(sites[site].pumps))
            faults.append(
                FaultPlan(
                    fault_id,
                    round(at, 3),
                    "device_fault",
                    f"{site}:{pump}",
                    _device_fault(rng, kind),
                    hold_s=round(rng.uniform(*params.device_fault_s), 3),
                )
            )
        elif kind == "worker_kill":
            # Restarted after a while, as a supervisor would.
            hold = round(rng.uniform(0.5, 3.0), 3)
            faults.append(FaultPlan(fault_id, round(at, 3), kind, worker, hold_s=hold))
        elif kind == "worker_pause":
            paused_until = at + params.pause_hold_s
            faults.append(
                FaultPlan(fault_id, round(at, 3), kind, worker, hold_s=params.pause_hold_s)
            )
        elif kind in ("redis_restart", "broker_restart"):
            hold = round(rng.uniform(0.5, 3.0), 3)
            target = "redis" if kind == "redis_restart" else "broker"
            faults.append(FaultPlan(fault_id, round(at, 3), kind, target, hold_s=hold))
        elif kind == "pg_kill":
            faults.append(FaultPlan(fault_id, round(at, 3), kind, "postgresql"))
        else:
            raise ValueError(f"unknown fault kind {kind!r}")
        at += rng.uniform(*params.fault_gap_s)
    return faults


def _device_fault(rng: random.Random, kind: str) -> dict[str, Any]:
    """The body of `POST /faults` for one kind (the target is added when it is applied)."""
    if kind == "latency_ms":
        # Around the gateway's timeout: some calls answer late, some time out and retry.
        return {"latency_ms": rng.randint(100, 1500)}
    if kind == "error_rate":
        return {"error_rate": round(rng.uniform(0.2, 0.9), 2), "seed": rng.randrange(2**31)}
    return {kind: True}


def fault_kinds(text: str | None, gateway: str = "http") -> tuple[tuple[str, ...], tuple[str, ...]]:
    """`latency_ms,worker_kill,...` as (device faults, process faults); None: all of
    today's for that driver; `none`: no fault. A name that is no process fault is a device
    fault (the simulator says whether it knows it)."""
    process = (*PROCESS_FAULTS, *MQTT_FAULTS)
    if text is None:
        return DEVICE_FAULTS, process if gateway == "mqtt" else PROCESS_FAULTS
    names = [n.strip() for n in text.split(",") if n.strip() and n.strip() != "none"]
    return (
        tuple(n for n in names if n not in process),
        tuple(n for n in names if n in process),
    )
