"""Weather forecasts, the client of a weather API: the provider protocol, Open-Meteo over
HTTP (with a Redis cache) and an in-memory fake. It knows no domain: the worker makes one
provider and hands it to the automation's jobs in the worker context.

A forecast is advice, never a precondition: every failure surfaces as `WeatherUnavailable`,
and the caller waters without weather scaling and records why."""

import asyncio
import math
import time
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
# A cached answer is kept this long past its time to live: the last known forecast, for
# callers that accept an older one (the weather lockouts, within `max_forecast_age_s`).
KEEP_LAST_KNOWN_S = 86_400
# After a failed fetch a cell is not fetched again for this long: the run-queue dispatcher
# asks every second, and a dead forecast API must not cost it a timeout each time.
FAILURE_BACKOFF_S = 30.0


class WeatherUnavailable(Exception):
    """No forecast: the provider timed out, answered an error or something unreadable.

    `last_known` is the newest forecast the provider still has, older than was asked
    (its `fetched_at` says how old), or None. `backing_off`: no fetch was tried, since one
    failed moments ago (already said; callers need not log it again)."""

    def __init__(
        self, message: str, last_known: "Forecast | None" = None, *, backing_off: bool = False
    ) -> None:
        super().__init__(message)
        self.last_known = last_known
        self.backing_off = backing_off


@dataclass(frozen=True)
class DailyWeather:
    day: date
    t_min_c: float
    t_max_c: float
    precipitation_mm: float


@dataclass(frozen=True)
class HourlyWeather:
    """One hour of the forecast: Open-Meteo's instant values at `at` (the hour's start,
    UTC-aware); None where the model has no value."""

    at: datetime
    temperature_c: float | None  # temperature_2m
    wind_kmh: float | None  # wind_speed_10m


