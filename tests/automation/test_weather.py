"""The weather providers: Open-Meteo's shape from a real HTTP server (the device simulator),
the Redis cache, failures as WeatherUnavailable, and the in-memory fake."""

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime, timedelta

import httpx
import pytest
import redis.asyncio as aioredis

from irrigation.settings import Settings
from irrigation.simulator.app import create_simulator_app
from irrigation.weather import (
    KEEP_LAST_KNOWN_S,
    DailyWeather,
    FakeWeather,
    FakeWeatherProvider,
    Forecast,
    HourlyWeather,
    OpenMeteoProvider,
    WeatherUnavailable,
    create_provider,
)
from tests.support.processes import free_port
from tests.support.servers import serve

LAT, LON = 45.7167, 4.8333


@pytest.fixture(scope="module")
async def simulator_url() -> AsyncIterator[str]:
    """A real simulator of this module's own, as in tests/pumps/conftest.py."""
    async with serve(create_simulator_app(), lifespan="on") as url:
        yield url


@pytest.fixture
async def device(simulator_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the simulator, its weather back at the defaults."""
    async with httpx.AsyncClient(base_url=simulator_url, timeout=5) as client:
        (await client.delete("/truth")).raise_for_status()
        yield client


MakeProvider = Callable[..., OpenMeteoProvider]


@pytest.fixture
async def make_provider(
    simulator_url: str, redis: aioredis.Redis, redis_namespace: str
) -> AsyncIterator[MakeProvider]:
    made: list[OpenMeteoProvider] = []

    def make(
        *,
        base_url: str = simulator_url,
        redis: aioredis.Redis = redis,
        cache_ttl_s: int = 60,
        timeout_s: float = 2.0,
    ) -> OpenMeteoProvider:
        provider = OpenMeteoProvider(base_url, redis, redis_namespace, cache_ttl_s, timeout_s)
        made.append(provider)
        return provider

    yield make
    for provider in made:
        await provider.aclose()


async def put_weather(device: httpx.AsyncClient, **weather: float) -> None:
    (await device.put("/weather", json=weather)).raise_for_status()


@asynccontextmanager
async def http_server(status: int, body: bytes) -> AsyncIterator[str]:
    """A real HTTP server that answers every request with `status` and `body`."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        head = f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        writer.write(head.encode() + body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    async with server:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


# Open-Meteo from the simulator -----------------------------------------------------------


async def test_forecast_reads_open_meteos_daily_and_hourly_series(
    device: httpx.AsyncClient, make_provider: MakeProvider
) -> None:
    await put_weather(device, t_min_c=14.8, t_max_c=26.6, precipitation_mm=1.5)

    forecast = await make_provider().forecast(LAT, LON)

    today = datetime.now(UTC).date()
    assert (forecast.latitude, forecast.longitude) == (45.72, 4.83)
    assert forecast.days == [
        DailyWeather(
            day=today + timedelta(days=i), t_min_c=14.8, t_max_c=26.6, precipitation_mm=1.5
        )
        for i in range(3)
    ]
    assert forecast.day(today + timedelta(days=1)) == forecast.days[1]
    assert forecast.day(today + timedelta(days=3)) is None
    hours = [at for at, _ in forecast.hourly_precipitation]
    midnight = datetime(today.year, today.month, today.day, tzinfo=UTC)
    assert hours == [midnight + timedelta(hours=h) for h in range(72)]
    assert sum(mm for _, mm in forecast.hourly_precipitation) == 0


async def test_rain_of_the_next_24_hours_comes_from_the_hourly_series(
    device: httpx.AsyncClient, make_provider: MakeProvider
) -> None:
    before = datetime.now(UTC)
    await put_weather(device, rain_next_24h_mm=12.0)

    forecast = await make_provider().forecast(LAT, LON)

    rainy = [(at, mm) for at, mm in forecast.hourly_precipitation if mm > 0]
    # The 24 hours ending after the PUT (all within the 3 days from today's midnight).
    assert len(rainy) == 24
    assert all(mm == pytest.approx(0.5) for _, mm in rainy)
    assert rainy[0][0] > before
    assert forecast.rain_next_24h_mm(rainy[0][0] - timedelta(minutes=1)) == pytest.approx(12.0)
    assert forecast.rain_next_24h_mm(rainy[-1][0]) == 0


async def test_second_forecast_comes_from_the_redis_cache(
    device: httpx.AsyncClient,
    make_provider: MakeProvider,
    redis: aioredis.Redis,
    redis_namespace: str,
) -> None:
    await put_weather(device, t_max_c=30.0)
    provider = make_provider(cache_ttl_s=60)
    first = await provider.forecast(LAT, LON)

    await put_weather(device, t_max_c=35.0)
    # Coordinates within the same 0.01° cell share the cached answer.
    second = await provider.forecast(LAT + 0.003, LON - 0.003)

    assert first.days[0].t_max_c == second.days[0].t_max_c == 30.0
    key = f"{redis_namespace}:weather:45.72:4.83"
    # Reused for 60 s, kept a day more as the cell's last known forecast.
    assert 60 < await redis.ttl(key) <= 60 + KEEP_LAST_KNOWN_S
    uncached = await make_provider(cache_ttl_s=0).forecast(LAT, LON)
    assert uncached.days[0].t_max_c == 35.0
    await redis.delete(key)
    assert (await provider.forecast(LAT, LON)).days[0].t_max_c == 35.0


async def test_forecast_works_without_redis(
    device: httpx.AsyncClient, make_provider: MakeProvider
) -> None:
    await put_weather(device, t_min_c=5.0)
    dead_redis = aioredis.Redis(port=free_port(), socket_connect_timeout=0.2)
    try:
        forecast = await make_provider(redis=dead_redis).forecast(LAT, LON)
    finally:
        await dead_redis.aclose()
    assert forecast.days[0].t_min_c == 5.0


async def test_nothing_listening_is_weather_unavailable(make_provider: MakeProvider) -> None:
    provider = make_provider(base_url=f"http://127.0.0.1:{free_port()}", cache_ttl_s=0)
    with pytest.raises(WeatherUnavailable):
        await provider.forecast(LAT, LON)


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (500, b'{"error": true}'),
        (200, b"<html>garbage</html>"),
        (200, b'{"daily": {"time": ["2025-07-15"], "temperature_2m_max": []}}'),
    ],
    ids=["server-error", "not-json", "not-a-forecast"],
)
async def test_bad_answers_are_weather_unavailable_and_not_cached(
    make_provider: MakeProvider,
    redis: aioredis.Redis,
    redis_namespace: str,
    status: int,
    body: bytes,
) -> None:
    async with http_server(status, body) as url:
        with pytest.raises(WeatherUnavailable):
            await make_provider(base_url=url).forecast(LAT, LON)
    assert await redis.exists(f"{redis_namespace}:weather:45.72:4.83") == 0


