"""The one place that knows arq: job names, the queue each job runs on, the JSON serializer
and typed enqueue helpers.

arq is maintained for security fixes only; keeping it behind this module lets it be swapped.
No safety property depends on it: the outbox and the watchdog (PostgreSQL) and the device's
own auto-off and command ids hold them."""

import contextlib
import json
import time
import uuid
from collections.abc import Awaitable, Iterable, Sequence
from datetime import timedelta
from typing import Any, cast

import structlog
from arq.connections import ArqRedis
from arq.constants import expires_extra_ms, job_key_prefix, result_key_prefix
from arq.jobs import DeserializationError, deserialize_job, serialize_job
from arq.worker import Retry
from redis.asyncio import ConnectionPool

log = structlog.get_logger(__name__)

START_ACTIVATION = "pumps.start_activation"
STOP_ACTIVATION = "pumps.stop_activation"
SUPERVISE_FLOW = "pumps.supervise_flow"
PROCESS_IMPORT = "ingest.process_import"
BACKFILL_CALIBRATION = "readings.backfill_calibration"
EVALUATE_ZONES = "automation.evaluate_zones"
DISPATCH_RUNS = "automation.dispatch_runs"

# Three queues, each with workers of its own, so that no amount of one kind of work can
# delay another: a pump start never waits behind a customer's imports or webhooks.
PUMPS = "pumps"
AUTOMATION = "automation"
BULK = "bulk"
QUEUES = (PUMPS, AUTOMATION, BULK)

# The queue of every job, enqueued or cron (a cron job runs on the queue of the worker that
# schedules it: only that queue's workers register it). `_enqueue` routes by this map alone,
# so a job cannot land on a queue whose workers do not know it.
JOB_QUEUES: dict[str, str] = {
    START_ACTIVATION: PUMPS,
    STOP_ACTIVATION: PUMPS,
    SUPERVISE_FLOW: PUMPS,
    "pumps.watchdog": PUMPS,
    "pumps.relay_outbox": PUMPS,
    "pumps.reconcile_devices": PUMPS,
    "queue.drain_legacy_queue": PUMPS,
    DISPATCH_RUNS: AUTOMATION,
    EVALUATE_ZONES: AUTOMATION,
    "automation.fire_schedules": AUTOMATION,
    "automation.sweep_rules": AUTOMATION,
    "automation.refresh_water_levels": AUTOMATION,
    "alerts.evaluate_alerts": AUTOMATION,
    "alerts.deliver_webhooks": AUTOMATION,
    PROCESS_IMPORT: BULK,
    "ingest.requeue_unfinished_imports": BULK,
    "ingest.sweep_orphan_uploads": BULK,
    "readings.purge_raw_readings": BULK,
    BACKFILL_CALIBRATION: BULK,
    "readings.requeue_unfinished_backfills": BULK,
    "automation.purge_automation_history": BULK,
    "common.purge_idempotency_keys": BULK,
    "ingest.purge_reviewed_quarantine": BULK,
    "wateruse.roll_up_water_use": BULK,
}


def parse_queues(value: str) -> tuple[str, ...]:
    """`pumps`, `automation,bulk`, ...: the queues named, in QUEUES' order; ValueError for
    an unknown or missing name."""
    names = {name.strip() for name in value.split(",") if name.strip()}
    unknown = names - set(QUEUES)
    if unknown or not names:
        raise ValueError(
            f"unknown queue {', '.join(sorted(unknown))}" if unknown else "no queue named"
        )
    return tuple(q for q in QUEUES if q in names)


def queue_key(base: str, name: str) -> str:
    """The Redis key of a queue: under the stack's base queue name (`{namespace}:queue`),
    so stacks (and test runs) sharing one Redis never share a queue."""
    return f"{base}:{name}"


def job_queue_key(redis: ArqRedis, job: str) -> str:
    """Where `job` is enqueued: the clients' default queue name is the stack's base name."""
    return queue_key(redis.default_queue_name, JOB_QUEUES[job])


# A queued job whose work a batch did (pumps/starts.py, stops.py) is kept this long more,
# only so that a worker which read its id just before it left the queue still finds it.
FORGOTTEN_JOB_TTL_MS = 60_000

# arq's enqueue for many jobs in one call: each is queued unless its job (or its result)
# exists, exactly as `ArqRedis.enqueue_job` decides. KEYS: the queue, then each job's key
# and result key; ARGV: each job's id, payload, score and expiry (ms).
_ENQUEUE_MANY = """
local added = 0
for i = 0, (#KEYS - 1) / 2 - 1 do
  local job_key, result_key = KEYS[2 + 2 * i], KEYS[3 + 2 * i]
  if redis.call('exists', job_key, result_key) == 0 then
    redis.call('psetex', job_key, ARGV[4 + 4 * i], ARGV[2 + 4 * i])
    redis.call('zadd', KEYS[1], ARGV[3 + 4 * i], ARGV[1 + 4 * i])
    added = added + 1
  end
end
return added
"""


