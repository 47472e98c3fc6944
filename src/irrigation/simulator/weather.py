"""The simulated weather API: Open-Meteo's forecast endpoint (GET /v1/forecast) for the
variables the service asks, in UTC only, forecasting a weather that tests set (PUT /weather).
`irrigation up` points the worker's weather provider here."""

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime, BaseModel, Field

Celsius = Annotated[float, Field(ge=-90, le=60, allow_inf_nan=False)]
KmH = Annotated[float, Field(ge=0, le=500, allow_inf_nan=False)]


class WeatherChange(BaseModel):
    """From the hour `at` falls in, the hourly forecast says these (None: as before)."""

    at: AwareDatetime
    temperature_c: Celsius | None = None
    wind_kmh: KmH | None = None


class Weather(BaseModel):
    """The weather the simulator forecasts (Open-Meteo's shape at GET /v1/forecast): the
    same temperatures and precipitation total every day, `rain_next_24h_mm` spread evenly
    over the 24 hours that followed the PUT that set it, and every hour's temperature
    (`temperature_c`; None: the mean of `t_min_c` and `t_max_c`) and wind, but where a
    change (`changes`, e.g. "warms to 6 °C from 09:00") says otherwise."""

    t_min_c: float = 12.0
    t_max_c: float = 26.0
    precipitation_mm: float = Field(default=0.0, ge=0)
    rain_next_24h_mm: float = Field(default=0.0, ge=0)
    temperature_c: Celsius | None = None
    wind_kmh: KmH = 8.0
    changes: list[WeatherChange] = Field(default_factory=list, max_length=500)

    def hour(self, at: datetime) -> tuple[float, float]:
        """The temperature and wind forecast for the hour starting at `at`."""
        temperature = (
            self.temperature_c
            if self.temperature_c is not None
            else (self.t_min_c + self.t_max_c) / 2
        )
        wind = self.wind_kmh
        for change in sorted(self.changes, key=lambda c: c.at):
            if change.at.astimezone(UTC).replace(minute=0, second=0, microsecond=0) > at:
                break
            if change.temperature_c is not None:
                temperature = change.temperature_c
            if change.wind_kmh is not None:
                wind = change.wind_kmh
        return temperature, wind


OPEN_METEO_DAILY = {
    "temperature_2m_max": "°C",
    "temperature_2m_min": "°C",
    "precipitation_sum": "mm",
}
OPEN_METEO_HOURLY = {"precipitation": "mm", "temperature_2m": "°C", "wind_speed_10m": "km/h"}


@dataclass
class WeatherState:
    """The weather in force and when it was set. No await between changing the two, so a
    reader never sees half a change."""

    weather: Weather = field(default_factory=Weather)
    # Hourly rain falls in the hours ending in (set_at, set_at + 24 h].
    set_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def set(self, weather: Weather) -> None:
        self.weather, self.set_at = weather, datetime.now(UTC)

    def reset(self) -> None:
        self.weather = Weather()


def open_meteo_forecast(
    weather: Weather,
    set_at: datetime,
    latitude: float,
    longitude: float,
    forecast_days: int,
    daily_vars: list[str],
    hourly_vars: list[str],
) -> dict[str, Any]:
    first = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    days = [first + timedelta(days=i) for i in range(forecast_days)]
    hours = [first + timedelta(hours=h) for h in range(24 * forecast_days)]
    rain_until = set_at + timedelta(hours=24)
    daily_values: dict[str, float] = {
        "temperature_2m_max": weather.t_max_c,
        "temperature_2m_min": weather.t_min_c,
        "precipitation_sum": weather.precipitation_mm,
    }
    answer: dict[str, Any] = {
        "latitude": latitude,
        "longitude": longitude,
        "generationtime_ms": 0.0,
        "utc_offset_seconds": 0,
        "timezone": "GMT",
        "timezone_abbreviation": "GMT",
        "elevation": 0.0,
    }
    if daily_vars:
        answer["daily_units"] = {"time": "iso8601", **{v: OPEN_METEO_DAILY[v] for v in daily_vars}}
        answer["daily"] = {
            "time": [d.date().isoformat() for d in days],
            **{v: [daily_values[v]] * len(days) for v in daily_vars},
        }
    if hourly_vars:
        answer["hourly_units"] = {
            "time": "iso8601",
            **{v: OPEN_METEO_HOURLY[v] for v in hourly_vars},
        }
        per_hour = [weather.hour(h) for h in hours]
        hourly_values: dict[str, list[float]] = {
            # Each value is the precipitation of the hour ending at its time.
            "precipitation": [
                weather.rain_next_24h_mm / 24 if set_at < h <= rain_until else 0.0 for h in hours
            ],
            # Instant values at the hour's start, as Open-Meteo's.
            "temperature_2m": [temperature for temperature, _ in per_hour],
            "wind_speed_10m": [wind for _, wind in per_hour],
        }
        answer["hourly"] = {
            "time": [h.strftime("%Y-%m-%dT%H:%M") for h in hours],
            **{v: hourly_values[v] for v in hourly_vars},
        }
    return answer


def weather_router(state: WeatherState) -> APIRouter:
    """The weather's routes over `state`: set and read it, and the forecast."""
    router = APIRouter()

    @router.put("/weather")
    async def set_weather(body: Weather) -> dict[str, Any]:
        state.set(body)
        return {**body.model_dump(), "set_at": state.set_at.isoformat()}

    @router.get("/weather")
    async def get_weather() -> dict[str, Any]:
        return {**state.weather.model_dump(), "set_at": state.set_at.isoformat()}

    @router.get("/v1/forecast")
    async def forecast(
        latitude: float = Query(ge=-90, le=90),
        longitude: float = Query(ge=-180, le=180),
        daily: str = "",
        hourly: str = "",
        timezone: str = "GMT",
        forecast_days: int = Query(default=3, ge=0, le=16),
    ) -> JSONResponse:
        """Open-Meteo's forecast API (https://open-meteo.com/en/docs), for the variables
        the service asks, in UTC only."""
        daily_vars = [v for v in daily.split(",") if v]
        hourly_vars = [v for v in hourly.split(",") if v]
        unknown = [v for v in daily_vars if v not in OPEN_METEO_DAILY] + [
            v for v in hourly_vars if v not in OPEN_METEO_HOURLY
        ]
        if unknown or timezone.upper() not in ("UTC", "GMT"):
            reason = f"unsupported: {unknown or timezone}"
            return JSONResponse({"error": True, "reason": reason}, status_code=400)
        return JSONResponse(
            open_meteo_forecast(
                state.weather,
                state.set_at,
                latitude,
                longitude,
                forecast_days,
                daily_vars,
                hourly_vars,
            )
        )

    return router
