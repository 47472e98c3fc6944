"""A worker outlives a Redis that answers slower than a request may wait
(`IRRIGATION_REDIS_TIMEOUT_S`): arq's poll dies on its connection's timeout and takes the
process with it, so the queues' own connections wait `IRRIGATION_WORKER_REDIS_TIMEOUT_S`.
Real Redis behind a proxy of the test's own that holds its answers back for a while."""

import asyncio
import contextlib
import signal
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest

from irrigation import queue
from irrigation.settings import Settings
from irrigation.worker import create_worker


class SlowProxy:
    """TCP in front of Redis; while `delay_s` > 0, each answer waits that long."""

    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream)
        self.delay_s = 0.0
        self.server: asyncio.Server | None = None

    async def _open_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.upstream.scheme == "unix":
            return await asyncio.open_unix_connection(self.upstream.path)
        return await asyncio.open_connection(self.upstream.hostname, self.upstream.port or 6379)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, slow: bool
    ) -> None:
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            while data := await reader.read(65536):
                if slow and self.delay_s:
                    await asyncio.sleep(self.delay_s)
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await self._open_upstream()
        await asyncio.gather(
            self._pipe(reader, up_writer, slow=False), self._pipe(up_reader, writer, slow=True)
        )

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        db = self.upstream.path.strip("/") if self.upstream.scheme != "unix" else "0"
        if self.upstream.scheme == "unix":
            db = dict(p.split("=", 1) for p in self.upstream.query.split("&") if p).get("db", "0")
        return f"redis://127.0.0.1:{port}/{db or 0}"


@pytest.fixture
async def proxy(settings: Settings) -> AsyncIterator[SlowProxy]:
    slow = SlowProxy(settings.effective_redis_url)
    yield slow
    if slow.server is not None:
        slow.server.close()


async def test_a_worker_keeps_polling_through_a_redis_slower_than_a_requests_timeout(
    settings: Settings, proxy: SlowProxy
) -> None:
    url = await proxy.start()
    slow = settings.model_copy(update={"redis_url": url, "redis_timeout_s": 0.5})
    assert slow.worker_redis_timeout_s > 1.0
    worker = create_worker(slow, queue.BULK)
    running = asyncio.create_task(worker.main())
    try:
        await asyncio.sleep(1.0)  # started, polling
        assert not running.done()
        proxy.delay_s = 1.0  # twice what a request waits; less than a queue's connection
        await asyncio.sleep(4.0)
        assert not running.done(), running.exception()
        proxy.delay_s = 0.0
        # And it still runs jobs: one enqueued now is done (an import no one uploaded).
        done = worker.jobs_complete
        client = queue.create_redis(settings.effective_redis_url, 2.0, settings.queue_name)
        try:
            assert await queue.enqueue_import(client, uuid.uuid4())
        finally:
            await client.aclose()
        for _ in range(100):
            if worker.jobs_complete > done:
                break
            await asyncio.sleep(0.1)
        assert worker.jobs_complete > done
        assert not running.done()
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await running
        await worker.close()
        for signum in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().remove_signal_handler(signum)
