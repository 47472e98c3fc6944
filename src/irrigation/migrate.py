"""Alembic, driven from code: `irrigation migrate`, `up` and the readiness probe use it."""

from functools import lru_cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

from irrigation.settings import Settings


def _project_root() -> Path:
    """Where alembic.ini and migrations/ live: the source checkout (editable installs,
    tests), else the working directory (the Docker image installs the package with
    `pip install .` and keeps both in its WORKDIR)."""
    source = Path(__file__).resolve().parents[2]
    return source if (source / "alembic.ini").is_file() else Path.cwd()


ROOT = _project_root()


def alembic_config(settings: Settings) -> Config:
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "migrations"))
    # '%' is ConfigParser's interpolation character; URLs may carry it (encoded passwords).
    config.set_main_option("sqlalchemy.url", settings.effective_database_url.replace("%", "%%"))
    return config


@lru_cache(maxsize=1)
def head_revision() -> str | None:
    config = Config()
    config.set_main_option("script_location", str(ROOT / "migrations"))
    return ScriptDirectory.from_config(config).get_current_head()


def upgrade(settings: Settings, revision: str = "head") -> None:
    command.upgrade(alembic_config(settings), revision)
