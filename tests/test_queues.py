"""The three queues: every job on exactly one, enqueued where its workers are, and the jobs
an older version left on its single queue moved there. Real Redis, the test's namespace."""

import asyncio
import signal
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
import redis.asyncio as aioredis
from arq.connections import ArqRedis
from arq.constants import job_key_prefix
from arq.jobs import Job
from typer.testing import CliRunner

from irrigation import queue
from irrigation.cli import app
from irrigation.settings import Settings
from irrigation.worker import Clients, create_worker, max_jobs


@pytest.fixture
async def arq(settings: Settings) -> AsyncIterator[ArqRedis]:
    """An enqueuing client as the API has one: its default queue is the stack's base name."""
    client = queue.create_redis(settings.effective_redis_url, 2.0, settings.queue_name)
    yield client
    # arq's job keys are global, not under the namespace the fixtures clean.
    for name in ("", *(f":{q}" for q in queue.QUEUES)):
        for job_id in await client.zrange(settings.queue_name + name, 0, -1):
            await client.delete(job_key_prefix + job_id.decode())
    await client.aclose()


async def test_each_queues_worker_runs_the_jobs_the_map_puts_there_and_no_other(
    settings: Settings,
) -> None:
    clients = Clients(settings)
    served: dict[str, str] = {}
    cron_prefix = f"cron:{settings.queue_name}:"
    try:
        for name in queue.QUEUES:
            worker = create_worker(settings, name, clients=clients)
            try:
                assert worker.queue_name == f"{settings.queue_name}:{name}"
                assert worker.max_jobs == max_jobs(settings, name)
                assert worker.health_check_key == f"{settings.queue_name}:{name}:health-check"
                crons = {c.name.removeprefix(cron_prefix) for c in worker.cron_jobs}
                assert all(c.name.startswith(cron_prefix) for c in worker.cron_jobs)
                plain = set(worker.functions) - {c.name for c in worker.cron_jobs}
                for job in crons | plain:
                    assert queue.JOB_QUEUES[job] == name, job
                    served.setdefault(job, name)
            finally:
                await worker.pool.aclose()
                for signum in (signal.SIGINT, signal.SIGTERM):
                    asyncio.get_running_loop().remove_signal_handler(signum)
    finally:
        await clients.aclose()
    # Every job of the map is registered by its queue's worker: none enqueued to no one.
    assert served == queue.JOB_QUEUES
    assert set(queue.JOB_QUEUES.values()) == set(queue.QUEUES)


def test_each_queue_has_its_own_max_jobs_setting() -> None:
    settings = Settings(
        worker_max_jobs_pumps=7, worker_max_jobs_automation=5, worker_max_jobs_bulk=3
    )
    assert [max_jobs(settings, q) for q in queue.QUEUES] == [7, 5, 3]


async def test_every_enqueue_lands_on_its_jobs_queue_and_none_on_the_old_single_queue(
    settings: Settings, arq: ArqRedis
) -> None:
    activation, site, job = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    assert await queue.enqueue_start(arq, activation)
    assert await queue.enqueue_stop(arq, activation, "deadline", defer_by=60)
    assert await queue.enqueue_dispatch(arq, site)
    assert await queue.schedule_zone_evaluation(arq, 60) is not None
    assert await queue.schedule_zone_evaluation(arq, 60) is not None  # already queued: once
    assert await queue.enqueue_import(arq, job)

    async def queued(name: str) -> set[str]:
        key = queue.queue_key(settings.queue_name, name)
        return {x.decode() for x in await arq.zrange(key, 0, -1)}

    assert await queued(queue.PUMPS) == {str(activation), f"stop:deadline:{activation}"}
    assert await queued(queue.AUTOMATION) == {
        f"dispatch:{site}",
        f"{settings.queue_name}:evaluate-zones",
    }
    assert await queued(queue.BULK) == {str(job)}
    assert await arq.zcard(settings.queue_name) == 0


async def test_a_start_is_queued_once_as_arq_reads_it_and_not_again_while_queued(
    settings: Settings, arq: ArqRedis
) -> None:
    activation = uuid.uuid4()
    assert await queue.enqueue_start(arq, activation)
    assert not await queue.enqueue_start(arq, activation)  # queued already: once
    pumps = queue.queue_key(settings.queue_name, queue.PUMPS)
    info = await Job(str(activation), arq, pumps, queue.deserialize).info()
    assert info is not None
    assert info.function == queue.START_ACTIVATION
    assert list(info.args) == [str(activation)]  # through JSON, as every job
    assert info.score is not None
    # arq's own expiry: a day beyond its due time.
    ttl_ms = await arq.pttl(job_key_prefix + str(activation))
    assert 86_000_000 < ttl_ms <= 86_400_000


async def test_jobs_an_older_version_left_on_the_single_queue_move_to_their_queues(
    settings: Settings, arq: ArqRedis, redis: aioredis.Redis
) -> None:
    """Due time, id and tries kept; an old cron tick (a function this version does not
    have) is dropped; two drains at once move each job once."""
    start, stop, imported = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    # What the old version's enqueue did: arq's default queue, the stack's base name.
    await arq.enqueue_job(queue.START_ACTIVATION, start, _job_id=start)
    await arq.enqueue_job(
        queue.STOP_ACTIVATION, stop, "deadline", _job_id=stop, _defer_by=timedelta(minutes=5)
    )
    await arq.enqueue_job(queue.PROCESS_IMPORT, imported, _job_id=imported)
    await redis.set(f"arq:retry:{imported}", 3)  # it had run three slices already
    old_cron = f"cron:{settings.queue_name}:watchdog:1"
    await arq.enqueue_job(f"cron:{settings.queue_name}:watchdog", _job_id=old_cron)
    await redis.zadd(settings.queue_name, {"its-data-expired": 1})
    before = dict(await redis.zrange(settings.queue_name, 0, -1, withscores=True))

    moved = await asyncio.gather(queue.drain_legacy_queue(arq), queue.drain_legacy_queue(arq))

    assert sum(moved) >= 3
    assert await redis.zcard(settings.queue_name) == 0
    pumps = queue.queue_key(settings.queue_name, queue.PUMPS)
    bulk = queue.queue_key(settings.queue_name, queue.BULK)
    assert dict(await redis.zrange(pumps, 0, -1, withscores=True)) == {
        start.encode(): before[start.encode()],
        stop.encode(): before[stop.encode()],  # still due in five minutes
    }
    assert dict(await redis.zrange(bulk, 0, -1, withscores=True)) == {
        imported.encode(): before[imported.encode()]
    }
    assert await redis.get(f"arq:retry:{imported}") == b"3"
    automation = queue.queue_key(settings.queue_name, queue.AUTOMATION)
    assert await redis.zcard(automation) == 0
    assert await queue.drain_legacy_queue(arq) == 0
    await redis.delete(f"arq:retry:{imported}")


def test_parse_queues_keeps_the_known_names_in_order() -> None:
    assert queue.parse_queues("bulk, automation") == (queue.AUTOMATION, queue.BULK)
    assert queue.parse_queues("pumps") == (queue.PUMPS,)
    for bad in ("", "pump", "pumps,imports", " , "):
        with pytest.raises(ValueError, match=r"unknown queue|no queue named"):
            queue.parse_queues(bad)


def test_worker_refuses_an_unknown_queue() -> None:
    result = CliRunner().invoke(
        app, ["worker", "--queues", "pumps,imports"], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 2
    assert "unknown queue imports" in result.output
    assert "pumps, automation, bulk" in result.output
