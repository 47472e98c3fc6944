"""Weather lockouts: an automated run does not start while the forecast for the hour of its
start is colder than its zone's `min_temp_c` (`freeze`) or windier than its `max_wind_kmh`
(`wind`). The run queue's dispatcher asks before each start; a run held back waits in the
queue, is judged again at every dispatch (every second), and starts once the forecast for
the hour it would start in clears, or is skipped when its deadline passes.

Without a usable forecast (the zone has no coordinates, the worker no provider, the
provider no answer, or only one older than `max_forecast_age_s`) the zone's
`on_forecast_unavailable` decides: `run`, and the start's decision says the lockouts were
not checked, or `hold` (`forecast_unavailable`).

Only the worker judges (it has the provider, and fetching is a network call, made before
any row is locked); people's runs (manual, emergency) are never held."""

import asyncio
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog

from irrigation.automation.decisions import local
from irrigation.automation.models import Reason
from irrigation.automation.wording import seconds_words
from irrigation.weather import Forecast, WeatherProvider, WeatherUnavailable, hour_start

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Limits:
    """A zone's lockout settings, and where it is."""

    min_temp_c: float | None
    max_wind_kmh: float | None
    max_forecast_age_s: int
    on_forecast_unavailable: str
    latitude: float | None
    longitude: float | None
    timezone: str

    @property
    def any(self) -> bool:
        return self.min_temp_c is not None or self.max_wind_kmh is not None


@dataclass(frozen=True)
class Verdict:
    """What the forecast says of a start now: `reason` set, the run waits (`message` and
    `detail` are its decision's); None, it may start (`message`, when set, says why the
    lockouts were not checked, and `detail` holds what was read)."""

    reason: Reason | None
    message: str = ""
    detail: dict[str, Any] = field(default_factory=dict)


def check(forecast: Forecast, limits: Limits, now: datetime) -> Verdict:
    """The lockouts against the forecast for the hour `now` falls in (the start's hour).
    A value exactly at its limit does not lock out."""
    tz = limits.timezone
    hour = forecast.hour_of(now)
    at = hour_start(now)
    temperature = hour.temperature_c if hour is not None else None
    wind = hour.wind_kmh if hour is not None else None
    detail: dict[str, Any] = {
        "hour": at.isoformat(),
        "temperature_c": temperature,
        "min_temp_c": limits.min_temp_c,
        "wind_kmh": wind,
        "max_wind_kmh": limits.max_wind_kmh,
        "forecast_age_s": round(forecast.age_s(now), 1),
    }
    missing = [
        what
        for what, limit, value in (
            ("temperature", limits.min_temp_c, temperature),
            ("wind speed", limits.max_wind_kmh, wind),
        )
        if limit is not None and value is None
    ]
    if missing:
        why = f"the forecast has no {' or '.join(missing)} for {local(at, tz)}"
        return unavailable(limits, why, detail)
    when, low, high = local(at, tz), limits.min_temp_c, limits.max_wind_kmh
    frost = gusts = None
    if temperature is not None and low is not None and temperature < low:
        frost = f"{temperature:.1f} °C forecast for {when}, below {low:g} °C"
    if wind is not None and high is not None and wind > high:
        gusts = f"{wind:g} km/h of wind forecast for {when}, above {high:g} km/h"
    if frost is not None:
        also = f" (and {gusts})" if gusts is not None else ""
        return Verdict(Reason.freeze, f"frost lockout: {frost}{also}", detail)
    if gusts is not None:
        return Verdict(Reason.wind, f"wind lockout: {gusts}", detail)
    return Verdict(None, detail=detail)


def unavailable(limits: Limits, why: str, detail: dict[str, Any] | None = None) -> Verdict:
    """No usable forecast: the zone's `on_forecast_unavailable` decides."""
    detail = {
        **(detail or {}),
        "forecast": why,
        "max_forecast_age_s": limits.max_forecast_age_s,
        "on_forecast_unavailable": limits.on_forecast_unavailable,
    }
    if limits.on_forecast_unavailable == "hold":
        return Verdict(
            Reason.forecast_unavailable,
            f"weather lockouts: no usable forecast ({why}); held (on_forecast_unavailable hold)",
            detail,
        )
    return Verdict(None, f"weather lockouts not checked: {why}", detail)


class Lockouts:
    """The worker's judge: forecasts from its provider (None: no weather configured)."""

    def __init__(self, provider: WeatherProvider | None) -> None:
        self.provider = provider

    async def judge(
        self, zones: dict[uuid.UUID, Limits], now: datetime
    ) -> dict[uuid.UUID, Verdict]:
        """Each zone's verdict for a start now; the forecasts are fetched at once, so a
        slow forecast API costs one timeout per pass, not one per zone."""
        verdicts = await asyncio.gather(
            *(self._one(zone, limits, now) for zone, limits in zones.items())
        )
        return dict(zip(zones, verdicts, strict=True))

    async def _one(self, zone_id: uuid.UUID, limits: Limits, now: datetime) -> Verdict:
        if limits.latitude is None or limits.longitude is None:
            return unavailable(limits, "the zone has no latitude/longitude")
        if self.provider is None:
            return unavailable(limits, "no weather provider is configured")
        max_age = limits.max_forecast_age_s
        try:
            forecast = await self.provider.forecast(
                limits.latitude, limits.longitude, max_age_s=max_age
            )
        except WeatherUnavailable as exc:
            # The provider's words (its address, the network's) are for our log only, once
            # per failed fetch rather than once a second while the provider backs off.
            if not exc.backing_off:
                log.warning("lockout_weather_unavailable", zone_id=str(zone_id), error=str(exc))
            if exc.last_known is None:
                return unavailable(limits, "weather unavailable")
            forecast = exc.last_known
        except Exception:  # one zone's forecast must not stop the dispatcher
            log.exception("lockout_weather_failed", zone_id=str(zone_id))
            return unavailable(limits, "weather unavailable")
        age = forecast.age_s(now)
        if age > max_age:
            why = (
                f"the newest forecast is {seconds_words(age)} old (limit {seconds_words(max_age)})"
            )
            return unavailable(limits, why, {"forecast_age_s": round(age, 1)})
        return check(forecast, limits, now)
