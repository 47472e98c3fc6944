"""The arq workers: one per queue (`queue.QUEUES`), each with its own functions, cron jobs
and `max_jobs`; one process may serve several queues, sharing its clients."""

import asyncio
import logging
import signal
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from arq import cron
from arq.constants import health_check_key_suffix
from arq.typing import WorkerCoroutine
from arq.worker import Function, Worker, func

from irrigation import queue, registry
from irrigation.alerts import jobs as alert_jobs
from irrigation.alerts import webhooks
from irrigation.automation import jobs as automation
from irrigation.automation.retention import purge_automation_history
from irrigation.common import eventloop, idempotency
from irrigation.common.worker_context import CONTEXT_KEY, WorkerContext, worker_context
from irrigation.db import create_engine, create_sessionmaker
from irrigation.feed import create_publisher
from irrigation.gateway import create_gateway
from irrigation.ingest import import_jobs, review_retention
from irrigation.logging import configure_logging
from irrigation.pumps import jobs, reconcile, supervision
from irrigation.readings import backfill, retention
from irrigation.settings import Settings
from irrigation.wateruse import rollup as water_use
from irrigation.weather import create_provider

log = structlog.get_logger(__name__)

# Every model must be mapped before the first flush: FKs resolve across domains.
assert registry.metadata.tables

EVERY_SECOND = set(range(60))
# Short on purpose: a SIGKILLed job is retried only after the longest job timeout + 10 s.
PUMP_JOB_TIMEOUT_S = 30
# How often the devices' states are compared with the database (one state read per pump
# per sweep over HTTP).
RECONCILE_EVERY_S = 5
# How often ended runs and new flow readings are rolled up into water use.
WATER_USE_EVERY_S = 10
# 10 s slices: 100,000 tries is more than a week of one import (or calibration backfill).
IMPORT_MAX_TRIES = 100_000


async def purge_idempotency_keys(ctx: dict[str, Any]) -> int:
    jc = worker_context(ctx)
    async with jc.sessions() as session, session.begin():
        return await idempotency.purge_expired(session, jc.settings.idempotency_ttl_s)


async def drain_legacy_queue(ctx: dict[str, Any]) -> int:
    return await queue.drain_legacy_queue(worker_context(ctx).redis)


def functions() -> list[Function]:
    """Enqueued jobs by their name; `queue.JOB_QUEUES` says which queue's worker runs each.
    (Built on each call: a test may patch a job.)"""
    return [
        func(jobs.start_activation, name=queue.START_ACTIVATION, timeout=PUMP_JOB_TIMEOUT_S),
        func(jobs.stop_activation, name=queue.STOP_ACTIVATION, timeout=PUMP_JOB_TIMEOUT_S),
        func(supervision.supervise_flow, name=queue.SUPERVISE_FLOW, timeout=PUMP_JOB_TIMEOUT_S),
        func(automation.evaluate_zones, name=queue.EVALUATE_ZONES, timeout=PUMP_JOB_TIMEOUT_S),
        func(automation.dispatch_runs, name=queue.DISPATCH_RUNS, timeout=PUMP_JOB_TIMEOUT_S),
        # An import runs in slices well inside this timeout, each asking to be run again
        # (a "try" to arq) until the file is done: hence the many tries.
        func(
            import_jobs.process_import,
            name=queue.PROCESS_IMPORT,
            timeout=PUMP_JOB_TIMEOUT_S,
            max_tries=IMPORT_MAX_TRIES,
        ),
        # Slices too, like an import.
        func(
            backfill.backfill_calibration,
            name=queue.BACKFILL_CALIBRATION,
            timeout=PUMP_JOB_TIMEOUT_S,
            max_tries=IMPORT_MAX_TRIES,
        ),
    ]


@dataclass(frozen=True)
class Cron:
    name: str  # its key in queue.JOB_QUEUES
    job: WorkerCoroutine
    when: dict[str, Any] = field(default_factory=dict)


def _every_second() -> dict[str, Any]:
    return {"second": EVERY_SECOND, "run_at_startup": True}