def serialize(job: dict[str, Any]) -> bytes:
    return json.dumps(job, default=str).encode()


def deserialize(raw: bytes) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(raw)
    return data


def create_redis(url: str, timeout_s: float, queue_name: str) -> ArqRedis:
    """A Redis client that can also enqueue arq jobs; it connects on first use."""
    pool = ConnectionPool.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    return ArqRedis(
        pool,
        job_serializer=serialize,
        job_deserializer=deserialize,
        default_queue_name=queue_name,
    )


async def _enqueue(
    redis: ArqRedis, job: str, *args: Any, job_id: str, defer_by: float | None = None
) -> bool:
    """False when Redis is unreachable (the outbox relay or watchdog will catch up) or the
    job is already queued."""
    try:
        queued = await redis.enqueue_job(
            job,
            *args,
            _job_id=job_id,
            _queue_name=job_queue_key(redis, job),
            _defer_by=timedelta(seconds=defer_by) if defer_by else None,
        )
    except Exception as exc:  # Redis down must never fail the request that enqueues
        log.warning("enqueue_failed", job=job, job_id=job_id, error=repr(exc))
        return False
    return queued is not None


async def enqueue_start(redis: ArqRedis, activation_id: uuid.UUID) -> bool:
    """Through `enqueue_many`'s script: one Redis round trip after every admission, where
    arq's `enqueue_job` takes three (`WATCH`, the two `EXISTS`, `MULTI`/`EXEC`); the same
    job, key, expiry and refusal of a job already queued or done."""
    job_id = str(activation_id)
    return await enqueue_many(redis, START_ACTIVATION, [(job_id, (job_id,), 0.0)]) == 1


async def enqueue_stop(
    redis: ArqRedis, activation_id: uuid.UUID, cause: str, defer_by: float | None = None
) -> bool:
    return await _enqueue(
        redis,
        STOP_ACTIVATION,
        str(activation_id),
        cause,
        job_id=stop_job_id(activation_id, cause),
        defer_by=defer_by,
    )


async def enqueue_many(
    redis: ArqRedis, job: str, jobs: Sequence[tuple[str, tuple[Any, ...], float]]
) -> int:
    """`_enqueue(redis, job, *args, job_id=job_id, defer_by=defer_by)` for each (job_id,
    args, defer_by), in one Redis call; how many were queued (0 when Redis is unreachable:
    what enqueues many has a sweeper, as `_enqueue`'s callers do)."""
    if not jobs:
        return 0
    now_ms = int(time.time() * 1000)
    keys = [job_queue_key(redis, job)]
    argv: list[Any] = []
    for job_id, args, defer_by in jobs:
        score = now_ms + int(defer_by * 1000)
        payload = serialize_job(job, args, {}, None, now_ms, serializer=serialize)
        keys += [job_key_prefix + job_id, result_key_prefix + job_id]
        argv += [job_id, payload, score, score - now_ms + expires_extra_ms]
    try:
        script = redis.eval(_ENQUEUE_MANY, len(keys), *keys, *argv)
        added = await cast(Awaitable[int], script)
    except Exception as exc:  # Redis down must never fail the job that enqueues
        log.warning("enqueue_failed", job=job, jobs=len(jobs), error=repr(exc))
        return 0
    return added


def stop_job_id(activation_id: uuid.UUID, cause: str) -> str:
    return f"stop:{cause}:{activation_id}"


async def enqueue_stops(
    redis: ArqRedis, cause: str, stops: Sequence[tuple[uuid.UUID, float]]
) -> int:
    """`enqueue_stop(redis, activation_id, cause, defer_by)` for each (activation_id,
    defer_by), in one Redis call (the watchdog stops a run whose stop job was lost)."""
    jobs = [(stop_job_id(a, cause), (str(a), cause), d) for a, d in stops]
    return await enqueue_many(redis, STOP_ACTIVATION, jobs)


async def enqueue_dispatches(redis: ArqRedis, site_ids: Iterable[uuid.UUID]) -> int:
    """`enqueue_dispatch` for each site, in one Redis call (the dispatch cron runs every
    second besides)."""
    jobs = [(f"dispatch:{s}", (str(s),), 0.0) for s in site_ids]
    return await enqueue_many(redis, DISPATCH_RUNS, jobs)