def hour_start(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


@dataclass(frozen=True)
class Forecast:
    latitude: float
    longitude: float
    days: list[DailyWeather]
    # (end of the hour, UTC-aware; mm fallen in the hour before it), Open-Meteo's convention.
    hourly_precipitation: list[tuple[datetime, float]] = field(default_factory=list)
    hours: list[HourlyWeather] = field(default_factory=list)
    # When the provider fetched it (None: unknown, e.g. parsed from a raw answer alone).
    fetched_at: datetime | None = None

    def hour_of(self, moment: datetime) -> HourlyWeather | None:
        """The forecast's hour that `moment` falls in, if the forecast covers it."""
        start = hour_start(moment)
        return next((hour for hour in self.hours if hour.at == start), None)

    def age_s(self, now: datetime) -> float:
        """Seconds since it was fetched (0 when unknown)."""
        return 0.0 if self.fetched_at is None else (now - self.fetched_at).total_seconds()

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
    async def forecast(
        self, latitude: float, longitude: float, *, max_age_s: float | None = None
    ) -> Forecast:
        """The forecast for the location, fetched at most `max_age_s` ago (default: the
        provider's own reuse limit). Raises WeatherUnavailable on any failure, carrying
        the last known forecast when the provider has one."""
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
    # Absent from answers to requests made before the lockouts asked for them (the cache).
    temperature_2m: list[float | None] | None = None
    wind_speed_10m: list[float | None] | None = None

    @model_validator(mode="after")
    def _same_lengths(self) -> "_Hourly":
        series = (self.precipitation, self.temperature_2m, self.wind_speed_10m)
        if any(values is not None and len(values) != len(self.time) for values in series):
            raise ValueError("hourly series of different lengths")
        return self


class _OpenMeteoAnswer(BaseModel):
    utc_offset_seconds: int = 0
    daily: _Daily
    hourly: _Hourly | None = None


def _mm(value: float | None) -> float:
    """Open-Meteo sends null where the model has no value: no precipitation known is 0."""
    return value if value is not None and math.isfinite(value) and value > 0 else 0.0


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def parse_open_meteo(
    raw: bytes, latitude: float, longitude: float, fetched_at: datetime | None = None
) -> Forecast:
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
    hours: list[HourlyWeather] = []
    if answer.hourly is not None:
        times = [
            at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
            for at in answer.hourly.time
        ]
        hourly = [(at, _mm(mm)) for at, mm in zip(times, answer.hourly.precipitation, strict=True)]
        temperatures = answer.hourly.temperature_2m or [None] * len(times)
        winds = answer.hourly.wind_speed_10m or [None] * len(times)
        if answer.hourly.temperature_2m is not None or answer.hourly.wind_speed_10m is not None:
            hours = [
                HourlyWeather(at, _finite(t), _finite(w))
                for at, t, w in zip(times, temperatures, winds, strict=True)
            ]
    return Forecast(latitude, longitude, days, hourly, hours, fetched_at)


class OpenMeteoProvider:
    """Open-Meteo's forecast API (https://open-meteo.com/en/docs), or the device simulator,
    which answers the same shape.

    The raw answer is cached in Redis per ~1 km cell, with the time it was fetched, and
    reused for `cache_ttl_s` (0: no cache), so every zone of a site and every worker share
    one request. It is kept for a day more as the cell's last known forecast: a failed
    fetch raises WeatherUnavailable carrying it. A cell whose fetch failed is not fetched
    again for FAILURE_BACKOFF_S (in this process). Redis is a convenience here: when it
    fails the call goes to the network."""

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
        self._failed_at: dict[str, float] = {}  # cache key -> time.monotonic() of the failure

    def cache_key(self, latitude: float, longitude: float) -> str:
        return f"{self.cache_prefix}:weather:{_rounded(latitude):.2f}:{_rounded(longitude):.2f}"

    async def forecast(
        self, latitude: float, longitude: float, *, max_age_s: float | None = None
    ) -> Forecast:
        # The request uses the cell's coordinates too, so a cached answer is exactly what
        # any caller in the cell would have fetched.
        latitude, longitude = _rounded(latitude), _rounded(longitude)
        key = self.cache_key(latitude, longitude)
        reuse_s = self.cache_ttl_s if max_age_s is None else min(self.cache_ttl_s, max_age_s)
        cached = await self._cached(key, latitude, longitude)
        if cached is not None and cached.age_s(datetime.now(UTC)) <= reuse_s:
            return cached
        failed_at = self._failed_at.get(key)
        if failed_at is not None and time.monotonic() - failed_at < FAILURE_BACKOFF_S:
            raise WeatherUnavailable("the last fetch failed moments ago", cached, backing_off=True)
        try:
            fetched_at = datetime.now(UTC)
            raw = await self._fetch(latitude, longitude)
            forecast = parse_open_meteo(raw, latitude, longitude, fetched_at)
        except WeatherUnavailable as exc:
            self._failed_at[key] = time.monotonic()
            raise WeatherUnavailable(str(exc), cached) from None
        self._failed_at.pop(key, None)
        await self._store(key, fetched_at, raw)
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
            "hourly": "precipitation,temperature_2m,wind_speed_10m",
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

    async def _cached(self, key: str, latitude: float, longitude: float) -> Forecast | None:
        """The cell's cached forecast, however old; None when there is none or it cannot be
        read (an entry of another format is fetched again and overwritten)."""
        if self.redis is None or self.cache_ttl_s <= 0:
            return None
        try:
            value: bytes | None = await asyncio.wait_for(self.redis.get(key), self.timeout_s)
        except Exception as exc:  # no cache is a slower answer, not a failure
            log.warning("weather_cache_unavailable", action="get", error=repr(exc))
            return None
        if value is None:
            return None
        stamp, _, raw = value.partition(b"\n")
        try:
            fetched_at = datetime.fromtimestamp(float(stamp), UTC)
            return parse_open_meteo(raw, latitude, longitude, fetched_at)
        except (ValueError, OverflowError, WeatherUnavailable):
            return None

    async def _store(self, key: str, fetched_at: datetime, raw: bytes) -> None:
        if self.redis is None or self.cache_ttl_s <= 0:
            return
        value = f"{fetched_at.timestamp():.3f}\n".encode() + raw
        expiry = self.cache_ttl_s + KEEP_LAST_KNOWN_S
        try:
            await asyncio.wait_for(self.redis.set(key, value, ex=expiry), self.timeout_s)
        except Exception as exc:
            log.warning("weather_cache_unavailable", action="set", error=repr(exc))


# In memory, for development and tests ----------------------------------------------------


@dataclass(frozen=True)
class FakeWeather:
    """What the fake forecasts for every day, the rain of the next 24 h, and the
    temperature and wind of every hour (but those `FakeWeatherProvider.set_hour` changed)."""

    t_min_c: float = 12.0
    t_max_c: float = 26.0
    precipitation_mm: float = 0.0
    rain_next_24h_mm: float = 0.0
    temperature_c: float = 15.0
    wind_kmh: float = 5.0


def _utcnow() -> datetime:
    return datetime.now(UTC)


class FakeWeatherProvider:
    """One weather for everywhere, optionally overridden per location, and per hour for
    every location; `fail = True` makes every forecast raise WeatherUnavailable, carrying a
    last known forecast `last_known_age_s` old (None: none). State lives in this process
    only."""

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
        self.last_known_age_s: float | None = None
        self._now = now
        self._by_location: dict[tuple[float, float], FakeWeather] = {}
        self._hours: dict[datetime, dict[str, float]] = {}

    def set(
        self,
        latitude: float | None = None,
        longitude: float | None = None,
        *,
        t_min_c: float | None = None,
        t_max_c: float | None = None,
        precipitation_mm: float | None = None,
        rain_next_24h_mm: float | None = None,
        temperature_c: float | None = None,
        wind_kmh: float | None = None,
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
                ("temperature_c", temperature_c),
                ("wind_kmh", wind_kmh),
            )
            if value is not None
        }
        if location is None:
            self.default = replace(self.default, **changes)
            return self.default
        weather = replace(self._by_location.get(location, self.default), **changes)
        self._by_location[location] = weather
        return weather

    def set_hour(
        self, at: datetime, *, temperature_c: float | None = None, wind_kmh: float | None = None
    ) -> None:
        """Forecast these values for the hour `at` falls in, at every location."""
        values = self._hours.setdefault(hour_start(at), {})
        if temperature_c is not None:
            values["temperature_c"] = temperature_c
        if wind_kmh is not None:
            values["wind_kmh"] = wind_kmh

    async def aclose(self) -> None:
        pass

    async def forecast(
        self, latitude: float, longitude: float, *, max_age_s: float | None = None
    ) -> Forecast:
        if not self.fail:
            return self._forecast(latitude, longitude, self._now())
        last_known = None
        if self.last_known_age_s is not None:
            fetched_at = self._now() - timedelta(seconds=self.last_known_age_s)
            last_known = self._forecast(latitude, longitude, fetched_at)
        raise WeatherUnavailable("fake provider set to fail", last_known)

    def _forecast(self, latitude: float, longitude: float, now: datetime) -> Forecast:
        weather = self._by_location.get((_rounded(latitude), _rounded(longitude)), self.default)
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
        midnight = hour.replace(hour=0)
        hours = []
        for h in range(24 * self.days):
            at = midnight + timedelta(hours=h)
            values = self._hours.get(at, {})
            temperature = values.get("temperature_c", weather.temperature_c)
            hours.append(HourlyWeather(at, temperature, values.get("wind_kmh", weather.wind_kmh)))
        return Forecast(latitude, longitude, days, hourly, hours, fetched_at=now)


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
