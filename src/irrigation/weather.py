"""Weather forecasts, the client of a weather API: the provider protocol, Open-Meteo over
HTTP (with a Redis cache) and an in-memory fake. It knows no domain: the worker makes one
provider and hands it to the automation's jobs in the worker context.

A forecast is advice, never a precondition: every failure surfaces as `WeatherUnavailable`,
and the caller waters without weather scaling and records why."""

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Protocol

import structlog
from pydantic import BaseModel, ValidationError, model_validator
from redis.asyncio import Redis

from irrigation.settings import Settings

if TYPE_CHECKING:
    # Imported where a provider runs (the worker): the API loads this module for its types
    # alone, and httpx would cost each API worker 6 MB of memory.
    import httpx

log = structlog.get_logger(__name__)

FORECAST_DAYS = 3


class WeatherUnavailable(Exception):
    """No forecast: the provider timed out, answered an error or something unreadable."""


@dataclass(frozen=True)
class DailyWeather:
    day: date
    t_min_c: float
    t_max_c: float
    precipitation_mm: float


@dataclass(frozen=True)
class Forecast:
    latitude: float
    longitude: float
    days: list[DailyWeather]
    # (end of the hour, UTC-aware; mm fallen in the hour before it), Open-Meteo's convention.
    hourly_precipitation: list[tuple[datetime, float]] = field(default_factory=list)

    def rain_next_24h_mm(self, now: datetime) -> float:
        """Precipitation expected in the 24 h after `now`.

        With hourly data: the sum of the hours ending in (now, now + 24 h]; an hour that
        started before `now` counts whole. Without: the daily totals of `now`'s day and
        the next (a coarser, deliberately simple fallback)."""
        if self.hourly_precipitation:
            end = now + timedelta(hours=24)
            return sum((mm for at, mm in self.hourly_precipitation if now < at <= end), 0.0)
        today = now.astimezone(UTC).date()
        days = (self.day(today), self.day(today + timedelta(days=1)))
        return sum((weather.precipitation_mm for weather in days if weather is not None), 0.0)

    def day(self, d: date) -> DailyWeather | None:
        return next((weather for weather in self.days if weather.day == d), None)


class WeatherProvider(Protocol):
    async def forecast(self, latitude: float, longitude: float) -> Forecast:
        """Raises WeatherUnavailable on any failure."""
        ...

    async def aclose(self) -> None: ...


def _rounded(coordinate: float) -> float:
    # 2 decimals (~1 km) is far finer than any weather model's grid; + 0.0 turns -0.0 into 0.0.
    return round(coordinate, 2) + 0.0


# Open-Meteo's answer, as far as we read it --------------------------------------------------


class _Daily(BaseModel):
    time: list[date]
    temperature_2m_max: list[float | None]
    temperature_2m_min: list[float | None]
    precipitation_sum: list[float | None]

    @model_validator(mode="after")
    def _same_lengths(self) -> "_Daily":
        n = len(self.time)
        if not all(
            len(values) == n
            for values in (
                self.temperature_2m_max,
                self.temperature_2m_min,
                self.precipitation_sum,
            )
        ):
            raise ValueError("daily series of different lengths")
        return self


class _Hourly(BaseModel):
    time: list[datetime]
    precipitation: list[float | None]

    @model_validator(mode="after")
    def _same_lengths(self) -> "_Hourly":
        if len(self.time) != len(self.precipitation):
            raise ValueError("hourly series of different lengths")
        return self


class _OpenMeteoAnswer(BaseModel):
    utc_offset_seconds: int = 0
    daily: _Daily
    hourly: _Hourly | None = None


def _mm(value: float | None) -> float:
    """Open-Meteo sends null where the model has no value: no precipitation known is 0."""
    return value if value is not None and math.isfinite(value) and value > 0 else 0.0


