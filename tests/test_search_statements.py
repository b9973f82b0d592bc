"""A files page's statement compiled once per shape of search (``search_statements``): a later
search of the same shape with other values (names, numbers, patterns, ranges, times, cursors)
finds exactly its own rows, on SQLite and PostgreSQL.

Every files case of ``test_search``'s hand-made catalogue runs through the cache in order and
in reverse (so most run on a statement compiled for another case's values) and must find its
expected files; random searches walked page by page (cursors too come from the cache) must find
the oracle's files in the oracle's order, with their instances where the page's statement brings
them (PostgreSQL).
"""

from __future__ import annotations

from collections import Counter
from itertools import chain

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hera_stage_ext.catalogue import search_compile, search_statements
from hera_stage_ext.catalogue.db import Database
from hera_stage_ext.catalogue.search import run_search
from hera_stage_ext.catalogue.search_rows import files_with_instances

from .test_search import (  # noqa: F401 (fixtures)
    CASES,
    FILE_SORTS,
    NOW,
    ORACLE,
    PROPERTY,
    RANDOM,
    RANDOM_NOW,
    _expected_order,
    hand_db,
    random_db,
    searches,
)

# The strategies' reprs are large (pools of values): hypothesis warns when it builds them.
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")

FILE_CASES = [(case.values[1], case.values[2]) for case in CASES if case.values[0] == "files"]


def _names(db: Database, search, *, limit: int = 10_000, sort: str | None = None,
           now=NOW, instances: list[dict] | None = None) -> list[str]:
    """Every page of ``search`` through the cached statements (plain rows, no count; with
    ``instances`` of the catalogue, each page's files must have theirs)."""
    names: list[str] = []
    cursor = None
    with db.read() as session:
        for _ in range(1000):
            page = run_search(session, "files", search, limit=limit, cursor=cursor, sort=sort,
                              now=now, plain=True)
            names.extend(row.name for row in page.rows)
            if instances is not None and page.rows:
                held = Counter(value["file"] for value in chain.from_iterable(
                    result["instances"] for result in files_with_instances(session, page.rows)))
                for row in page.rows:
                    assert held[row.name] == sum(1 for i in instances if i["file_id"] == row.id)
            cursor = page.next_cursor
            if cursor is None:
                return names
    raise AssertionError(f"pagination of {search} with sort {sort} does not end")


@pytest.mark.parametrize("order", ["forward", "reverse"])
def test_every_files_clause_through_a_shared_statement(hand_db: Database, order: str) -> None:
    search_statements._statements.clear()
    cases = FILE_CASES if order == "forward" else FILE_CASES[::-1]
    for search, expected in cases:
        assert set(_names(hand_db, search)) == expected, search
        # Paged two at a time: the cursor's values are parameters of the cached statement too.
        assert _names(hand_db, search, limit=2, sort="-size") == _names(
            hand_db, search, sort="-size"), search
    # The test means something only if many searches ran on another one's statement.
    shapes = {key for key in search_statements._statements if key[4] == "name" and not key[5]}
    assert len(shapes) <= len(cases) - 20, (len(shapes), len(cases))


@pytest.mark.parametrize("drive_max", [0, 10_000])
def test_random_file_searches_through_the_cache_match_the_oracle(
    random_db: Database, drive_max: int, monkeypatch
) -> None:
    monkeypatch.setattr(search_compile, "DRIVE_MAX_OBSERVATIONS", drive_max)
    search_statements._statements.clear()

    @PROPERTY
    @given(search=searches("files"), sort=st.sampled_from(FILE_SORTS),
           limit=st.sampled_from([4, 10_000]))
    def check(search, sort, limit) -> None:
        matching = [f for f in RANDOM.files if ORACLE.matches("files", search, f)]
        expected = [f["name"] for f in _expected_order(RANDOM, "files", matching, sort)]
        assert _names(random_db, search, limit=limit, sort=sort, now=RANDOM_NOW,
                      instances=RANDOM.instances) == expected

    check()
