"""FAO-56 Hargreaves ET0 and the water level, against the paper's worked examples.

Allen et al. (1998), FAO Irrigation and Drainage Paper 56: Example 8 (Ra, 20°S, 3 September),
Example 15 (Lyon, 45°43'N, 15 July) and Example 18 (Brussels, 50°48'N, 6 July). FAO-56
has no worked Hargreaves example, so eq. 52 is checked against a hand computation."""

from datetime import date

import pytest

from irrigation.automation.et import (
    compute_water_level,
    extraterrestrial_radiation_mj,
    hargreaves_et0_mm,
    scaled_duration_s,
    water_level_pct,
)
from irrigation.weather import DailyWeather

LYON_LATITUDE = 45 + 43 / 60  # 45°43'N
LYON_DAY = 196  # 15 July in a common year


def test_extraterrestrial_radiation_matches_fao56_example_8() -> None:
    # 20°S on 3 September (J = 246): dr = 0.985, δ = 0.120, ωs = 1.527, Ra = 32.2 MJ m-2 d-1.
    assert extraterrestrial_radiation_mj(-20, 246) == pytest.approx(32.2, abs=0.05)


def test_extraterrestrial_radiation_matches_fao56_examples_15_and_18() -> None:
    # Example 18, Brussels, 50°48'N on 6 July (J = 187): Ra = 41.09 MJ m-2 d-1.
    assert extraterrestrial_radiation_mj(50 + 48 / 60, 187) == pytest.approx(41.09, abs=0.005)
    # Example 15, Lyon, 45°43'N on 15 July (J = 196): Ra = 40.6 MJ m-2 d-1 (from Table 2.6).
    assert extraterrestrial_radiation_mj(LYON_LATITUDE, LYON_DAY) == pytest.approx(40.6, abs=0.05)


def test_hargreaves_matches_a_hand_computation_for_lyon_on_15_july() -> None:
    # Example 15's temperatures: Tmax 26.6 °C, Tmin 14.8 °C, at 45°43'N on day 196.
    #   φ  = 45.7167° = 0.79791 rad
    #   dr = 1 + 0.033 cos(2π·196/365)        = 0.96789            (eq. 23)
    #   δ  = 0.409 sin(2π·196/365 - 1.39)     = 0.37458 rad        (eq. 24)
    #   ωs = arccos(-tan φ tan δ) = arccos(-0.40310) = 1.98570 rad  (eq. 25)
    #   sin φ = 0.71590, cos φ = 0.69821, sin δ = 0.36588, cos δ = 0.93066, sin ωs = 0.91515
    #   ωs sin φ sin δ + cos φ cos δ sin ωs = 0.52013 + 0.59466 = 1.11478
    #   Ra = 24·60/π · 0.0820 · 0.96789 · 1.11478 = 37.5860 · 0.96789 · 1.11478 = 40.555
    #   Tmean = (26.6 + 14.8) / 2 = 20.7;  Tmean + 17.8 = 38.5;  √(26.6 - 14.8) = √11.8 = 3.43511
    #   ET0 = 0.0023 · 38.5 · 3.43511 · 0.408 · 40.555 = 5.033 mm/day      (eq. 52)
    assert extraterrestrial_radiation_mj(LYON_LATITUDE, LYON_DAY) == pytest.approx(
        40.555, abs=0.001
    )
    assert hargreaves_et0_mm(14.8, 26.6, LYON_LATITUDE, LYON_DAY) == pytest.approx(5.033, abs=0.001)


def test_hargreaves_is_never_negative() -> None:
    assert hargreaves_et0_mm(-40.0, -30.0, 45.0, 15) == 0.0
    # Minimum above maximum (a bad forecast) counts as no daily range.
    assert hargreaves_et0_mm(20.0, 15.0, 45.0, 196) == 0.0


@pytest.mark.parametrize("latitude", [90.0, 89.0, 70.0, -70.0, -89.0, -90.0])
@pytest.mark.parametrize("day_of_year", [1, 80, 172, 266, 355, 366])
def test_polar_latitudes_give_finite_radiation_and_et0(latitude: float, day_of_year: int) -> None:
    ra = extraterrestrial_radiation_mj(latitude, day_of_year)
    assert 0.0 <= ra < 60.0
    assert 0.0 <= hargreaves_et0_mm(0.0, 10.0, latitude, day_of_year) < 20.0


def test_polar_night_has_no_radiation_and_midnight_sun_has_plenty() -> None:
    assert extraterrestrial_radiation_mj(80.0, 355) == 0.0
    assert extraterrestrial_radiation_mj(80.0, 172) > 40.0
    assert extraterrestrial_radiation_mj(-80.0, 172) == 0.0


def test_water_level_is_et0_relative_to_the_baseline_clamped() -> None:
    assert water_level_pct(5.0, 5.0, 0, 200) == 100
    assert water_level_pct(2.5, 5.0, 0, 200) == 50
    assert water_level_pct(7.26, 5.0, 0, 200) == 145
    assert water_level_pct(0.5, 5.0, 30, 200) == 30
    assert water_level_pct(20.0, 5.0, 30, 150) == 150


@pytest.mark.parametrize("baseline_mm", [0.0, -1.0])
def test_water_level_needs_a_positive_baseline(baseline_mm: float) -> None:
    with pytest.raises(ValueError, match="baseline"):
        water_level_pct(5.0, baseline_mm, 0, 200)


def test_scaled_duration_follows_the_water_level_and_stays_under_the_pump_limit() -> None:
    assert scaled_duration_s(600, 100, 3600) == 600
    assert scaled_duration_s(600, 145, 3600) == 870
    assert scaled_duration_s(601, 50, 3600) == 300  # 300.5 rounds half to even
    assert scaled_duration_s(600, 200, 900) == 900
    assert scaled_duration_s(600, 0, 900) == 0
    assert scaled_duration_s(0, 150, 900) == 0


def test_compute_water_level_keeps_the_figures_it_came_from() -> None:
    day = date(2025, 7, 15)  # day 196 (2025 is a common year), as in the hand computation
    level = compute_water_level(
        DailyWeather(day=day, t_min_c=14.8, t_max_c=26.6, precipitation_mm=0.0),
        latitude=LYON_LATITUDE,
        baseline_mm=4.0,
        min_pct=20,
        max_pct=200,
    )
    assert level.day == day
    assert level.et0_mm == pytest.approx(5.033, abs=0.001)
    assert level.ra_mj == pytest.approx(40.555, abs=0.001)
    assert level.pct == 126  # 100 · 5.033 / 4.0 = 125.8
    assert (level.t_min_c, level.t_max_c, level.baseline_mm) == (14.8, 26.6, 4.0)
