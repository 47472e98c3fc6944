"""Calibration fixtures: a data directory per test (import uploads)."""

from pathlib import Path

import pytest

from irrigation.settings import Settings


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    return settings.model_copy(update={"data_dir": str(tmp_path / "data")})
