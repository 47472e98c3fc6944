"""Alembic, driven from code: `irrigation migrate` and `up` use it, the readiness probe
reads the head revision. Alembic is imported only where it runs migrations: loading it
cost every API worker 12 MB of memory."""

import re
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from irrigation.settings import Settings

if TYPE_CHECKING:
    from alembic.config import Config


def _project_root() -> Path:
    """Where alembic.ini and migrations/ live: the source checkout (editable installs,
    tests), else the working directory (the Docker image installs the package with
    `pip install .` and keeps both in its WORKDIR)."""
    source = Path(__file__).resolve().parents[2]
    return source if (source / "alembic.ini").is_file() else Path.cwd()


ROOT = _project_root()


def alembic_config(settings: Settings) -> "Config":
    from alembic.config import Config

    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "migrations"))
    # '%' is ConfigParser's interpolation character; URLs may carry it (encoded passwords).
    config.set_main_option("sqlalchemy.url", settings.effective_database_url.replace("%", "%%"))
    return config


_LINK = re.compile(r"^(revision|down_revision)\b[^=\n]*=\s*(?:[\"']([^\"']+)[\"']|None)", re.M)


@lru_cache(maxsize=1)
def head_revision() -> str | None:
    """The revision no other migration revises, read from the files' `revision` and
    `down_revision` lines (a test holds it to alembic's own answer)."""
    revisions: set[str] = set()
    revised: set[str] = set()
    for path in (ROOT / "migrations" / "versions").glob("*.py"):
        for name, value in _LINK.findall(path.read_text()):
            if value:
                (revisions if name == "revision" else revised).add(value)
    heads = revisions - revised
    return heads.pop() if len(heads) == 1 else None


def upgrade(settings: Settings, revision: str = "head") -> None:
    from alembic import command

    command.upgrade(alembic_config(settings), revision)
