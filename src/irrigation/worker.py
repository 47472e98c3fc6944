"""The arq worker: pump jobs, the watchdog, the outbox relay and the devices' reconciliation,
with their shared clients."""

import logging
from typing import Any

from arq import cron
from arq.connections import RedisSettings
from arq.constants import health_check_key_suffix
from arq.worker import Worker, func

from irrigation import queue, registry
from irrigation.alerts import jobs as alert_jobs
from irrigation.alerts import webhooks
from irrigation.automation import jobs as automation
from irrigation.automation.retention import purge_automation_history
from irrigation.common import idempotency
from irrigation.common.worker_context import CONTEXT_KEY, WorkerContext, worker_context
from irrigation.db import create_engine, create_sessionmaker
from irrigation.gateway import create_gateway
from irrigation.ingest import import_jobs, review_retention
from irrigation.logging import configure_logging
from irrigation.pumps import jobs, reconcile
from irrigation.readings import retention
from irrigation.settings import Settings
from irrigation.weather import create_provider

# Every model must be mapped before the first flush: FKs resolve across domains.
assert registry.metadata.tables

EVERY_SECOND = set(range(60))
# Short on purpose: a SIGKILLed job is retried only after the longest job timeout + 10 s.
PUMP_JOB_TIMEOUT_S = 30
# How often the devices' states are compared with the database (one state read per pump
# per sweep over HTTP).
RECONCILE_EVERY_S = 5
# 10 s slices: 100,000 tries is more than a week of one import.
IMPORT_MAX_TRIES = 100_000


async def purge_idempotency_keys(ctx: dict[str, Any]) -> int:
    jc = worker_context(ctx)
    async with jc.sessions() as session, session.begin():
        return await idempotency.purge_expired(session, jc.settings.idempotency_ttl_s)


def create_worker(settings: Settings, *, burst: bool = False) -> Worker:
    engine = create_engine(settings)
    redis = queue.create_redis(
        settings.effective_redis_url, settings.redis_timeout_s, settings.queue_name
    )
    gateway = create_gateway(settings)

    weather = create_provider(settings, redis)

    async def startup(ctx: dict[str, Any]) -> None:
        ctx[CONTEXT_KEY] = WorkerContext(
            settings=settings,
            sessions=create_sessionmaker(engine),
            gateway=gateway,
            redis=redis,
            weather=weather,
        )

    async def shutdown(ctx: dict[str, Any]) -> None:
        if weather is not None:
            await weather.aclose()
        await gateway.aclose()
        await redis.aclose()
        await engine.dispose()

    def scheduled(job: Any, **when: Any) -> Any:
        # The queue in the name keeps cron ids apart for stacks sharing one Redis.
        name = f"cron:{settings.queue_name}:{job.__name__}"
        return cron(job, name=name, timeout=PUMP_JOB_TIMEOUT_S, **when)

    def every_second(job: Any) -> Any:
        return scheduled(job, second=EVERY_SECOND, run_at_startup=True)

    return Worker(
        functions=[
            func(jobs.start_activation, name=queue.START_ACTIVATION, timeout=PUMP_JOB_TIMEOUT_S),
            func(jobs.stop_activation, name=queue.STOP_ACTIVATION, timeout=PUMP_JOB_TIMEOUT_S),
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
        ],
        cron_jobs=[
            every_second(jobs.watchdog),
            every_second(jobs.relay_outbox),
            scheduled(reconcile.reconcile_devices, second=set(range(0, 60, RECONCILE_EVERY_S))),
            every_second(webhooks.deliver_webhooks),
            every_second(automation.dispatch_runs),
            scheduled(alert_jobs.evaluate_alerts, second=set(range(0, 60, 10))),
            scheduled(automation.fire_schedules, second=set(range(0, 60, 5)), run_at_startup=True),
            scheduled(automation.sweep_rules, second={3, 33}),
            scheduled(purge_automation_history, minute={47}, second={0}),
            scheduled(
                automation.refresh_water_levels, minute={5, 35}, second={13}, run_at_startup=True
            ),
            scheduled(import_jobs.requeue_unfinished_imports, second={41}),
            scheduled(import_jobs.sweep_orphan_uploads, minute={17}, second={30}),
            scheduled(retention.purge_raw_readings, minute={23}, second={0}),
            scheduled(purge_idempotency_keys, minute={0, 30}, second={7}),
            scheduled(review_retention.purge_reviewed_quarantine, minute={53}, second={0}),
        ],
        queue_name=settings.queue_name,
        redis_pool=redis,
        redis_settings=RedisSettings.from_dsn(settings.effective_redis_url),
        on_startup=startup,
        on_shutdown=shutdown,
        burst=burst,
        job_timeout=PUMP_JOB_TIMEOUT_S,
        keep_result=0,  # job ids become reusable at once, so the relay can re-enqueue
        poll_delay=settings.worker_poll_delay_s,
        max_jobs=50,
        health_check_interval=10,
        job_serializer=queue.serialize,
        job_deserializer=queue.deserialize,
        handle_signals=True,
        log_results=settings.log_level.upper() == "DEBUG",
    )


async def is_healthy(settings: Settings) -> bool:
    """A worker of this queue wrote its health sentinel within the last check interval."""
    redis = queue.create_redis(
        settings.effective_redis_url, settings.redis_timeout_s, settings.queue_name
    )
    try:
        return bool(await redis.get(f"{settings.queue_name}{health_check_key_suffix}"))
    except Exception:  # Redis unreachable: not healthy, whatever the reason
        return False
    finally:
        await redis.aclose()


def run_worker(settings: Settings) -> None:
    configure_logging(settings.log_level, settings.log_format)
    # arq logs every cron tick (two a second) at INFO: keep that for debugging only.
    if settings.log_level.upper() != "DEBUG":
        logging.getLogger("arq").setLevel(logging.WARNING)
    # Worker.run() on the loop arq made in __init__: its SIGINT/SIGTERM handlers live there.
    create_worker(settings).run()
