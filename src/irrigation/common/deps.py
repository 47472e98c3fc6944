"""Typed dependencies on what `create_app` keeps in `app.state`.

`async def` on purpose: FastAPI runs a plain `def` dependency in the threadpool."""

from typing import Annotated

from arq.connections import ArqRedis
from fastapi import Depends, Request

from irrigation.settings import Settings


async def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def _redis(request: Request) -> ArqRedis:
    redis: ArqRedis = request.app.state.redis
    return redis


SettingsDep = Annotated[Settings, Depends(_settings)]
RedisDep = Annotated[ArqRedis, Depends(_redis)]
