"""A top-level ``or`` of indexed clauses read branch by branch on PostgreSQL (``search_union``):
the same files, in the same order, page by page, as the plain OR, a file two branches match
once; which searches take that path.
"""

from __future__ import annotations

import pytest

from hera_stage_ext.catalogue import search_statements
from hera_stage_ext.catalogue.db import Database
from hera_stage_ext.catalogue.search import run_search
from hera_stage_ext.catalogue.search_clauses import Ctx
from hera_stage_ext.catalogue.search_compile import search_shape
from hera_stage_ext.catalogue.search_parse import parse_search
from hera_stage_ext.catalogue.search_union import indexed_branches

from .test_search import F1, F2, F3, F4, F7, NOW, hand_db  # noqa: F401 (fixture)

#: Searches that take the branch-by-branch path, with what they find (F1 and F2 share obsid
#: 1000; F3 has 2000, F4 3000; F5-F7 none).
MERGED = [
    ({"or": {"name-is-exactly": F1, "obsid-in-range": [1000, 2000]}}, {F1, F2, F3}),
    ({"or": {"name-matches": "zen.2457644.1%", "obsid-is-exactly": 2000}}, {F1, F2, F3}),
    ({"or": [{"name-matches": "zen.%", "size-less-than": 250}, {"obsid-is-exactly": 3000},
             {"name-is-exactly": F7}]}, {F1, F2, F4, F7}),
    ({"or": [{"name-is-exactly": F3}, {"name-is-exactly": F3}]}, {F3}),
    ({"or": {"name-is-exactly": "nothing", "obsid-in-range": [5000, 6000]}}, set()),
]


def _pages(db: Database, search, limit: int, sort: str | None) -> list[list[str]]:
    pages: list[list[str]] = []
    cursor = None
    with db.read() as session:
        while True:
            page = run_search(session, "files", search, limit=limit, cursor=cursor, sort=sort,
                              now=NOW, plain=True)
            pages.append([row.name for row in page.rows])
            cursor = page.next_cursor
            if cursor is None:
                return pages


@pytest.mark.parametrize("search, expected", MERGED)
def test_an_or_of_indexed_branches_pages_as_the_plain_or(hand_db: Database, search,  # noqa: F811
                                                          expected) -> None:
    search_statements._statements.clear()
    # The same search inside an "and" is not a top-level "or": the plain OR.
    plain = {"and": [search]}
    for sort in (None, "-name"):
        for limit in (1, 2, 100):
            pages = _pages(hand_db, search, limit, sort)
            assert pages == _pages(hand_db, plain, limit, sort), (sort, limit)
            names = [name for page in pages for name in page]
            assert set(names) == expected and len(names) == len(expected)
            assert names == sorted(names, reverse=sort == "-name")
    # The test means something: on PostgreSQL the search's pages came from merged branches.
    merged = [s for s in search_statements._statements.values() if "DISTINCT ON" in s.sql]
    assert bool(merged) == (hand_db.engine.dialect.name == "postgresql")


def _shape(search) -> tuple:
    return search_shape(Ctx(now=NOW, postgresql=True), "files", parse_search(search))


@pytest.mark.parametrize("search, branches", [
    ({"or": {"name-is-exactly": "a", "name-matches": "zen.1.%", "obsid-in-range": [1, 2]}}, 3),
    ({"or": [{"name-matches": "zen.%", "size-greater-than": 1}, {"obsid-is-exactly": 4}]}, 2),
    # A branch no index serves, a pattern without a literal prefix, a nested combinator, a
    # constant, one branch, not a top-level "or": the plain OR.
    ({"or": {"name-is-exactly": "a", "size-greater-than": 1}}, None),
    ({"or": {"name-is-exactly": "a", "name-matches": "%.uv"}}, None),
    ({"or": [{"name-is-exactly": "a"}, {"or": {"obsid-is-exactly": 1}}]}, None),
    ({"or": [{"name-is-exactly": "a"}, {"always-false": True}]}, None),
    ({"or": {"name-is-exactly": "a"}}, None),
    ({"or": {"name-is-exactly": "a", "obsid-is-exactly": 1}, "size-less-than": 3}, None),
    ({"none-of": {"name-is-exactly": "a", "obsid-is-exactly": 1}}, None),
    ({"or": {"name-is-exactly": "a", "obsid-is-exactly": 1, "obsid-in-range": [1, 2],
             "name-matches": "b%"}}, 4),
])
def test_which_searches_are_read_branch_by_branch(search, branches) -> None:
    assert indexed_branches(_shape(search)) == branches
