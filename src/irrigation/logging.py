"""Log lines: structlog for the app, and the standard library's loggers (uvicorn, arq,
alembic) through the same renderer, so every line of every process looks alike. One JSON
object per line, or readable console lines for a person at a terminal."""

import logging
import os
import sys
from pathlib import Path
from typing import Literal, TextIO

import structlog
from structlog.typing import Processor

LOG_FORMAT_ENV = "IRRIGATION_LOG_FORMAT"
# uvicorn's `log_config` (its `--log-config` takes a file): the root logger's lines through
# `formatter_from_environment`, and uvicorn's loggers handing theirs up to it.
UVICORN_LOG_CONFIG = Path(__file__).with_name("uvicorn_log_config.json")
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")

LogFormat = Literal["console", "json"]


class _CurrentStderr:
    """Writes to whatever `sys.stderr` is now: a test runner swaps it, and a logger bound to
    a closed stream would turn a log line into an error."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stream
        return False


def resolve_log_format(wanted: str, stream: TextIO | None = None) -> LogFormat:
    """`console` or `json` as asked; `auto` is console when the stream the lines go to
    (standard error) is a terminal, else JSON."""
    if wanted == "console":
        return "console"
    if wanted == "json":
        return "json"
    return "console" if _is_terminal(stream or sys.stderr) else "json"


def _timestamper(log_format: LogFormat) -> Processor:
    if log_format == "console":
        return structlog.processors.TimeStamper(fmt="%Y-%m-%d %H:%M:%S", utc=False)
    return structlog.processors.TimeStamper(fmt="iso", utc=True)


def renderer(log_format: LogFormat, *, colors: bool = False) -> Processor:
    """The last processor of every chain: it turns the event into its line."""
    if log_format == "console":
        # Plain tracebacks: structlog's default (rich's) prints every frame's locals, and
        # those can hold keys and database passwords.
        return structlog.dev.ConsoleRenderer(
            colors=colors, exception_formatter=structlog.dev.plain_traceback
        )
    return structlog.processors.JSONRenderer()


def _rendering(log_format: LogFormat) -> list[Processor]:
    colors = log_format == "console" and _is_terminal(sys.stderr) and "NO_COLOR" not in os.environ
    if log_format == "console":
        return [renderer(log_format, colors=colors)]  # it formats exceptions itself
    return [structlog.processors.format_exc_info, renderer(log_format)]


def stdlib_formatter(log_format: LogFormat) -> logging.Formatter:
    """The standard library's records (uvicorn, arq, alembic) as structlog's own lines,
    with the name of the logger that wrote them."""
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.stdlib.add_logger_name,
            _timestamper(log_format),
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *_rendering(log_format),
        ],
    )


def formatter_from_environment() -> logging.Formatter:
    """UVICORN_LOG_CONFIG's formatter: the format `serve` or `simulator` resolved and put in
    the environment before uvicorn started (uvicorn reads no settings of ours)."""
    return stdlib_formatter(resolve_log_format(os.environ.get(LOG_FORMAT_ENV, "auto")))


def configure_logging(level: str = "INFO", log_format: str = "auto") -> None:
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    chosen = resolve_log_format(log_format)
    handler = logging.StreamHandler(_CurrentStderr())
    handler.setFormatter(stdlib_formatter(chosen))
    logging.basicConfig(handlers=[handler], level=numeric, force=True)
    # Under a uvicorn started with its own logging configuration, its loggers have their
    # own handlers: theirs go to the root's instead. A logger without handlers that does
    # not propagate is one uvicorn turned off (`--no-access-log`) and stays so.
    for name in UVICORN_LOGGERS:
        logger = logging.getLogger(name)
        if logger.handlers:
            logger.handlers.clear()
            logger.propagate = True
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            _timestamper(chosen),
            *_rendering(chosen),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(_CurrentStderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
