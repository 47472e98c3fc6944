"""Real processes for end-to-end tests: `irrigation serve` and `irrigation worker`."""

import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


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

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()


async def wait_http(url: str, timeout_s: float = 20, proc: Process | None = None) -> None:
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
