"""Reference evapotranspiration (FAO-56 Hargreaves) and the water level it scales runs by.

Equation numbers refer to Allen, Pereira, Raes and Smith (1998), *Crop evapotranspiration:
guidelines for computing crop water requirements*, FAO Irrigation and Drainage Paper 56.
Hargreaves needs only the day's minimum and maximum temperature and the latitude, which
any forecast gives; FAO-56 recommends it when radiation, humidity and wind are missing.
"""

import math
from dataclasses import dataclass
from datetime import date

from irrigation.weather import DailyWeather

SOLAR_CONSTANT_MJ_PER_MIN = 0.0820  # Gsc, MJ m-2 min-1 (FAO-56 eq. 21)
MJ_TO_MM = 0.408  # 1 / latent heat of vaporization: MJ m-2 day-1 -> mm day-1 (eq. 20)


def extraterrestrial_radiation_mj(latitude_deg: float, day_of_year: int) -> float:
    """Daily extraterrestrial radiation Ra in MJ m-2 day-1 (FAO-56 eq. 21-25).

    dr = 1 + 0.033 cos(2πJ/365)               inverse relative Earth-Sun distance (eq. 23)
    δ  = 0.409 sin(2πJ/365 - 1.39)            solar declination (eq. 24)
    ωs = arccos(-tan φ tan δ)                 sunset hour angle (eq. 25)
    Ra = 24·60/π · Gsc · dr · (ωs sin φ sin δ + cos φ cos δ sin ωs)        (eq. 21)

    Beyond the polar circles the arccos argument leaves [-1, 1]: it is clamped, which
    gives ωs = 0 in the polar night (Ra = 0) and ωs = π under the midnight sun.
    """
    phi = math.radians(latitude_deg)
    angle = 2 * math.pi * day_of_year / 365
    dr = 1 + 0.033 * math.cos(angle)
    delta = 0.409 * math.sin(angle - 1.39)
    omega_s = math.acos(max(-1.0, min(1.0, -math.tan(phi) * math.tan(delta))))
    ra = (
        24
        * 60
        / math.pi
        * SOLAR_CONSTANT_MJ_PER_MIN
        * dr
        * (
            omega_s * math.sin(phi) * math.sin(delta)
            + math.cos(phi) * math.cos(delta) * math.sin(omega_s)
        )
    )
    return max(ra, 0.0)  # rounding at ωs = 0 can leave a -1e-16


def hargreaves_et0_mm(
    t_min_c: float, t_max_c: float, latitude_deg: float, day_of_year: int
) -> float:
    """Reference evapotranspiration ET0 in mm day-1 by Hargreaves (FAO-56 eq. 52).

    ET0 = 0.0023 · (Tmean + 17.8) · (Tmax - Tmin)^0.5 · 0.408 · Ra, with
    Tmean = (Tmax + Tmin) / 2. Never negative: an inverted range counts as no range, and a
    day colder than -17.8 °C on average evaporates nothing.
    """
    ra = extraterrestrial_radiation_mj(latitude_deg, day_of_year)
    t_mean = (t_max_c + t_min_c) / 2
    et0 = 0.0023 * (t_mean + 17.8) * math.sqrt(max(t_max_c - t_min_c, 0.0)) * MJ_TO_MM * ra
    return max(et0, 0.0)


def water_level_pct(et0_mm: float, baseline_mm: float, min_pct: int, max_pct: int) -> int:
    """How much of the nominal duration to water: 100 % when ET0 equals the baseline (the
    ET0 of the day the durations were set for), clamped to [min_pct, max_pct]."""
    if baseline_mm <= 0:
        raise ValueError("baseline_mm must be > 0")
    if min_pct > max_pct:
        raise ValueError("min_pct must not exceed max_pct")
    return max(min_pct, min(max_pct, round(100 * et0_mm / baseline_mm)))


def scaled_duration_s(duration_s: int, pct: int, max_runtime_s: int | None) -> int:
    """The nominal duration scaled by the water level, never above the pump's limit (None:
    no limit, for a watering split into cycles that each keep to it).

    0 stays 0: the caller skips the run instead of starting a pump for nothing."""
    scaled = round(duration_s * pct / 100)
    return scaled if max_runtime_s is None else min(scaled, max_runtime_s)


@dataclass(frozen=True)
class WaterLevel:
    """One day's water level and the figures it came from (kept with the decision)."""

    pct: int
    et0_mm: float
    ra_mj: float
    t_min_c: float
    t_max_c: float
    baseline_mm: float
    day: date


def compute_water_level(
    day_weather: DailyWeather, latitude: float, baseline_mm: float, min_pct: int, max_pct: int
) -> WaterLevel:
    """The water level of one forecast day (FAO-56 eq. 21 and 52)."""
    day_of_year = day_weather.day.timetuple().tm_yday
    et0 = hargreaves_et0_mm(day_weather.t_min_c, day_weather.t_max_c, latitude, day_of_year)
    return WaterLevel(
        pct=water_level_pct(et0, baseline_mm, min_pct, max_pct),
        et0_mm=et0,
        ra_mj=extraterrestrial_radiation_mj(latitude, day_of_year),
        t_min_c=day_weather.t_min_c,
        t_max_c=day_weather.t_max_c,
        baseline_mm=baseline_mm,
        day=day_weather.day,
    )
