"""The workers' CPU when nothing is asked of them: the crons every second and every few
seconds, with an empty run queue, on a fleet (issue 20: the `automation,bulk` worker's
`dispatch_runs` cron took 36 - 44 % of its CPU in the bursts, with no run queue in use).

    .venv/bin/python bench/idle_workers.py                   # 60 s, 20 sites x 10 pumps
    .venv/bin/python bench/idle_workers.py --seconds 30 --profile /tmp/idle

Sets up a fresh database `irrigation_bench_idle` (dropped first if it exists, dropped
again at the end), migrations, `--sites` sites with an admin key each and `--pumps`
pumps in each (each its own zone and water source), the simulator, the API (`irrigation
serve`, 1 uvicorn worker; only to make the fleet) and the two workers `irrigation up`
runs (`pumps`, `automation,bulk`) on the `http` gateway. After `--settle` s (the workers'
start-up crons), it reads each worker's CPU (utime + stime, /proc, with its children) over
`--seconds` s and prints it in CPU-milliseconds per second and per minute, then the load
average. `--profile DIR`: py-spy on each worker over the same window (a profiled run's
figures are not the measurement); the raw stacks are kept in DIR, the top frames printed.

A before/after comparison runs the same script with another checkout's Python (its
`irrigation` installed editable): `/path/to/before/.venv/bin/python bench/idle_workers.py`
(the children are started with the same interpreter).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path

from activation import make_burst_fleet, make_sites
from common import CpuMeter, Stack, finish_py_spy, profile_summary, py_spy

DATABASE = "irrigation_bench_idle"
# The crons (`worker.crons()`) by their function's frame, and arq's own loop.
PHASES = {
    name: [f"{name} ("]
    for name in (
        "watchdog",
        "relay_outbox",
        "reconcile_devices",
        "drain_legacy_queue",
        "deliver_webhooks",
        "dispatch_runs",
        "evaluate_alerts",
        "fire_schedules",
        "sweep_rules",
        "refresh_water_levels",
        "roll_up_water_use",
    )
} | {"arq's own loop (poll, cron scheduling, health check)": ["arq/worker.py"]}
LAYERS = {
    "event loop": ["asyncio/", "uvloop"],
    "redis": ["redis/"],
    "asyncpg": ["asyncpg/"],
    "SQLAlchemy": ["sqlalchemy/"],
    "arq": ["arq/"],
    "irrigation": ["irrigation/"],
}


def load_average() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} / {five:.2f} (1 / 5 min)"


async def run(args: argparse.Namespace) -> None:
    env = {"IRRIGATION_GATEWAY": "http", "IRRIGATION_MIN_COOLDOWN_S": "0"}
    async with Stack(DATABASE, env=env) as stack:
        await stack.start_simulator()
        api, url = await stack.start_api(workers=1)
        keys = await make_sites(stack, args.sites)
        await make_burst_fleet(url, keys, args.sites * args.pumps, args.pumps)
        stack.stop(api)
        workers = {
            "pumps": stack.start_worker("pumps"),
            "automation,bulk": stack.start_worker("automation,bulk"),
        }
        print(f"fleet: {args.sites} sites x {args.pumps} pumps; {load_average()}")
        await asyncio.sleep(args.settle)
        spies = {}
        if args.profile is not None:
            args.profile.mkdir(parents=True, exist_ok=True)
            for name, proc in workers.items():
                out = args.profile / f"idle-{name.replace(',', '-')}.txt"
                spy = py_spy(proc.pid, args.seconds, out)
                if spy is not None:
                    spies[name] = (spy, out)
        meter = CpuMeter({name: [p.pid] for name, p in workers.items()}, DATABASE)
        meter.start()
        started = time.monotonic()
        await asyncio.sleep(args.seconds)
        cores = meter.stop()
        wall = time.monotonic() - started
        for name, proc in workers.items():
            if not proc.alive():
                raise RuntimeError(f"the {name} worker died:\n{proc.output()}")
            busy = cores.get(name, 0.0)
            print(
                f"{name} worker: {busy * 1000:.1f} ms of CPU per s "
                f"({busy * 60:.2f} s per minute) over {wall:.0f} s"
            )
        print(f"end: {load_average()}")
        for name, (spy, out) in spies.items():
            finish_py_spy(spy)
            report = profile_summary(out, PHASES, LAYERS, top=args.top)
            print(f"\n{name} worker, {report.samples} samples ({out}):")
            for label, rows in (
                ("cron", report.phases),
                ("layer", report.layers),
                ("own", report.leaves),
            ):
                for what, part in rows:
                    if part >= 0.005:
                        print(f"  {label}: {what}: {part:.1%}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sites", type=int, default=20)
    p.add_argument("--pumps", type=int, default=10, help="pumps per site")
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--settle", type=float, default=10.0)
    p.add_argument("--profile", type=Path)
    p.add_argument("--top", type=int, default=25)
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
