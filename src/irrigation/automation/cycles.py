"""Cycle-and-soak: how one automated watering of a zone becomes its run requests.

A zone with `max_cycle_s` splits each pump's part of a scheduled or threshold watering
into cycles of at most that long (and at most the pump's `max_runtime_s`), in rounds: every
pump's first cycle one after another, then, at least `min_soak_s` after the round ended,
every pump's second cycle, and so on. Each cycle is its own run request, chained to the
one before (`after_id`), so the run queue starts it only once that one is over and the
soak has passed; meanwhile it holds no slot of the water source, and other zones' runs
start in the gap. A zone without `max_cycle_s` waters as it always did: one run per pump,
cut to the pump's `max_runtime_s`."""

import uuid
from dataclasses import dataclass

from irrigation.fleet.models import Pump, Zone

# One pump's cycles in one watering, at most: each is a waiting run request (counted by the
# site's quotas) and a start, and a watering needing more (a long duration, a cycle of a
# few seconds) is cut to this many full cycles, and says so.
MAX_CYCLES = 48


@dataclass(frozen=True)
class Cycling:
    """A zone's cycle-and-soak settings (`max_cycle_s` None: no splitting)."""

    max_cycle_s: int | None = None
    min_soak_s: int = 0

    @property
    def splits(self) -> bool:
        return self.max_cycle_s is not None


def cycling_of(zone: Zone) -> Cycling:
    return Cycling(zone.max_cycle_s, zone.min_soak_s)


@dataclass(frozen=True)
class Step:
    """One run request of a watering: a pump's `cycle` of `cycles`."""

    pump: Pump
    duration_s: int
    cycle: int
    cycles: int
    # At least this long after the previous step ended (the soak, at a round's start).
    soak_s: int
    # Planned start, seconds after the watering's first start if every run started at once:
    # each step's deadline is the watering's moved by this, so each keeps the first's slack.
    # 0 without splitting: a zone-wide run's pumps keep one deadline, as they always did.
    offset_s: int
    # The pump's part, when it needed more than MAX_CYCLES cycles and was cut (else None).
    cut_from_s: int | None = None


def split(total_s: int, cycle_s: int) -> list[int]:
    """`total_s` in the fewest cycles of at most `cycle_s`, as even as whole seconds allow
    (1800 s by 300: six of 300; 700 by 300: 234, 233, 233): even cycles soak in evenly."""
    if total_s <= 0:
        return []
    count = -(-total_s // cycle_s)
    base, longer = divmod(total_s, count)
    return [base + 1] * longer + [base] * (count - longer)


def _pump_cycles(pump: Pump, total_s: int, cycling: Cycling) -> tuple[list[int], int | None]:
    if cycling.max_cycle_s is None or total_s <= 0:
        return [min(total_s, pump.max_runtime_s)], None
    length = min(cycling.max_cycle_s, pump.max_runtime_s)
    if -(-total_s // length) > MAX_CYCLES:
        return split(MAX_CYCLES * length, length), total_s
    return split(total_s, length), None


def plan(pumps: list[Pump], total_s: int, cycling: Cycling) -> list[Step]:
    """The watering's run requests in the order they run (rounds of cycles, pumps in the
    given order within a round), each after the previous one."""
    per_pump = [(pump, *_pump_cycles(pump, total_s, cycling)) for pump in pumps]
    rounds = max((len(durations) for _, durations, _ in per_pump), default=0)
    steps: list[Step] = []
    ended = 0  # planned end of the previous step
    rested: dict[uuid.UUID, int] = {}  # planned end of each pump's cooldown
    for index in range(rounds):
        first_of_round = True
        for pump, durations, cut_from in per_pump:
            if index >= len(durations):
                continue
            soak = cycling.min_soak_s if index > 0 and first_of_round else 0
            start = max(ended + soak, rested.get(pump.id, 0)) if steps else 0
            offset = start if cycling.splits else 0
            duration = durations[index]
            steps.append(Step(pump, duration, index + 1, len(durations), soak, offset, cut_from))
            ended = start + duration
            rested[pump.id] = ended + pump.cooldown_s
            first_of_round = False
    return steps


def label(cycle: int | None, cycles: int | None) -> str:
    """'cycle 2 of 6', or '' for a run that is not one of several."""
    if cycle is None or cycles is None or cycles < 2:
        return ""
    return f"cycle {cycle} of {cycles}"
