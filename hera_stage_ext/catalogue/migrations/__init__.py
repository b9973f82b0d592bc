"""Alembic migrations of the catalogue and job tables; ``upgrade`` brings a database to head.

Run programmatically at server start (and by the test fixtures), so a site never runs alembic
by hand; an admin can still use ``alembic`` with ``script_location`` pointing here.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine

HERE = Path(__file__).parent


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(HERE))
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    command.upgrade(alembic_config(engine), revision)
