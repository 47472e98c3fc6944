"""The loop our own long-running processes run on (`common.eventloop`): uvloop where it is
installed, asyncio's own where it is not."""

import asyncio
import sys

import pytest
import uvloop

from irrigation.common import eventloop


async def _running_loop() -> asyncio.AbstractEventLoop:
    await asyncio.sleep(0)
    return asyncio.get_running_loop()


def test_runs_on_uvloop_where_it_is_installed() -> None:
    assert isinstance(eventloop.run(_running_loop()), uvloop.Loop)


def test_falls_back_to_asyncios_loop_without_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # `import uvloop` raises ImportError
    loop = eventloop.run(_running_loop())
    assert not isinstance(loop, uvloop.Loop)
    assert isinstance(loop, asyncio.BaseEventLoop)


def test_the_coroutines_exception_propagates() -> None:
    async def fails() -> None:
        raise LookupError("from the job")

    with pytest.raises(LookupError, match="from the job"):
        eventloop.run(fails())
