"""Log lines: console on a terminal, JSON otherwise or when asked; and every line of a
process in one format, uvicorn's own and the app's alike (real `irrigation serve` and
`irrigation simulator` processes)."""

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

import httpx
import pytest

from irrigation.logging import resolve_log_format
from irrigation.settings import Settings
from tests.support.processes import Process, free_port, settings_env, wait_http

ACCESS_LINE = '127.0.0.1:5000 - "GET /healthz HTTP/1.1" 200'
ANSI = re.compile(r"\x1b\[[0-9;]*m")
# `2026-01-31 12:00:00 [info     ] event ...`: ConsoleRenderer's line, whoever wrote it.
CONSOLE_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[(debug|info|warning|error|critical) *\] \S"
)


@contextmanager
def terminal() -> Iterator[IO[str]]:
    """A real terminal: the program's end of a pseudo-terminal."""
    reader, writer = os.openpty()
    with open(writer, "w") as stream:
        try:
            yield stream
        finally:
            os.close(reader)


@contextmanager
def pipe() -> Iterator[IO[str]]:
    reader, writer = os.pipe()
    with open(writer, "w") as stream, open(reader):
        yield stream


def test_auto_is_console_on_a_terminal_and_json_on_anything_else() -> None:
    with terminal() as tty:
        assert tty.isatty()
        assert resolve_log_format("auto", tty) == "console"
    with pipe() as piped:
        assert resolve_log_format("auto", piped) == "json"
    with open(os.devnull, "w") as null:
        assert resolve_log_format("auto", null) == "json"


def test_an_asked_format_holds_whatever_the_stream() -> None:
    with terminal() as tty:
        assert resolve_log_format("json", tty) == "json"
    with pipe() as piped:
        assert resolve_log_format("console", piped) == "console"


# What a process does at start (create_app, run_worker): configure, then write a line of
# the app's (structlog) and one of a library's (the standard library, like uvicorn).
LOG_TWO_LINES = """
import logging, structlog
from irrigation.logging import configure_logging
configure_logging("INFO", {log_format!r})
structlog.get_logger("x").info("app_line", answer=42)
logging.getLogger("uvicorn.access").info(
    '%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", "/healthz", "1.1", 200
)
"""


def _run_logging(log_format: str, *, on_terminal: bool) -> list[str]:
    command = [sys.executable, "-c", LOG_TWO_LINES.format(log_format=log_format)]
    env = {k: v for k, v in os.environ.items() if k not in ("IRRIGATION_LOG_FORMAT", "NO_COLOR")}
    if not on_terminal:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        return done.stderr.splitlines()
    reader, writer = os.openpty()
    try:
        proc = subprocess.Popen(command, env=env, stdout=writer, stderr=writer)
        os.close(writer)
        output = b""
        while True:
            try:
                block = os.read(reader, 4096)
            except OSError:  # EIO: the process closed its end
                break
            if not block:
                break
            output += block
        assert proc.wait(30) == 0, output
    finally:
        os.close(reader)
    return output.decode().replace("\r\n", "\n").splitlines()


def test_a_process_on_a_terminal_writes_coloured_console_lines() -> None:
    lines = _run_logging("auto", on_terminal=True)
    assert len(lines) == 2, lines
    assert all(ANSI.search(line) for line in lines), lines  # a person's terminal: colours
    app, library = (ANSI.sub("", line) for line in lines)
    for line in (app, library):
        assert CONSOLE_LINE.match(line), line
    assert "app_line" in app
    assert "answer=42" in app
    assert ACCESS_LINE in library
    assert library.endswith("[uvicorn.access]")


@pytest.mark.parametrize("log_format", ["auto", "json"])
def test_a_process_writes_json_when_not_on_a_terminal_or_when_asked(log_format: str) -> None:
    lines = _run_logging(log_format, on_terminal=False)
    app, library = (json.loads(line) for line in lines)
    assert app.items() >= {"event": "app_line", "answer": 42, "level": "info"}.items()
    assert (
        library.items()
        >= {"event": ACCESS_LINE, "level": "info", "logger": "uvicorn.access"}.items()
    )
    for line in (app, library):
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", line["timestamp"])


def test_json_asked_on_a_terminal_is_json() -> None:
    lines = _run_logging("json", on_terminal=True)
    assert [json.loads(line)["event"] for line in lines] == ["app_line", ACCESS_LINE]


async def _serve_and_simulate(settings: Settings, log_format: str) -> tuple[str, str]:
    """The output of a real `serve` and `simulator` that answered one request each. Two API
    workers: their parent process loads no app, it logs through uvicorn's configuration."""
    env = {
        **settings_env(settings),
        "IRRIGATION_LOG_LEVEL": "INFO",
        "IRRIGATION_LOG_FORMAT": log_format,
    }
    port, simulator_port = free_port(), free_port()
    api = Process(["serve", "--port", str(port), "--workers", "2"], env)
    simulator = Process(["simulator", "--port", str(simulator_port)], env)
    try:
        await wait_http(f"http://127.0.0.1:{port}/healthz", proc=api)
        await wait_http(f"http://127.0.0.1:{simulator_port}/healthz", proc=simulator)
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"http://127.0.0.1:{port}/v1/pumps")).status_code == 401
    finally:
        api.stop()
        simulator.stop()
    return api.output(), simulator.output()


async def test_serve_and_simulator_write_uvicorn_and_app_lines_alike_on_the_console(
    settings: Settings,
) -> None:
    api, simulator = await _serve_and_simulate(settings, "console")
    lines = [line for line in (api + simulator).splitlines() if line]
    odd = [line for line in lines if not CONSOLE_LINE.match(line)]
    assert not odd, f"lines not in the console format: {odd}\n{api}\n{simulator}"
    assert not any(ANSI.search(line) for line in lines)  # a file: no colours
    # uvicorn's own, the app's access line, and uvicorn's access line (the simulator's).
    assert any("Application startup complete" in x and "[uvicorn.error]" in x for x in lines)
    assert any("Started parent process" in x and "[uvicorn.error]" in x for x in lines)
    assert any(" request " in x and "path=/v1/pumps" in x and "status=401" in x for x in lines)
    assert any('"GET /healthz HTTP/1.1" 200' in x and "[uvicorn.access]" in x for x in lines)


async def test_serve_and_simulator_write_uvicorn_and_app_lines_alike_in_json(
    settings: Settings,
) -> None:
    api, simulator = await _serve_and_simulate(settings, "json")
    try:
        lines = [json.loads(line) for line in (api + simulator).splitlines() if line]
    except ValueError as exc:
        pytest.fail(f"a line is not JSON ({exc}):\n{api}\n{simulator}")
    assert all({"event", "level", "timestamp"} <= line.keys() for line in lines), lines
    uvicorn = {x["event"] for x in lines if x.get("logger") == "uvicorn.error"}
    assert "Application startup complete." in uvicorn
    assert any(event.startswith("Started parent process") for event in uvicorn)
    assert any(x["event"] == "request" and x.get("path") == "/v1/pumps" for x in lines)
    assert any(x.get("logger") == "uvicorn.access" and "GET /healthz" in x["event"] for x in lines)