def parse_open_meteo(raw: bytes, latitude: float, longitude: float) -> Forecast:
    """Raises WeatherUnavailable when `raw` is not an Open-Meteo forecast asked in UTC."""
    try:
        answer = _OpenMeteoAnswer.model_validate_json(raw)
    except ValidationError as exc:
        raise WeatherUnavailable(f"unreadable forecast: {exc.error_count()} errors") from None
    if answer.utc_offset_seconds != 0:
        raise WeatherUnavailable("forecast is not in UTC")
    daily = answer.daily
    days = [
        DailyWeather(day=d, t_min_c=t_min, t_max_c=t_max, precipitation_mm=_mm(rain))
        for d, t_max, t_min, rain in zip(
            daily.time,
            daily.temperature_2m_max,
            daily.temperature_2m_min,
            daily.precipitation_sum,
            strict=True,
        )
        # A day without both temperatures cannot give an ET0: leave it out.
        if t_min is not None and t_max is not None
    ]
    hourly: list[tuple[datetime, float]] = []
    if answer.hourly is not None:
        hourly = [
            (at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC), _mm(mm))
            for at, mm in zip(answer.hourly.time, answer.hourly.precipitation, strict=True)
        ]
    return Forecast(latitude, longitude, days, hourly)


class OpenMeteoProvider:
    """Open-Meteo's forecast API (https://open-meteo.com/en/docs), or the device simulator,
    which answers the same shape.

    The raw answer is cached in Redis per ~1 km cell for `cache_ttl_s` (0: no cache), so
    every zone of a site and every worker share one request. Redis is a convenience here:
    when it fails the call goes to the network."""

    def __init__(
        self,
        base_url: str,
        redis: Redis | None,
        cache_prefix: str,
        cache_ttl_s: int,
        timeout_s: float,
        client: "httpx.AsyncClient | None" = None,
    ) -> None:
        import httpx

        self.base_url = base_url.rstrip("/")
        self.redis = redis
        self.cache_prefix = cache_prefix
        self.cache_ttl_s = cache_ttl_s
        self.timeout_s = timeout_s
        self._owns_client = client is None
        self._client = client if client is not None else httpx.AsyncClient(timeout=timeout_s)

    def cache_key(self, latitude: float, longitude: float) -> str:
        return f"{self.cache_prefix}:weather:{_rounded(latitude):.2f}:{_rounded(longitude):.2f}"

    async def forecast(self, latitude: float, longitude: float) -> Forecast:
        # The request uses the cell's coordinates too, so a cached answer is exactly what
        # any caller in the cell would have fetched.
        latitude, longitude = _rounded(latitude), _rounded(longitude)
        key = self.cache_key(latitude, longitude)
        cached = await self._cached(key)
        if cached is not None:
            try:
                return parse_open_meteo(cached, latitude, longitude)
            except WeatherUnavailable:
                pass  # a bad entry is refetched and overwritten
        raw = await self._fetch(latitude, longitude)
        forecast = parse_open_meteo(raw, latitude, longitude)
        await self._store(key, raw)
        return forecast

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def _fetch(self, latitude: float, longitude: float) -> bytes:
        import httpx

        params: dict[str, str | int | float] = {
            "latitude": latitude,
            "longitude": longitude,
            "daily": "temperature_2m_max,temperature_2m_min,precipitation_sum",
            "hourly": "precipitation",
            "timezone": "UTC",
            "forecast_days": FORECAST_DAYS,
        }
        try:
            response = await self._client.get(
                f"{self.base_url}/v1/forecast", params=params, timeout=self.timeout_s
            )
        except httpx.HTTPError as exc:
            raise WeatherUnavailable(f"{type(exc).__name__}: {exc}"[:300]) from None
        if response.status_code != 200:
            raise WeatherUnavailable(f"forecast answered {response.status_code}")
        return response.content

    async def _cached(self, key: str) -> bytes | None:
        if self.redis is None or self.cache_ttl_s <= 0:
            return None
        try:
            value: bytes | None = await asyncio.wait_for(self.redis.get(key), self.timeout_s)
        except Exception as exc:  # no cache is a slower answer, not a failure
            log.warning("weather_cache_unavailable", action="get", error=repr(exc))
            return None
        return value

    async def _store(self, key: str, raw: bytes) -> None:
        if self.redis is None or self.cache_ttl_s <= 0:
            return
        try:
            await asyncio.wait_for(self.redis.set(key, raw, ex=self.cache_ttl_s), self.timeout_s)
        except Exception as exc:
            log.warning("weather_cache_unavailable", action="set", error=repr(exc))