async def forget_jobs(redis: ArqRedis, job: str, job_ids: Sequence[str]) -> None:
    """Take these queued jobs off `job`'s queue: a batch has done their work. A job a
    worker has already begun runs on and finds nothing left to do; one still queued is
    never run. Best effort: a job left queued costs one read."""
    try:
        async with redis.pipeline(transaction=False) as pipe:
            pipe.zrem(job_queue_key(redis, job), *job_ids)
            for job_id in job_ids:
                pipe.pexpire(job_key_prefix + job_id, FORGOTTEN_JOB_TTL_MS)
            await pipe.execute()
    except Exception as exc:  # Redis down: the jobs run and find nothing to do
        log.warning("forget_jobs_failed", job=job, jobs=len(job_ids), error=repr(exc))


async def enqueue_flow_check(redis: ArqRedis, site_id: uuid.UUID) -> bool:
    """Judge the site's flows (runs against their meters, idle sources for leaks) now that
    readings of its flow meters came in. One job per site at a time: a burst of batches
    while one is queued costs nothing more, and no site's meters delay another's."""
    return await _enqueue(redis, SUPERVISE_FLOW, str(site_id), job_id=f"flow:{site_id}")


async def enqueue_import(redis: ArqRedis, job_id: uuid.UUID) -> bool:
    """The arq job id is the ingestion job's id: an import is queued at most once."""
    return await _enqueue(redis, PROCESS_IMPORT, str(job_id), job_id=str(job_id))


async def enqueue_backfill(redis: ArqRedis, backfill_id: uuid.UUID) -> bool:
    """The arq job id is the backfill's id: a backfill is queued at most once."""
    return await _enqueue(redis, BACKFILL_CALIBRATION, str(backfill_id), job_id=str(backfill_id))


def run_again(defer_s: float = 0) -> Exception:
    """What a job raises to be run again under the same job id: it never leaves the queue
    in between, so a crash at that moment cannot lose it (arq counts it as a try)."""
    return Retry(defer=timedelta(seconds=defer_s) if defer_s else None)


def dirty_zones_key(redis: ArqRedis) -> str:
    return f"{redis.default_queue_name}:dirty-zones"


async def schedule_zone_evaluation(redis: ArqRedis, delay_s: float) -> float | None:
    """Queue the one deferred job that evaluates the zones marked in `dirty_zones_key`,
    unless it is queued already. Returns when it is due (Unix time), None when unknown.
    Readings mark their zones on every batch, so a burst of batches costs one evaluation
    per zone per delay (the sweep catches anything lost)."""
    # arq's job keys are global (`arq:job:<id>`): the queue name keeps stacks apart.
    job_id = f"{redis.default_queue_name}:evaluate-zones"
    # arq scores a queued job with its due time in milliseconds.
    due_ms = await redis.zscore(job_queue_key(redis, EVALUATE_ZONES), job_id)
    if due_ms is not None:
        return float(due_ms) / 1000
    if await _enqueue(redis, EVALUATE_ZONES, job_id=job_id, defer_by=delay_s):
        return time.time() + delay_s
    return None


async def enqueue_dispatch(redis: ArqRedis, site_id: uuid.UUID) -> bool:
    """Start what waits in the run queue now that a pump or water source is free."""
    return await _enqueue(redis, DISPATCH_RUNS, str(site_id), job_id=f"dispatch:{site_id}")


async def drain_legacy_queue(redis: ArqRedis) -> int:
    """Move every job an older version left on the single queue (`{namespace}:queue`, the
    clients' default queue name) to the queue `JOB_QUEUES` names for it, keeping its due
    time, id and tries; returns how many moved. A job of a function this version does not
    have (an old cron tick: the crons run again on their own) is dropped, with a log line.

    Each move is one MULTI: a job is on one queue or the other, never both or neither;
    two workers draining at once move it to the same place."""
    legacy = redis.default_queue_name
    moved = 0
    for raw_id, score in await redis.zrange(legacy, 0, -1, withscores=True):
        job_id = raw_id.decode()
        data = await redis.get(job_key_prefix + job_id)
        function = None
        if data is not None:
            with contextlib.suppress(DeserializationError):
                function = deserialize_job(data, deserializer=deserialize).function
        async with redis.pipeline(transaction=True) as pipe:
            if function in JOB_QUEUES:
                pipe.zadd(queue_key(legacy, JOB_QUEUES[function]), {job_id: score}, nx=True)
                moved += 1
            else:
                log.warning("legacy_job_dropped", job_id=job_id, function=function)
            pipe.zrem(legacy, job_id)
            await pipe.execute()
    if moved:
        log.info("legacy_queue_drained", moved=moved)
    return moved