def crons() -> list[Cron]:
    """The cron jobs by their name in `queue.JOB_QUEUES`, which says which queue's workers
    schedule and run each."""
    return [
        Cron("pumps.watchdog", jobs.watchdog, _every_second()),
        Cron("pumps.relay_outbox", jobs.relay_outbox, _every_second()),
        Cron(
            "pumps.reconcile_devices",
            reconcile.reconcile_devices,
            {"second": set(range(0, 60, RECONCILE_EVERY_S))},
        ),
        # Until no older version enqueues on the single queue of before (a rolling upgrade).
        Cron(
            "queue.drain_legacy_queue",
            drain_legacy_queue,
            {"second": set(range(0, 60, 10)), "run_at_startup": True},
        ),
        Cron("alerts.deliver_webhooks", webhooks.deliver_webhooks, _every_second()),
        Cron(queue.DISPATCH_RUNS, automation.dispatch_runs, _every_second()),
        Cron(
            "alerts.evaluate_alerts", alert_jobs.evaluate_alerts, {"second": set(range(0, 60, 10))}
        ),
        Cron(
            "automation.fire_schedules",
            automation.fire_schedules,
            {"second": set(range(0, 60, 5)), "run_at_startup": True},
        ),
        Cron("automation.sweep_rules", automation.sweep_rules, {"second": {3, 33}}),
        Cron(
            "automation.refresh_water_levels",
            automation.refresh_water_levels,
            {"minute": {5, 35}, "second": {13}, "run_at_startup": True},
        ),
        Cron(
            "automation.purge_automation_history",
            purge_automation_history,
            {"minute": {47}, "second": {0}},
        ),
        Cron(
            "ingest.requeue_unfinished_imports",
            import_jobs.requeue_unfinished_imports,
            {"second": {41}},
        ),
        Cron(
            "readings.requeue_unfinished_backfills",
            backfill.requeue_unfinished_backfills,
            {"second": {51}},
        ),
        Cron(
            "ingest.sweep_orphan_uploads",
            import_jobs.sweep_orphan_uploads,
            {"minute": {17}, "second": {30}},
        ),
        Cron(
            "readings.purge_raw_readings",
            retention.purge_raw_readings,
            {"minute": {23}, "second": {0}},
        ),
        Cron(
            "common.purge_idempotency_keys",
            purge_idempotency_keys,
            {"minute": {0, 30}, "second": {7}},
        ),
        Cron(
            "ingest.purge_reviewed_quarantine",
            review_retention.purge_reviewed_quarantine,
            {"minute": {53}, "second": {0}},
        ),
        # Water use follows run ends and flow readings within about this many seconds.
        Cron(
            "wateruse.roll_up_water_use",
            water_use.roll_up_water_use,
            {"second": set(range(0, 60, WATER_USE_EVERY_S)), "run_at_startup": True},
        ),
    ]


def max_jobs(settings: Settings, queue_name: str) -> int:
    limit: int = getattr(settings, f"worker_max_jobs_{queue_name}")
    return limit


def cron_name(settings: Settings, name: str) -> str:
    """The stack's queue name in the name keeps cron job ids (global arq keys) apart for
    stacks sharing one Redis."""
    return f"cron:{settings.queue_name}:{name}"


