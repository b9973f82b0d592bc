"""A search after PostgreSQL restarted answers as before: the searches' connection pool does not
ping before each use (a round trip per search), so a connection the restart cut is found dead by
the search itself, which runs again on a new one (``Database.run_limited``, and
``run_limited_plain`` for REST's search on a plain connection).

A cluster of its own: restarting the session's would cut every other test's connections.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from hera_stage_ext.catalogue.catalogue import Catalogue, FileSpec
from hera_stage_ext.catalogue.db import Database

from .pgcluster import PostgresCluster, find_pg_bin


@pytest.fixture
def own_cluster() -> Iterator[PostgresCluster]:
    if find_pg_bin() is None:
        pytest.skip("PostgreSQL server binaries not installed")
    cluster = PostgresCluster().start()
    yield cluster
    cluster.stop()


def test_search_after_a_database_restart(own_cluster: PostgresCluster, tmp_path) -> None:
    db = Database(own_cluster.create_database())
    try:
        db.upgrade()
        catalogue = Catalogue(db, search_timeout_s=30)
        (tmp_path / "store").mkdir()
        catalogue.sync_stores({"store": {"path": str(tmp_path / "store")}})
        names = [f"zen.2457644.{10000 + i:05d}.xx.HH.uvh5" for i in range(3)]
        catalogue.register([FileSpec(name=n, size=1, checksums={"md5": "0" * 32}) for n in names],
                           "store", names)
        search = {"name-matches": "zen.%"}
        before = catalogue.search("files", search)
        assert [r["name"] for r in before["results"]] == names
        before_text = catalogue.search_text("files", search)  # REST's, on a plain connection
        assert catalogue.names_matching(search, 10) == names
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
            # The throwaway cluster runs without synchronous commits, and restart() stops it as
            # a crash would: make sure what was registered is on disk.
            c.exec_driver_sql("CHECKPOINT")

        own_cluster.restart()  # every connection cut, the pool's included

        assert catalogue.search("files", search) == before
        own_cluster.restart()
        assert catalogue.search_text("files", search) == before_text
        own_cluster.restart()
        assert catalogue.names_matching(search, 10) == names
    finally:
        db.dispose()
