"""Typed dependencies on what `create_app` keeps in `app.state`."""

from typing import Annotated

from arq.connections import ArqRedis
from fastapi import Depends, Request

from irrigation.settings import Settings


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _redis(request: Request) -> ArqRedis:
    redis: ArqRedis = request.app.state.redis
    return redis


SettingsDep = Annotated[Settings, Depends(_settings)]
RedisDep = Annotated[ArqRedis, Depends(_redis)]
