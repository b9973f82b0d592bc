"""Limits that keep one user's request from holding the server or the database: the largest
search page, the most rows one Librarian RPC search may list, and the search time limit (a
PostgreSQL statement_timeout; a progress handler on SQLite). Each is a clear JSON answer, and
the server goes on answering afterwards."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from hera_stage_ext.catalogue.db import Database

from .api_fixtures import *  # noqa: F403
from .test_librarian import req, rpc  # noqa: F401 (rpc: a fixture of that module)

#: Rows added (straight into the database) so a search can be made slow on purpose.
FILLER_ROWS = 60_000
TIMEOUT_S = 0.25


@pytest.fixture
def staging_config():
    return {"max_search_limit": 5, "max_rpc_results": 7, "search_timeout_seconds": TIMEOUT_S,
            "max_stage_files": 10}


def fill(db_url: str, rows: int) -> None:
    """``rows`` small files named fill.<n>, made by the database itself (fast on both)."""
    db = Database(db_url)
    values = ("'fill.' || n, 'fill', n, {false}, '{{}}', CURRENT_TIMESTAMP, 'filler', '{{}}'")
    columns = "name, type, size, is_directory, checksums, create_time, source, metadata"
    with db.write() as s:
        if db.backend == "sqlite":
            s.execute(text(f"WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g "
                           f"WHERE n < {rows}) INSERT INTO file ({columns}) "
                           f"SELECT {values.format(false=0)} FROM g"))
        else:
            s.execute(text(f"INSERT INTO file ({columns}) SELECT "
                           f"{values.format(false='false')} FROM generate_series(1, {rows}) n"))
    db.dispose()


#: 40 counts of instances per file, each made for every row: seconds of work uncapped.
COSTLY = {"or": [{"num-instances-greater-than": 100 + i} for i in range(40)]}


async def test_a_costly_search_is_cancelled_with_a_clear_503(
        api, rpc, ingested, db_url):  # noqa: F811 (rpc: the fixture)
    fill(db_url, FILLER_ROWS)
    code, reply = await api("POST", "search", {"search": COSTLY, "count": True, "limit": 5})
    assert code == 503, reply
    assert reply["error"] == "QueryTimeout"
    assert "narrow it" in reply["message"] and reply["timeout_seconds"] == TIMEOUT_S
    # A page alone (no count) runs its own statement on the driver's cursor: the same answer.
    code, reply = await api("POST", "search", {"search": COSTLY, "limit": 5})
    assert code == 503 and reply["error"] == "QueryTimeout", reply
    # The server (and the cancelled connection, back in its pool) answers the next search.
    code, reply = await api("POST", "search", {"search": {"name-matches": "fill.1234%"},
                                               "count": True, "limit": 5})
    assert code == 200, reply
    assert reply["total"] == 11  # fill.1234 and fill.12340 .. fill.12349
    # The Librarian RPC runs the same searches, under the same limit.
    code, reply = await rpc("search", req(search=COSTLY))
    assert code == 503 and "narrow it" in reply["message"], reply


async def test_search_page_and_rpc_listing_are_capped(
        api, rpc, ingested):  # noqa: F811 (rpc: the fixture)
    code, reply = await api("POST", "search", {"search": {"always-true": 1}, "limit": 6})
    assert code == 400 and "from 1 to 5" in reply["message"], reply
    code, reply = await api("POST", "search", {"search": {"always-true": 1}, "limit": 5})
    assert code == 200 and len(reply["results"]) == 5 and reply["next_cursor"], reply
    # The RPC has no pages: a search listing more than max_rpc_results rows is refused whole.
    code, reply = await rpc("search", req(search={"always-true": 1}))
    assert code == 400 and "more than 7 rows" in reply["message"], reply
    code, reply = await rpc("search", req(search={"name-matches": "zen.2457644.10000.%"}))
    assert code == 200 and 0 < len(reply["results"]) <= 7, reply
    # The served OpenAPI document states this server's page limit.
    code, document = await api("GET", "openapi.json")
    limit = document["components"]["schemas"]["SearchRequest"]["properties"]["limit"]
    assert limit["maximum"] == 5
    assert "503" in document["paths"]["/search"]["post"]["responses"]


async def test_a_stage_of_more_files_than_allowed_is_refused(
        api, ingested, jp_root_dir, db_url):
    """A search staged whole is resolved to at most ``max_stage_files`` names, under the search
    time limit; more is a 400 and no job, a costly one a 503 and no job."""
    code, plan = await api("POST", "stage", {"query": "session:2457646", "destination": "ten",
                                             "dry_run": True})
    assert code == 200 and plan["files"] == 10, plan  # the limit itself is allowed
    code, reply = await api("POST", "stage", {"search": {"always-true": 1},
                                              "destination": "too-many"})
    assert code == 400 and "more than 10 files; narrow it" in reply["message"], reply
    fill(db_url, FILLER_ROWS)
    code, reply = await api("POST", "stage", {"search": COSTLY, "destination": "costly"})
    assert code == 503 and reply["error"] == "QueryTimeout", reply
    code, jobs = await api("GET", "jobs")
    assert jobs["jobs"] == []
    assert not (Path(jp_root_dir) / "too-many").exists()
    assert not (Path(jp_root_dir) / "costly").exists()