class Clients:
    """What every queue's worker in one process shares: the database pool, the Redis client
    jobs enqueue with, the gateway (one MQTT connection a process) and the weather."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine = create_engine(settings)
        # Its default queue name is the stack's base name: queue.JOB_QUEUES routes from it.
        self.redis = queue.create_redis(
            settings.effective_redis_url, settings.redis_timeout_s, settings.queue_name
        )
        self.gateway = create_gateway(settings)
        self.weather = create_provider(settings, self.redis)
        self.context = WorkerContext(
            settings=settings,
            sessions=create_sessionmaker(self.engine, create_publisher(settings, self.redis)),
            gateway=self.gateway,
            redis=self.redis,
            weather=self.weather,
        )

    async def startup(self, ctx: dict[str, Any]) -> None:
        ctx[CONTEXT_KEY] = self.context

    async def shutdown(self, ctx: dict[str, Any]) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self.weather is not None:
            await self.weather.aclose()
        await self.gateway.aclose()
        await self.redis.aclose()
        await self.engine.dispose()


def create_worker(
    settings: Settings,
    queue_name: str,
    *,
    clients: Clients | None = None,
    burst: bool = False,
) -> Worker:
    """The worker of one queue: the functions and crons `queue.JOB_QUEUES` puts there. With
    `clients`, their owner closes them; without, the worker makes and closes its own."""
    owned = clients is None
    shared = clients or Clients(settings)
    key = queue.queue_key(settings.queue_name, queue_name)
    return Worker(
        functions=[f for f in functions() if queue.JOB_QUEUES[f.name] == queue_name],
        cron_jobs=[
            cron(c.job, name=cron_name(settings, c.name), timeout=PUMP_JOB_TIMEOUT_S, **c.when)
            for c in crons()
            if queue.JOB_QUEUES[c.name] == queue_name
        ],
        queue_name=key,
        # Its own connections: polling this queue never waits behind another's traffic.
        redis_pool=queue.create_redis(
            settings.effective_redis_url, settings.worker_redis_timeout_s, key
        ),
        on_startup=shared.startup,
        on_shutdown=shared.shutdown if owned else None,
        burst=burst,
        job_timeout=PUMP_JOB_TIMEOUT_S,
        keep_result=0,  # job ids become reusable at once, so the relay can re-enqueue
        poll_delay=settings.worker_poll_delay_s,
        max_jobs=max_jobs(settings, queue_name),
        health_check_interval=10,
        job_serializer=queue.serialize,
        job_deserializer=queue.deserialize,
        handle_signals=True,
        log_results=settings.log_level.upper() == "DEBUG",
    )


# How often a stopping worker's poll loop is cancelled again until it ends: on Python 3.11 a
# cancellation that arrives as one of redis-py's `asyncio.wait_for` completes is lost
# (CPython gh-86296), and the loop polls on as if no signal had come.
RECANCEL_EVERY_S = 0.1


class _Stopper:
    """Stops a process's workers as arq's `handle_sig` does (no job picked any more, each
    job in flight cancelled once, to be run again; the poll loops cancelled), and makes sure
    it happened: arq cancels once, and a lost cancellation left the process polling until
    its SIGKILL."""

    def __init__(self, workers: Sequence[Worker]) -> None:
        self.workers = workers
        self.requested = asyncio.Event()
        self.cancelled: set[asyncio.Task[Any]] = set()

    def request(self, signum: signal.Signals) -> None:
        if self.requested.is_set():
            return
        self.requested.set()
        for worker in self.workers:
            worker.allow_pick_jobs = False
            worker.handle_sig(signum)  # logs and cancels as arq does
            self.cancelled.update(worker.tasks.values())

    async def until_stopped(self, runs: Sequence[asyncio.Task[None]]) -> None:
        while True:
            for worker, run in zip(self.workers, runs, strict=True):
                # A job a poll that was under way when the signal came started after it.
                for task in list(worker.tasks.values()):
                    if task not in self.cancelled:
                        task.cancel()
                        self.cancelled.add(task)
                main = worker.main_task
                if main is not None and not main.done():
                    main.cancel()
                elif main is None:
                    run.cancel()  # not begun yet
            pending = [*runs, *(t for w in self.workers for t in w.tasks.values())]
            if all(task.done() for task in pending):
                return
            await asyncio.wait(pending, timeout=RECANCEL_EVERY_S)


async def _close(worker: Worker) -> None:
    """`worker.close()`, minus its one flaw: it gathers the jobs' tasks, re-raising the
    cancellation of those stopping cancelled and skipping the rest (the health sentinel, the
    pool), and the process exited 1. The tasks are awaited here instead, each outcome
    looked at."""
    tasks = list(worker.tasks.values())
    if tasks:
        await asyncio.wait(tasks)
    for task in tasks:
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.warning("worker_job_task_failed", queue=worker.queue_name, error=repr(exc))
    worker.tasks.clear()
    await worker.close()


async def serve(settings: Settings, queues: Sequence[str]) -> None:
    """Run one worker per queue in this process until SIGINT/SIGTERM, or until one of them
    fails (then all stop and the failure propagates: the process exits to be restarted).
    A signal stops the process within about a second and it exits 0."""
    clients = Clients(settings)
    workers = [create_worker(settings, q, clients=clients) for q in queues]
    stopper = _Stopper(workers)
    loop = asyncio.get_running_loop()
    # Each worker registered its own handler on this loop, each replacing the last: one
    # handler stops them all.
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopper.request, signum)
    runs = [asyncio.create_task(w.async_run(), name=f"worker:{w.queue_name}") for w in workers]
    requested = asyncio.create_task(stopper.requested.wait())
    try:
        await asyncio.wait([*runs, requested], return_when=asyncio.FIRST_COMPLETED)
        stopper.request(signal.SIGTERM)  # a no-op after a signal
        await stopper.until_stopped(runs)
    finally:
        requested.cancel()
        for worker in workers:
            try:
                await _close(worker)
            except Exception as exc:  # Redis gone, say: close the others all the same
                log.warning("worker_close_failed", queue=worker.queue_name, error=repr(exc))
        await clients.aclose()
    # Every failure retrieved (else asyncio logs "never retrieved"), the first raised.
    failures = [run.exception() for run in runs if not run.cancelled()]
    for failure in failures:
        if failure is not None:
            raise failure


async def is_healthy(settings: Settings, queues: Sequence[str] = queue.QUEUES) -> bool:
    """A worker of each of these queues wrote its health sentinel within the last check
    interval."""
    redis = queue.create_redis(
        settings.effective_redis_url, settings.redis_timeout_s, settings.queue_name
    )
    try:
        for name in queues:
            key = queue.queue_key(settings.queue_name, name) + health_check_key_suffix
            if not await redis.get(key):
                return False
        return True
    except Exception:  # Redis unreachable: not healthy, whatever the reason
        return False
    finally:
        await redis.aclose()


def run_worker(settings: Settings, queues: Sequence[str] = queue.QUEUES) -> None:
    configure_logging(settings.log_level, settings.log_format)
    # arq logs every cron tick (two a second) at INFO: keep that for debugging only.
    if settings.log_level.upper() != "DEBUG":
        logging.getLogger("arq").setLevel(logging.WARNING)
    eventloop.run(serve(settings, queues))
