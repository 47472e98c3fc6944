"""Real processes for end-to-end tests: `irrigation serve`, `worker` and the like as
children of the test, on free ports, stopped for sure at teardown."""

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress

import httpx

from irrigation.settings import Settings
from irrigation.stack import free_port as free_port  # the tests' import of it

STOP_GRACE_S = 10


class Process:
    """One `python -m irrigation ...` child; killed for sure at teardown."""

    def __init__(self, args: list[str], env: Mapping[str, str]) -> None:
        self.args = args
        # A file, not a pipe: nobody drains a pipe, and a full one blocks the child.
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115 (closed in stop())
            prefix="irrigation-", suffix=".log", delete=False
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "irrigation", *args],
            env={**os.environ, **env},
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        with open(self.log.name, errors="replace") as f:
            return f.read()

    def kill(self) -> None:
        """SIGKILL: no cleanup, no goodbye, like a power cut."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()

    def stop(self, deadline: float | None = None) -> None:
        """SIGTERM, then SIGKILL if it still runs STOP_GRACE_S later (or at `deadline`, a
        `time.monotonic()` shared by processes stopped side by side)."""
        self.terminate()
        if deadline is None:
            deadline = time.monotonic() + STOP_GRACE_S
        try:
            self.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.kill()
        self.log.close()


async def wait_http(url: str, timeout_s: float = 60, proc: Process | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=1) as client:
        while time.monotonic() < deadline:
            if proc is not None and proc.proc.poll() is not None:
                raise RuntimeError(f"{proc.args} exited: {proc.output()[-2000:]}")
            try:
                if (await client.get(url)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout_s} s")


StartProcess = Callable[..., Process]


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that points a child process at this test's database, Redis
    namespace and data directory."""
    return {
        "IRRIGATION_DATABASE_URL": settings.effective_database_url,
        "IRRIGATION_REDIS_URL": settings.effective_redis_url,
        "IRRIGATION_REDIS_NAMESPACE": settings.redis_namespace,
        "IRRIGATION_DATA_DIR": settings.data_dir,
        "IRRIGATION_LOG_LEVEL": os.environ.get("IRRIGATION_TEST_LOG_LEVEL", "WARNING"),
    }


@contextmanager
def spawner(env: Mapping[str, str]) -> Iterator[StartProcess]:
    """`start("worker")`, `start("serve", "--port", "8123", IRRIGATION_X="1")`: every
    process started is stopped on exit (its log printed with IRRIGATION_TEST_SHOW_LOGS)."""
    started: list[Process] = []

    def start(*args: str, **extra: str) -> Process:
        proc = Process(list(args), {**env, **extra})
        started.append(proc)
        return proc

    try:
        yield start
    finally:
        # Side by side: each gets the whole grace period, none waits for the others'.
        for proc in started:
            proc.terminate()
        deadline = time.monotonic() + STOP_GRACE_S
        for proc in started:
            proc.stop(deadline)
            if os.environ.get("IRRIGATION_TEST_SHOW_LOGS"):
                print(f"--- {proc.args}\n{proc.output()}")
            with suppress(OSError):
                os.unlink(proc.log.name)
