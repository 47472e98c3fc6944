"""Shared helpers for the benchmarks in this folder.

- `Stack`: a throwaway service stack (fresh database, migrations, a key, Redis namespace,
  the `irrigation` processes as children), torn down for sure at the end.
- `Clients`: an HTTP load generator spread over one or more client processes, so the
  client is not the bottleneck (checked: every result reports the client's CPU time).
- `CpuMeter`: CPU seconds per role (API, worker, simulator, PostgreSQL, Redis, client)
  over a phase, read from /proc, to see which process saturates the machine.
- `percentile`, `Figure` and `markdown_table` for reporting.

Scripts in this folder import it as `common` (the script's folder is on sys.path).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import multiprocessing
import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN_URL = os.environ.get("BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")


# Reporting ------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


@dataclass
class Figure:
    """One measured figure, with its baseline when there is one."""

    name: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_name: str = ""
    note: str = ""
    baseline_unit: str | None = None
    """Defaults to `unit`."""

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.baseline == 0:
            return None
        return self.value / self.baseline

    def line(self) -> str:
        text = f"{self.name}: {self.value:,.1f} {self.unit}"
        if self.baseline is not None:
            unit = self.baseline_unit or self.unit
            text += f"; baseline {self.baseline_name}: {self.baseline:,.1f} {unit}"
            text += f"; ratio {self.ratio:.2f}"
        if self.note:
            text += f"  ({self.note})"
        return text


def markdown_table(figures: Sequence[Figure]) -> str:
    rows = [
        "| figure | value | baseline | ratio | note |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for f in figures:
        base = ""
        if f.baseline is not None:
            base = f"{f.baseline:,.0f} {f.baseline_unit or f.unit} ({f.baseline_name})"
        ratio = f"{f.ratio:.2f}" if f.ratio is not None else ""
        rows.append(f"| {f.name} | {f.value:,.1f} {f.unit} | {base} | {ratio} | {f.note} |")
    return "\n".join(rows)


# Processes ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Proc:
    """One child process, its output in a file; stopped for sure."""

    def __init__(self, name: str, argv: Sequence[str], env: Mapping[str, str]) -> None:
        self.name = name
        self.argv = list(argv)
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115 (closed in stop())
            prefix=f"bench-{name}-", suffix=".log", delete=False
        )
        self.proc = subprocess.Popen(
            self.argv,
            env={**os.environ, **env},
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self, tail: int = 4000) -> str:
        with open(self.log.name, errors="replace") as f:
            return f.read()[-tail:]

    def stop(self, timeout_s: float = 10) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()
        with contextlib.suppress(OSError):
            os.unlink(self.log.name)


async def wait_http(url: str, proc: Proc | None = None, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=1) as client:
        while time.monotonic() < deadline:
            if proc is not None and not proc.alive():
                raise RuntimeError(f"{proc.name} exited:\n{proc.output()}")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url)).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout_s} s")


async def wait_output(proc: Proc, text: str, timeout_s: float) -> None:
    """Until `text` shows in the process's output."""
    deadline = time.monotonic() + timeout_s
    while text not in proc.output(1_000_000):
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited:\n{proc.output()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{proc.name} did not log {text!r} within {timeout_s} s")
        await asyncio.sleep(0.1)


def _with_database(url: str, name: str) -> str:
    return url.rsplit("/", 1)[0] + "/" + name


class Stack:
    """A fresh database (dropped if it exists), migrated; a Redis namespace of its own; the
    `irrigation` processes started through it are stopped, and the database dropped, on exit.

        async with Stack("irrigation_bench") as stack:
            key = stack.create_key("bench")
            sim = await stack.start_simulator()
            api = await stack.start_api(workers=1)
            stack.start_worker()
    """

    def __init__(
        self,
        database: str,
        *,
        pg_admin_url: str = PG_ADMIN_URL,
        redis_url: str = REDIS_URL,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.database = database
        self.pg_admin_url = pg_admin_url
        self.database_url = _with_database(pg_admin_url, database)
        self.redis_url = redis_url
        self.namespace = f"bench-{uuid.uuid4().hex[:10]}"
        self.env: dict[str, str] = {
            "IRRIGATION_DATABASE_URL": self.database_url,
            "IRRIGATION_REDIS_URL": redis_url,
            "IRRIGATION_REDIS_NAMESPACE": self.namespace,
            "IRRIGATION_LOG_LEVEL": "WARNING",
            # One key drives each bench far past any real client's limits: counted (its
            # Redis round trips stay in the figures), never refused.
            **{
                f"IRRIGATION_RATE_LIMIT_{c}": "1000000000/minute"
                for c in ("READ", "WRITE", "INGEST", "CONTROL", "EXPENSIVE")
            },
            **(env or {}),
        }
        self.procs: list[Proc] = []
        self.simulator_url: str | None = None

    # Database ---------------------------------------------------------------------------

    async def _admin(self, sql: str) -> None:
        conn = await asyncpg.connect(self.pg_admin_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    async def __aenter__(self) -> Stack:
        await self._admin(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        await self._admin(f'CREATE DATABASE "{self.database}"')
        try:
            self.cli("migrate")
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()
        with contextlib.suppress(Exception):
            await self._forget_redis()
        await self._admin(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')

    async def _forget_redis(self) -> None:
        """Every key of the namespace, and arq's per-job keys (`arq:job:<id>`, ...), which
        are not namespaced, for the jobs still in this stack's queue (deferred ones)."""
        client = aioredis.Redis.from_url(self.redis_url)
        try:
            base = f"{self.namespace}:queue"
            for key in (base, *(f"{base}:{q}" for q in ("pumps", "automation", "bulk"))):
                for job_id in await client.zrange(key, 0, -1):
                    name = job_id.decode()
                    for prefix in ("job", "in-progress", "retry", "result"):
                        await client.delete(f"arq:{prefix}:{name}")
            async for key in client.scan_iter(f"*{self.namespace}*", count=1000):
                await client.delete(key)
        finally:
            await client.aclose()

    async def connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.database_url)

    async def pool(self, size: int) -> asyncpg.Pool:
        pool: asyncpg.Pool = await asyncpg.create_pool(
            self.database_url, min_size=size, max_size=size
        )
        return pool

    # Processes --------------------------------------------------------------------------

    def cli(self, *args: str, **env: str) -> str:
        """Run `irrigation ARGS` to completion; its stdout (stderr shown on failure)."""
        done = subprocess.run(
            [sys.executable, "-m", "irrigation", *args],
            env={**os.environ, **self.env, **env},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"irrigation {' '.join(args)} failed:\n{done.stderr[-4000:]}")
        return done.stdout

    def create_key(self, site: str, scopes: str = "admin") -> str:
        out = self.cli("keys", "create", "--site", site, "--scopes", scopes, "--create-site")
        return out.strip().splitlines()[-1]

    def spawn(self, name: str, *args: str, **env: str) -> Proc:
        proc = Proc(name, [sys.executable, "-m", "irrigation", *args], {**self.env, **env})
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc) -> None:
        proc.stop()
        if proc in self.procs:
            self.procs.remove(proc)

    async def start_simulator(self, mqtt_url: str | None = None) -> str:
        """The simulator on a free port; with `mqtt_url` its devices are also served on that
        broker (under the stack's IRRIGATION_MQTT_TOPIC_ROOT), and this returns once it has
        subscribed there (it logs so at INFO): a command sent before would be lost."""
        port = free_port()
        args = ["simulator", "--port", str(port)]
        env = {}
        if mqtt_url is not None:
            args += ["--mqtt-url", mqtt_url]
            env["IRRIGATION_LOG_LEVEL"] = "INFO"
        proc = self.spawn("simulator", *args, **env)
        url = f"http://127.0.0.1:{port}"
        await wait_http(f"{url}/healthz", proc)
        if mqtt_url is not None:
            await wait_output(proc, "simulator_mqtt_connected", 15)
        self.simulator_url = url
        self.env["IRRIGATION_GATEWAY_URL"] = url
        return url

    async def start_api(self, workers: int = 1, **env: str) -> tuple[Proc, str]:
        port = free_port()
        args = ["serve", "--port", str(port), "--workers", str(workers)]
        proc = self.spawn(f"api{workers}", *args, **env)
        url = f"http://127.0.0.1:{port}"
        await wait_http(f"{url}/healthz", proc)
        if workers > 1:
            # uvicorn's supervisor answers once one child is up: give the others a moment.
            await _wait_children(proc.pid, workers, 15)
        return proc, url

    def start_worker(self, queues: str | None = None, **env: str) -> Proc:
        """An arq worker of `queues` (e.g. "pumps"; default: all of them)."""
        args = ["worker", *(["--queues", queues] if queues else [])]
        return self.spawn("worker", *args, **env)

    async def start_bare_gate(self, **env: str) -> tuple[Proc, str]:
        """bench/bare_gate_app.py on the uvicorn command line of `irrigation serve` (one
        worker), on this stack's database: the herd's and sustained load's baseline."""
        port = free_port()
        argv = [
            sys.executable,
            "-m",
            "uvicorn",
            "bare_gate_app:create_app",
            "--factory",
            "--app-dir",
            str(ROOT / "bench"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--log-level",
            "warning",
            "--no-access-log",
            "--proxy-headers",
        ]
        proc = Proc("bare-gate", argv, {"BARE_DATABASE_URL": self.database_url, **env})
        self.procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        await wait_http(f"{url}/healthz", proc)
        return proc, url


async def _wait_children(pid: int, count: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if len(descendants(pid)) >= count:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)


# CPU accounting -------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[str, int, float] | None:
    """(comm, ppid, cpu seconds) of one process, None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            raw = f.read()
    except OSError:
        return None
    comm = raw[raw.index("(") + 1 : raw.rindex(")")]
    rest = raw[raw.rindex(")") + 2 :].split()
    return comm, int(rest[1]), (int(rest[11]) + int(rest[12])) / _TICK


def _all_processes() -> dict[int, tuple[str, int, float]]:
    found: dict[int, tuple[str, int, float]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) is not None:
            found[int(entry)] = stat
    return found


def descendants(pid: int, table: dict[int, tuple[str, int, float]] | None = None) -> list[int]:
    table = table if table is not None else _all_processes()
    children: dict[int, list[int]] = {}
    for child, (_, parent, _) in table.items():
        children.setdefault(parent, []).append(child)
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / _TICK


class CpuMeter:
    """CPU seconds used per role between `start()` and `stop()`, in cores (seconds / wall).

    Roles: each named process with its descendants; `postgres` (the backends of `database`
    plus the server's own processes), `redis`; `client` as reported by `Clients.run`; and
    `other`: whatever else kept the machine busy meanwhile (other people's work: the
    machine is shared)."""

    def __init__(self, roles: Mapping[str, Sequence[int]], database: str = "") -> None:
        self.roles = roles
        self.database = database
        self._before: dict[str, float] = {}
        self._t0 = 0.0
        self.wall = 0.0
        self.used: dict[str, float] = {}

    def _is_ours(self, pid: int) -> bool:
        line = _cmdline(pid)
        # Backends name their database; the server's own processes name none.
        return self.database in line or "irrigation" not in line

    def _sample(self) -> dict[str, float]:
        table = _all_processes()
        out: dict[str, float] = {}
        for role, pids in self.roles.items():
            members = {p for pid in pids for p in [pid, *descendants(pid, table)]}
            out[role] = sum(table[p][2] for p in members if p in table)
        out["postgres"] = sum(
            s[2] for pid, s in table.items() if s[0] == "postgres" and self._is_ours(pid)
        )
        out["redis"] = sum(s[2] for s in table.values() if s[0].startswith("redis-server"))
        out["machine"] = _machine_busy_s()
        return out

    def start(self) -> None:
        self._before = self._sample()
        self._t0 = time.monotonic()

    def stop(self, client_cpu_s: float = 0.0) -> dict[str, float]:
        """Cores busy per role (and `client`, `other`) over the phase."""
        after = self._sample()
        self.wall = time.monotonic() - self._t0
        used = {k: after[k] - self._before.get(k, 0.0) for k in after}
        machine = used.pop("machine")
        used["client"] = client_cpu_s
        # A backend that exited meanwhile takes its CPU time along: never below zero.
        used = {k: max(0.0, v) for k, v in used.items()}
        used["other"] = max(0.0, machine - sum(used.values()))
        self.used = {k: v / (self.wall or 1.0) for k, v in used.items()}
        return self.used

    def summary(self) -> str:
        """e.g. `cores busy: api 0.95, postgres 0.60, client 0.30, other 0.10 (of 2)`."""
        parts = [f"{k} {v:.2f}" for k, v in self.used.items()]
        return f"cores busy: {', '.join(parts)} (of {os.cpu_count()})"


# HTTP load ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    """What every client process does. `burst`: `requests` POSTs at once (all in flight
    together, one connection each). `sustained`: `concurrency` closed loops for
    `duration_s`, request i going to `paths[i % len(paths)]` (offset per process)."""

    base_url: str
    headers: Mapping[str, str]
    paths: Sequence[str]
    body: Mapping[str, Any] | None = None
    """JSON body of a POST; None: a GET."""
    kind: str = "burst"
    requests: int = 0
    concurrency: int = 1
    duration_s: float = 0.0
    keep: Sequence[str] = ("code",)
    """Fields of each JSON answer to keep (e.g. "id", "requested_at", "command_id")."""
    path_headers: Sequence[Mapping[str, str]] | None = None
    """Headers of the request to `paths[i]` (beside `headers`), e.g. one key per site."""


@dataclass
class Answer:
    status: int
    latency_s: float
    sent_at: float
    fields: dict[str, Any] = field(default_factory=dict)
    sent_wall: float = 0.0
    """time.time() when the request was sent: comparable with other processes' clocks."""


@dataclass
class LoadResult:
    answers: list[Answer]
    wall_s: float
    client_cpu_s: float
    errors: list[str]

    def count(self, status: int) -> int:
        return sum(1 for a in self.answers if a.status == status)

    def statuses(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for a in self.answers:
            out[a.status] = out.get(a.status, 0) + 1
        return dict(sorted(out.items()))

    def latencies(self) -> list[float]:
        return [a.latency_s for a in self.answers]


def _keep(response: httpx.Response, names: Sequence[str]) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return {n: body.get(n) for n in names} if isinstance(body, dict) else {}


async def _client_load(load: Load, share: int, offset: int, start_at: float) -> LoadResult:
    """`share` lanes, each its own httpx client with one connection: one shared pool of
    many connections costs httpx O(connections) per request (a 1000-request burst through
    one pool is client-bound: ~6 ms of client CPU per request)."""
    answers: list[Answer] = []
    errors: list[str] = []
    tls = ssl.create_default_context()  # made once: each client would load the CA store
    lanes = [
        httpx.AsyncClient(
            base_url=load.base_url,
            headers=dict(load.headers),
            timeout=60,
            verify=tls,
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        )
        for _ in range(share)
    ]

    async def one(client: httpx.AsyncClient, i: int) -> None:
        index = (offset + i) % len(load.paths)
        path = load.paths[index]
        headers = dict(load.path_headers[index]) if load.path_headers else None
        sent, sent_wall = time.perf_counter(), time.time()
        try:
            if load.body is None:
                response = await client.get(path, headers=headers)
            else:
                response = await client.post(path, json=dict(load.body), headers=headers)
        except httpx.HTTPError as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            return
        latency = time.perf_counter() - sent
        fields = _keep(response, load.keep)
        answers.append(Answer(response.status_code, latency, sent, fields, sent_wall))

    try:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        cpu0, t0 = time.process_time(), time.perf_counter()
        if load.kind == "burst":
            await asyncio.gather(*(one(client, i) for i, client in enumerate(lanes)))
        else:
            stop_at = t0 + load.duration_s
            counter = iter(range(10**12))

            async def loop(client: httpx.AsyncClient) -> None:
                while time.perf_counter() < stop_at:
                    await one(client, next(counter))

            await asyncio.gather(*(loop(client) for client in lanes))
        wall = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
    finally:
        await asyncio.gather(*(client.aclose() for client in lanes))
    for a in answers:
        a.sent_at -= t0
    return LoadResult(answers, wall, cpu, errors)


def _client_main(load: Load, share: int, offset: int, start_at: float) -> LoadResult:
    with contextlib.suppress(ImportError):
        import uvloop

        return uvloop.run(_client_load(load, share, offset, start_at))
    return asyncio.run(_client_load(load, share, offset, start_at))


class Clients:
    """A pool of client processes (spawned once, reused by every `run`)."""

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self._pool = concurrent.futures.ProcessPoolExecutor(
            processes, mp_context=multiprocessing.get_context("spawn")
        )
        # Start them now: their start-up must not fall inside a measurement.
        list(self._pool.map(time.sleep, [0.0] * processes))

    def close(self) -> None:
        self._pool.shutdown(cancel_futures=True)

    async def run(self, load: Load, on_start: Callable[[], None] | None = None) -> LoadResult:
        """Split the load over the processes, start them together, merge their answers.

        `wall_s` is the longest process's; `client_cpu_s` the sum of theirs."""
        n = self.processes
        total = load.requests if load.kind == "burst" else load.concurrency
        shares = [total // n + (1 if i < total % n else 0) for i in range(n)]
        start_at = time.time() + 0.5 + 0.002 * max(shares)  # time to make the clients
        loop = asyncio.get_running_loop()
        offsets = [sum(shares[:i]) * (1 if load.kind == "burst" else 7919) for i in range(n)]
        futures = [
            loop.run_in_executor(self._pool, _client_main, load, shares[i], offsets[i], start_at)
            for i in range(n)
            if shares[i]
        ]
        await asyncio.sleep(max(0.0, start_at - time.time()))
        if on_start is not None:
            on_start()
        results = await asyncio.gather(*futures)
        return LoadResult(
            [a for r in results for a in r.answers],
            max(r.wall_s for r in results),
            sum(r.client_cpu_s for r in results),
            [e for r in results for e in r.errors],
        )


def shuffled(items: Sequence[Any], seed: int = 0) -> list[Any]:
    out = list(items)
    random.Random(seed).shuffle(out)
    return out


def py_spy(pid: int, seconds: float, out: Path, *, subprocesses: bool = False) -> Proc | None:
    """Start `py-spy record` (raw collapsed stacks) on a process; None if py-spy is missing."""
    exe = Path(sys.executable).with_name("py-spy")
    if not exe.exists():
        return None
    args = [str(exe), "record", "-p", str(pid), "-d", str(max(1, round(seconds)))]
    args += ["-f", "raw", "-o", str(out), "-r", "200", "--nonblocking"]
    if subprocesses:
        args.append("--subprocesses")
    return Proc("py-spy", args, {})


def finish_py_spy(proc: Proc, timeout_s: float = 30) -> None:
    """Ask py-spy to write its output now (SIGINT, as Ctrl-C) and wait for it."""
    if proc.alive():
        proc.proc.send_signal(signal.SIGINT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.proc.wait(timeout_s)
    proc.stop()


@dataclass
class ProfileReport:
    samples: int
    phases: list[tuple[str, float]]
    layers: list[tuple[str, float]]
    leaves: list[tuple[str, float]]


def profile_summary(
    path: Path,
    phases: Mapping[str, Sequence[str]],
    layers: Mapping[str, Sequence[str]],
    top: int = 12,
) -> ProfileReport:
    """Read py-spy's raw (collapsed) stacks. Phases: the share of samples with any frame
    containing one of the phase's substrings (phases may overlap). Layers: each sample goes
    to the layer of its innermost matching frame (else "other"), so they add up to 100 %.
    Leaves: the functions with most samples of their own."""
    total = 0
    in_phase = dict.fromkeys(phases, 0)
    in_layer = dict.fromkeys([*layers, "other"], 0)
    own: dict[str, int] = {}
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        for name, needles in phases.items():
            if any(needle in frame for frame in frames for needle in needles):
                in_phase[name] += count
        layer = next(
            (
                name
                for frame in reversed(frames)
                for name, needles in layers.items()
                if any(needle in frame for needle in needles)
            ),
            "other",
        )
        in_layer[layer] += count
        own[frames[-1]] = own.get(frames[-1], 0) + count

    def share(n: int) -> float:
        return n / total if total else 0.0

    return ProfileReport(
        total,
        [(name, share(n)) for name, n in in_phase.items()],
        sorted(((name, share(n)) for name, n in in_layer.items()), key=lambda kv: -kv[1]),
        [(name, share(n)) for name, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]],
    )
