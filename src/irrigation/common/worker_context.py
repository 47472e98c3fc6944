"""The one context every arq job is handed: what the worker's startup made, kept in
`ctx["irrigation"]`. Jobs take what they need from it; tests build it with the same class."""

from dataclasses import dataclass
from typing import Any

from arq.connections import ArqRedis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from irrigation.gateway import Gateway
from irrigation.settings import Settings
from irrigation.weather import WeatherProvider

CONTEXT_KEY = "irrigation"


@dataclass(frozen=True)
class WorkerContext:
    settings: Settings
    sessions: async_sessionmaker[AsyncSession]
    gateway: Gateway
    redis: ArqRedis
    # None when `IRRIGATION_WEATHER_PROVIDER` is `none`: schedules run without weather.
    weather: WeatherProvider | None = None


def worker_context(ctx: dict[str, Any]) -> WorkerContext:
    context: WorkerContext = ctx[CONTEXT_KEY]
    return context