# In memory, for development and tests ----------------------------------------------------


@dataclass(frozen=True)
class FakeWeather:
    """What the fake forecasts for every day, and the rain of the next 24 h."""

    t_min_c: float = 12.0
    t_max_c: float = 26.0
    precipitation_mm: float = 0.0
    rain_next_24h_mm: float = 0.0


def _utcnow() -> datetime:
    return datetime.now(UTC)


class FakeWeatherProvider:
    """One weather for everywhere, optionally overridden per location; `fail = True` makes
    every forecast raise WeatherUnavailable. State lives in this process only."""

    def __init__(
        self,
        default: FakeWeather | None = None,
        *,
        days: int = FORECAST_DAYS,
        now: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.default = default or FakeWeather()
        self.days = days
        self.fail = False
        self._now = now
        self._by_location: dict[tuple[float, float], FakeWeather] = {}

    def set(
        self,
        latitude: float | None = None,
        longitude: float | None = None,
        *,
        t_min_c: float | None = None,
        t_max_c: float | None = None,
        precipitation_mm: float | None = None,
        rain_next_24h_mm: float | None = None,
    ) -> FakeWeather:
        """Change the fields given, for one location or (no coordinates) for every location
        without its own; returns the weather now in force there."""
        if latitude is None or longitude is None:
            if latitude is not None or longitude is not None:
                raise ValueError("give both latitude and longitude, or neither")
            location = None
        else:
            location = (_rounded(latitude), _rounded(longitude))
        changes = {
            name: value
            for name, value in (
                ("t_min_c", t_min_c),
                ("t_max_c", t_max_c),
                ("precipitation_mm", precipitation_mm),
                ("rain_next_24h_mm", rain_next_24h_mm),
            )
            if value is not None
        }
        if location is None:
            self.default = replace(self.default, **changes)
            return self.default
        weather = replace(self._by_location.get(location, self.default), **changes)
        self._by_location[location] = weather
        return weather

    async def aclose(self) -> None:
        pass

    async def forecast(self, latitude: float, longitude: float) -> Forecast:
        if self.fail:
            raise WeatherUnavailable("fake provider set to fail")
        weather = self._by_location.get((_rounded(latitude), _rounded(longitude)), self.default)
        now = self._now()
        today = now.date()
        days = [
            DailyWeather(
                day=today + timedelta(days=i),
                t_min_c=weather.t_min_c,
                t_max_c=weather.t_max_c,
                precipitation_mm=weather.precipitation_mm,
            )
            for i in range(self.days)
        ]
        # The rain falls evenly over the 24 whole hours ending after `now`.
        hour = now.replace(minute=0, second=0, microsecond=0)
        hourly = [(hour + timedelta(hours=h), weather.rain_next_24h_mm / 24) for h in range(1, 25)]
        return Forecast(latitude, longitude, days, hourly)


def create_provider(settings: Settings, redis: Redis | None) -> WeatherProvider | None:
    """The provider `IRRIGATION_WEATHER_PROVIDER` names; None when weather is turned off."""
    if settings.weather_provider == "none":
        return None
    if settings.weather_provider == "fake":
        return FakeWeatherProvider()
    return OpenMeteoProvider(
        settings.weather_url,
        redis,
        cache_prefix=settings.redis_namespace,
        cache_ttl_s=settings.weather_cache_s,
        timeout_s=settings.weather_timeout_s,
    )
