"""Fixtures shared by the test modules: databases (SQLite and a real PostgreSQL), a catalogue."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from hera_stage_ext.catalogue.db import Database

from .pgcluster import PostgresCluster, find_pg_bin

pytest_plugins = ("pytest_jupyter.jupyter_server",)

BACKENDS = ("sqlite", "postgresql")


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """One PostgreSQL cluster for the whole run; each test gets its own database in it."""
    if find_pg_bin() is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is required in CI (apt-get install postgresql)")
        pytest.skip("PostgreSQL server binaries not installed")
    cluster = PostgresCluster().start()
    yield cluster
    cluster.stop()


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """A fresh, empty database URL, once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'catalogue.sqlite'}"
    return request.getfixturevalue("postgres").create_database()


@pytest.fixture
def database(db_url: str) -> Iterator[Database]:
    """A migrated, empty catalogue database."""
    db = Database(db_url)
    db.upgrade()
    yield db
    db.dispose()