async def test_a_slow_server_is_weather_unavailable(make_provider: MakeProvider) -> None:
    async def never(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Not a wait for anything: a server that says nothing for far longer than the
        # provider's 0.2 s timeout.
        await asyncio.sleep(5)
        writer.close()

    server = await asyncio.start_server(never, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        provider = make_provider(base_url=f"http://127.0.0.1:{port}", timeout_s=0.2)
        with pytest.raises(WeatherUnavailable):
            await provider.forecast(LAT, LON)


async def test_null_values_are_no_rain_and_days_without_temperatures_are_left_out(
    make_provider: MakeProvider,
) -> None:
    body = b"""{
      "utc_offset_seconds": 0,
      "daily": {"time": ["2025-07-15", "2025-07-16"],
                "temperature_2m_max": [26.6, null], "temperature_2m_min": [14.8, 13.0],
                "precipitation_sum": [null, 2.0]},
      "hourly": {"time": ["2025-07-15T00:00", "2025-07-15T01:00"], "precipitation": [null, 0.4]}
    }"""
    async with http_server(200, body) as url:
        forecast = await make_provider(base_url=url, cache_ttl_s=0).forecast(LAT, LON)
    assert forecast.days == [
        DailyWeather(day=date(2025, 7, 15), t_min_c=14.8, t_max_c=26.6, precipitation_mm=0.0)
    ]
    assert forecast.hourly_precipitation == [
        (datetime(2025, 7, 15, 0, tzinfo=UTC), 0.0),
        (datetime(2025, 7, 15, 1, tzinfo=UTC), 0.4),
    ]


# The forecast itself ----------------------------------------------------------------------


def test_rain_next_24h_counts_the_hours_ending_within_a_day_of_now() -> None:
    start = datetime(2025, 7, 15, 10, tzinfo=UTC)
    hourly = [(start + timedelta(hours=h), 1.0) for h in range(48)]
    forecast = Forecast(45.0, 5.0, [], hourly)
    # From 10:30, the hours ending 11:00 .. 10:00 the next day: 24 of them.
    assert forecast.rain_next_24h_mm(start + timedelta(minutes=30)) == 24.0
    assert forecast.rain_next_24h_mm(start + timedelta(hours=40)) == 7.0


def test_rain_next_24h_without_hourly_data_sums_today_and_tomorrow() -> None:
    days = [
        DailyWeather(date(2025, 7, 15), 10, 20, 1.0),
        DailyWeather(date(2025, 7, 16), 10, 20, 2.5),
        DailyWeather(date(2025, 7, 17), 10, 20, 9.0),
    ]
    forecast = Forecast(45.0, 5.0, days, [])
    assert forecast.rain_next_24h_mm(datetime(2025, 7, 15, 23, tzinfo=UTC)) == 3.5
    assert forecast.rain_next_24h_mm(datetime(2025, 7, 17, 8, tzinfo=UTC)) == 9.0


# The fake and the factory ------------------------------------------------------------------


async def test_fake_provider_forecasts_what_it_was_set_to() -> None:
    now = datetime(2025, 7, 15, 10, 30, tzinfo=UTC)
    fake = FakeWeatherProvider(now=lambda: now)
    fake.set(t_max_c=30.0, rain_next_24h_mm=6.0)
    fake.set(LAT, LON, t_min_c=3.0)

    here = await fake.forecast(LAT, LON)
    elsewhere = await fake.forecast(0.0, 0.0)

    assert [d.day for d in here.days] == [date(2025, 7, 15), date(2025, 7, 16), date(2025, 7, 17)]
    assert (here.days[0].t_min_c, here.days[0].t_max_c) == (3.0, 30.0)
    assert (elsewhere.days[0].t_min_c, elsewhere.days[0].t_max_c) == (12.0, 30.0)
    assert here.rain_next_24h_mm(now) == pytest.approx(6.0)
    assert fake.default == FakeWeather(t_max_c=30.0, rain_next_24h_mm=6.0)


async def test_fake_provider_fail_switch_makes_weather_unavailable() -> None:
    fake = FakeWeatherProvider()
    fake.fail = True
    with pytest.raises(WeatherUnavailable):
        await fake.forecast(LAT, LON)
    fake.fail = False
    assert len((await fake.forecast(LAT, LON)).days) == 3


def test_fake_provider_needs_both_coordinates_or_neither() -> None:
    with pytest.raises(ValueError, match="both"):
        FakeWeatherProvider().set(LAT, None, t_min_c=1.0)


@pytest.mark.parametrize(
    ("name", "kind"),
    [("open_meteo", OpenMeteoProvider), ("fake", FakeWeatherProvider), ("none", type(None))],
)
async def test_create_provider_follows_the_settings(name: str, kind: type) -> None:
    settings = Settings.model_validate({"weather_provider": name})
    provider = create_provider(settings, None)
    assert isinstance(provider, kind)
    if provider is not None:
        await provider.aclose()


# Hourly temperature and wind, the forecast's age (the weather lockouts) --------------------


async def test_the_hourly_temperature_and_wind_come_from_the_simulator_with_its_changes(
    device: httpx.AsyncClient, make_provider: MakeProvider
) -> None:
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    warms = midnight + timedelta(days=1, hours=9, minutes=30)  # from 09:00 the next day
    changes = [
        {"at": warms.isoformat(), "temperature_c": 6.5},
        {"at": (warms + timedelta(hours=3)).isoformat(), "wind_kmh": 40},
    ]
    weather = {"temperature_c": -3.0, "wind_kmh": 12.0, "changes": changes}
    (await device.put("/weather", json=weather)).raise_for_status()

    forecast = await make_provider().forecast(LAT, LON)

    assert [h.at for h in forecast.hours] == [midnight + timedelta(hours=h) for h in range(72)]
    by_hour = {h.at - midnight: (h.temperature_c, h.wind_kmh) for h in forecast.hours}
    assert by_hour[timedelta(hours=32)] == (-3.0, 12.0)
    assert by_hour[timedelta(hours=33)] == (6.5, 12.0)
    assert by_hour[timedelta(hours=36)] == (6.5, 40.0)
    assert by_hour[timedelta(hours=71)] == (6.5, 40.0)
    assert forecast.hour_of(midnight + timedelta(hours=33, minutes=59)) == forecast.hours[33]
    assert forecast.hour_of(midnight + timedelta(days=3)) is None


async def test_the_simulators_hourly_temperature_defaults_to_the_days_mean(
    device: httpx.AsyncClient, make_provider: MakeProvider
) -> None:
    await put_weather(device, t_min_c=4.0, t_max_c=10.0)
    forecast = await make_provider().forecast(LAT, LON)
    assert {(h.temperature_c, h.wind_kmh) for h in forecast.hours} == {(7.0, 8.0)}


async def test_a_forecast_knows_when_it_was_fetched_and_is_refetched_past_max_age(
    device: httpx.AsyncClient, make_provider: MakeProvider
) -> None:
    await put_weather(device, temperature_c=1.0)
    provider = make_provider(cache_ttl_s=600)
    before = datetime.now(UTC)
    first = await provider.forecast(LAT, LON)
    assert first.fetched_at is not None
    assert before - timedelta(seconds=1) <= first.fetched_at <= datetime.now(UTC)

    await put_weather(device, temperature_c=9.0)
    cached = await provider.forecast(LAT, LON)  # within the cache's 600 s
    assert cached.hours[0].temperature_c == 1.0
    assert cached.fetched_at == pytest.approx(first.fetched_at, abs=timedelta(milliseconds=1))
    await asyncio.sleep(0.05)  # a forecast older than the caller's limit is fetched again
    fresh = await provider.forecast(LAT, LON, max_age_s=0.01)
    assert fresh.hours[0].temperature_c == 9.0
    assert fresh.fetched_at is not None
    assert fresh.fetched_at > first.fetched_at


async def test_a_failed_fetch_carries_the_last_known_forecast_and_backs_off(
    device: httpx.AsyncClient, make_provider: MakeProvider
) -> None:
    await put_weather(device, temperature_c=-2.0)
    known = await make_provider(cache_ttl_s=60).forecast(LAT, LON)
    # Another worker, the same cache, the forecast API gone.
    dead = make_provider(base_url=f"http://127.0.0.1:{free_port()}", cache_ttl_s=60)
    assert (await dead.forecast(LAT, LON)).hours[0].temperature_c == -2.0  # cached: no fetch
    await asyncio.sleep(0.05)
    with pytest.raises(WeatherUnavailable) as failed:
        await dead.forecast(LAT, LON, max_age_s=0.01)
    last = failed.value.last_known
    assert last is not None
    assert last.hours[0].temperature_c == -2.0
    assert last.fetched_at == pytest.approx(known.fetched_at, abs=timedelta(milliseconds=1))
    # Within the back-off the network is not tried again: the same answer, at once.
    with pytest.raises(WeatherUnavailable, match="failed moments ago") as again:
        await dead.forecast(LAT, LON, max_age_s=0.01)
    assert again.value.last_known is not None
    assert again.value.backing_off
    assert not failed.value.backing_off


async def test_a_cache_entry_of_the_old_format_is_fetched_again(
    device: httpx.AsyncClient,
    make_provider: MakeProvider,
    redis: aioredis.Redis,
) -> None:
    await put_weather(device, temperature_c=3.0)
    provider = make_provider(cache_ttl_s=60)
    key = provider.cache_key(LAT, LON)
    asked = {
        "latitude": LAT,
        "longitude": LON,
        "daily": "temperature_2m_max,temperature_2m_min,precipitation_sum",
        "hourly": "precipitation",
        "timezone": "UTC",
    }
    old = (await device.get("/v1/forecast", params=asked)).content
    await redis.set(key, old, ex=60)  # a raw answer, as cached before the fetch time was kept
    forecast = await provider.forecast(LAT, LON)
    assert forecast.hours[0].temperature_c == 3.0
    assert forecast.fetched_at is not None
    assert not (await redis.get(key)).startswith(b"{")


async def test_fake_provider_forecasts_hourly_values_and_a_last_known_forecast() -> None:
    now = datetime(2025, 1, 15, 5, 30, tzinfo=UTC)
    fake = FakeWeatherProvider(now=lambda: now)
    fake.set(temperature_c=-1.0, wind_kmh=20.0)
    fake.set_hour(now + timedelta(hours=1), temperature_c=4.0)

    forecast = await fake.forecast(LAT, LON)
    assert forecast.fetched_at == now
    assert forecast.hour_of(now) == HourlyWeather(datetime(2025, 1, 15, 5, tzinfo=UTC), -1.0, 20.0)
    later = forecast.hour_of(now + timedelta(hours=1))
    assert later is not None
    assert (later.temperature_c, later.wind_kmh) == (4.0, 20.0)

    fake.fail = True
    with pytest.raises(WeatherUnavailable) as failed:
        await fake.forecast(LAT, LON)
    assert failed.value.last_known is None
    fake.last_known_age_s = 7200
    with pytest.raises(WeatherUnavailable) as stale:
        await fake.forecast(LAT, LON)
    assert stale.value.last_known is not None
    assert stale.value.last_known.age_s(now) == 7200
