"""The one-line query syntax: translations, errors with columns, JSON pass-through, and the
translated searches run on both databases."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hera_stage_ext.catalogue.db import Database
from hera_stage_ext.catalogue.query_text import parse_query_text
from hera_stage_ext.catalogue.search import run_search
from hera_stage_ext.catalogue.search_compile import validate_search
from hera_stage_ext.errors import SearchError

from .search_oracle import load
from .test_search import F1, F2, F3, F4, F5, F6, F7, HAND, NOW


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", {}),
        ("   ", {}),
        ("zen.2457644.*", {"name-matches": "zen.2457644.%"}),
        ("zen.2457644.?????.xx.*", {"name-matches": "zen.2457644._____.xx.%"}),
        ("zen.2457644.12345.xx.HH.uvc", {"name-is-exactly": "zen.2457644.12345.xx.HH.uvc"}),
        # % and _ keep their LIKE meaning in a glob; without * or ? the word is exact
        ("zen_a%b.*", {"name-matches": "zen_a%b.%"}),
        ("zen_a%b.txt", {"name-is-exactly": "zen_a%b.txt"}),
        ("maintenance#1.pgdump", {"name-is-exactly": "maintenance#1.pgdump"}),
        ("name:zen.*", {"name-matches": "zen.%"}),
        ('"a name with spaces"', {"name-is-exactly": "a name with spaces"}),
        ('"a b"*', {"name-matches": "a b%"}),
        ('"star*"', {"name-is-exactly": "star*"}),
        ('"q\\"uote\\\\"', {"name-is-exactly": 'q"uote\\'}),
        ('name:"x y"', {"name-is-exactly": "x y"}),
        ('"abc:def"', {"name-is-exactly": "abc:def"}),
        ("obsid:1157000000..1157010000", {"obsid-in-range": [1157000000, 1157010000]}),
        ("obsid:1157000000", {"obsid-is-exactly": 1157000000}),
        ("obsid>1157000000", {"obsid-greater-than": 1157000000}),
        ("obsid<1157000000", {"obsid-less-than": 1157000000}),
        ("obsid:null", {"obsid-is-null": True}),
        ("obsid:NULL", {"obsid-is-null": True}),
        ("size>1000000", {"size-greater-than": 1000000}),
        ("size<5e6", {"size-less-than": 5000000}),
        ("size:1.5e3", {"size-is-exactly": 1500}),
        ("size:-1..+2", {"size-in-range": [-1, 2]}),
        ("type:uvc", {"type-is-exactly": "uvc"}),
        ("type:uv?", {"type-matches": "uv_"}),
        ("source:correlator", {"source-is-exactly": "correlator"}),
        ("Source:rtp", {"source-is-exactly": "rtp"}),
        ("session:2457644", {"session-id-is-exactly": 2457644}),
        ("session:1..3", {"session-id-in-range": [1, 3]}),
        ("jd:2457644.1..2457644.5", {"start-time-jd-in-range": [2457644.1, 2457644.5]}),
        ("jd>2457644", {"start-time-jd-greater-than": 2457644}),
        ("lst:1.5..3", {"start-lst-hr-in-range": [1.5, 3]}),
        ("stop-time-jd<2457644.5", {"stop-time-jd-less-than": 2457644.5}),
        ("instances>1", {"num-instances-greater-than": 1}),
        ("instances:0", {"num-instances-is-exactly": 0}),
        ("newer:7", {"not-older-than": 7}),
        ("newer:0.5", {"not-older-than": 0.5}),
        ("older:30", {"not-newer-than": 30}),
        ("-type:uv", {"none-of": [{"type-is-exactly": "uv"}]}),
        ("--type:uv", {"none-of": [{"none-of": [{"type-is-exactly": "uv"}]}]}),
        ("a OR b", {"or": [{"name-is-exactly": "a"}, {"name-is-exactly": "b"}]}),
        ("a* OR b* OR c", {"or": [{"name-matches": "a%"}, {"name-matches": "b%"},
                                  {"name-is-exactly": "c"}]}),
        ("a or b", {"and": [{"name-is-exactly": "a"}, {"name-is-exactly": "or"},
                            {"name-is-exactly": "b"}]}),
        ("zen.* size>1 -type:uvc",
         {"name-matches": "zen.%", "size-greater-than": 1,
          "none-of": [{"type-is-exactly": "uvc"}]}),
        ("*.uv *.uvc", {"and": [{"name-matches": "%.uv"}, {"name-matches": "%.uvc"}]}),
        ("type:uv size>1 OR obsid:null",
         {"type-is-exactly": "uv",
          "or": [{"size-greater-than": 1}, {"obsid-is-null": True}]}),
        ("-(type:uv OR type:uvc) size:0",
         {"none-of": [{"or": [{"type-is-exactly": "uv"}, {"type-is-exactly": "uvc"}]}],
          "size-is-exactly": 0}),
        ("(a b) OR ()",
         {"or": [{"and": [{"name-is-exactly": "a"}, {"name-is-exactly": "b"}]}, {}]}),
        ("(a type:uv)", {"name-is-exactly": "a", "type-is-exactly": "uv"}),
        ('{"name-matches": "a#b%"}', {"name-matches": "a#b%"}),
        ('  [{"size-is-exactly": 1}, {"size-is-exactly": 2}]',
         [{"size-is-exactly": 1}, {"size-is-exactly": 2}]),
    ],
)
def test_translation(text: str, expected) -> None:
    assert parse_query_text(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("size>10k", {"size-greater-than": 10_000}),
        ("size>10K", {"size-greater-than": 10_000}),
        ("size>10kB", {"size-greater-than": 10_000}),
        ("size>1.5GiB", {"size-greater-than": 1_610_612_736}),
        ("size>1.5gib", {"size-greater-than": 1_610_612_736}),
        ("size>1.5Gi", {"size-greater-than": 1_610_612_736}),
        ("size<=2M", {"size-less-than": 2_000_001}),
        ("size>=2M", {"size-greater-than": 1_999_999}),
        ("size:1k..2MiB", {"size-in-range": [1000, 2_097_152]}),
        ("size:3T", {"size-is-exactly": 3 * 10**12}),
        ("size<1TiB", {"size-less-than": 2**40}),
        ("size>1P", {"size-greater-than": 10**15}),
        ("size:100B", {"size-is-exactly": 100}),
        ("size>.5k", {"size-greater-than": 500}),
        ("size>1e3k", {"size-greater-than": 10**6}),
        # between two whole bytes: rounded so that the comparison on whole sizes is the same
        ("size>1.1KiB", {"size-greater-than": 1126}),
        ("size<1.1KiB", {"size-less-than": 1127}),
        ("size>=1.1KiB", {"size-greater-than": 1126}),
        ("size<=1.1KiB", {"size-less-than": 1127}),
        ("size:1.1KiB..2.9KiB", {"size-in-range": [1127, 2969]}),
        ("obsid>=5", {"obsid-greater-than": 4}),
        ("obsid<=5", {"obsid-less-than": 6}),
    ],
)
def test_size_units_and_inclusive_comparisons(text: str, expected: dict) -> None:
    assert parse_query_text(text) == expected


def test_size_units_for_observations_total_size() -> None:
    assert parse_query_text("size>1GiB", "observations") == {"total-size-greater-than": 2**30}
    assert parse_query_text("total-size<=1k", "observations") == {"total-size-less-than": 1001}


@pytest.mark.parametrize(
    ("kind", "text", "expected"),
    [
        ("instances", "store:pot1 policy:allowed",
         {"store-name-is-exactly": "pot1", "deletion-policy-is-exactly": "allowed"}),
        ("instances", "zen.* store:pot?",
         {"name-matches": "zen.%", "store-name-matches": "pot_"}),
        ("observations", "obsid:1..2 session:3 files:0 size>5 duration:0.1..0.2 lst<3 jd>1",
         {"obsid-in-range": [1, 2], "session-id-is-exactly": 3, "num-files-is-exactly": 0,
          "total-size-greater-than": 5, "duration-in-range": [0.1, 0.2],
          "start-lst-hr-less-than": 3, "start-time-jd-greater-than": 1}),
        ("sessions", "session:5 age<3 obs>1 files:2 duration>0.5 jd:1..2",
         {"session-id-is-exactly": 5, "age-less-than": 3, "num-obs-greater-than": 1,
          "num-files-is-exactly": 2, "duration-greater-than": 0.5,
          "start-time-jd-in-range": [1, 2]}),
    ],
)
def test_translation_per_kind(kind: str, text: str, expected: dict) -> None:
    assert parse_query_text(text, kind) == expected


@pytest.mark.parametrize(
    ("text", "kind", "match"),
    [
        ("size:abc", "files", r"column 6: 'abc' is not an integer \(in 'size:abc'\)"),
        ("zen.* size:1.5", "files", r"column 12: '1.5' is not an integer"),
        ("size:1e40", "files", r"not an integer"),
        ("size:99999999999999999999", "files", r"out of range"),
        ("jd>=5", "files", r"column 1: '>=' is for whole numbers: use jd:A..B"),
        ("lst<=5", "files", r"'<=' is for whole numbers"),
        ("size>10X", "files", r"column 8: unknown size unit 'X': use k, M, G, T, P \(powers "
         r"of 1000\) or KiB, MiB, GiB, TiB, PiB \(powers of 1024\); case does not matter"),
        ("size>2kbit", "files", r"column 7: unknown size unit 'kbit'"),
        ("size>1.5Gib2", "files", r"'1.5Gib2' is not an integer"),
        ("size:1.1KiB", "files", r"column 6: '1.1KiB' is 1126.4 bytes, not a whole number"),
        ("size>1e40k", "files", r"out of range"),
        ("size>9000PiB", "files", r"out of range"),
        ("obsid>10k", "files", r"'10k' is not an integer"),
        ("files>1k", "observations", r"'1k' is not an integer"),
        ("bogus:1", "files", r"column 1: unknown field 'bogus' for files"),
        ("a store:x", "files", r"column 3: unknown field 'store' for files"),
        ("jd:5", "files", r"'jd' is a float: use jd:A..B"),
        ("jd:x..2", "files", r"column 4: 'x' is not a number"),
        ("jd:1..y", "files", r"column 7: 'y' is not a number"),
        ("jd:1..", "files", r"a range needs both ends"),
        ("jd>1e999", "files", r"out of range"),
        ("type>5", "files", r"'type' is text: use type:VALUE"),
        ("newer>5", "files", r"use newer:DAYS"),
        ("newer:x", "files", r"'x' is not a number"),
        ("size:", "files", r"missing value after 'size:'"),
        ("session:null", "files", r"'session' cannot be null"),
        ('a "abc', "files", r"column 3: unterminated quote"),
        ("a OR", "files", r"column 3: OR needs a term after it"),
        ("OR a", "files", r"column 1: OR needs a term before it"),
        ("a OR OR b", "files", r"column 6: OR needs a term before it"),
        ("(a", "files", r"column 1: unclosed parenthesis"),
        ("a b)", "files", r"column 4: unmatched closing parenthesis"),
        ("- a", "files", r"column 1: a lone '-'"),
        ("a -", "files", r"column 3: a lone '-'"),
        ("zen", "observations", r"bare words search file names, which observations do not have"),
        ("x", "nope", r"unknown search kind 'nope'"),
        ('{"name-matches": }', "files", r"invalid JSON at line 1, column 18"),
        (" OR ".join(["a"] * 300), "files", r"more than 256 clauses"),
    ],
)
def test_errors_name_the_token_and_column(text: str, kind: str, match: str) -> None:
    with pytest.raises(SearchError, match=match):
        parse_query_text(text, kind)


def test_error_details() -> None:
    with pytest.raises(SearchError) as info:
        parse_query_text("zen.* size:abc")
    assert info.value.details == {"column": 12, "token": "size:abc"}  # the value's column


@settings(max_examples=300, deadline=None, database=None)
@given(
    text=st.lists(
        st.sampled_from(list('ab.*?%_ :<>=-"\\()OR0123456789e') + ["OR", "size", "jd",
                        "obsid", "null", "..", "type", "newer", " OR "]),
        max_size=25,
    ).map("".join),
    kind=st.sampled_from(["files", "instances", "observations", "sessions"]),
)
def test_any_text_gives_a_valid_search_or_a_search_error(text: str, kind: str) -> None:
    try:
        search = parse_query_text(text, kind)
    except SearchError as exc:
        assert exc.message.startswith(("query text, column ", "search ", "invalid"))
        return
    validate_search(kind, search)


@pytest.fixture
def hand_database(database: Database) -> Database:
    with database.write() as session:
        load(session, HAND)
    return database


@pytest.mark.parametrize(
    ("kind", "text", "expected"),
    [
        ("files", "zen.*", {F1, F2, F3}),
        ("files", "zen.2457644.1000?.??.HH.uv*", {F1, F2}),
        ("files", "maintenance#1.pgdump", {F5}),
        ("files", '"back\\\\slash.uv"', {F7}),
        ("files", "*.uv -obsid:null", {F1, F3, F4}),
        ("files", "obsid:null", {F5, F6, F7}),
        ("files", "obsid:1000..2000 OR size>500", {F1, F2, F3, F7}),
        ("files", "type:uv size<300 OR type:uvc", {F1}),
        ("files", "jd:2457644.1..2457644.3", {F1, F2, F3}),
        ("files", "session:1 instances>0", {F1, F2}),
        ("files", "newer:2.5", {F1, F2}),
        ("files", "older:9.5 -source:admin", {F3, F4}),
        ("files", "-(*.uv OR *.uvc)", {F5, F6}),
        ("instances", "store:pot1 zen.*", {1, 3}),
        ("observations", "files:1", {2000, 3000}),
        ("sessions", "age<3396.25", {3}),
    ],
)
def test_translated_queries_run(hand_database: Database, kind, text, expected) -> None:
    key = {"files": "name", "instances": "id", "observations": "obsid", "sessions": "id"}[kind]
    with hand_database.read() as session:
        page = run_search(session, kind, parse_query_text(text, kind), now=NOW)
        assert {getattr(row, key) for row in page.rows} == expected


def test_now_is_not_needed_to_translate() -> None:
    # The translation is pure: relative times stay relative until the search runs.
    assert parse_query_text("newer:1") == {"not-older-than": 1}
    assert isinstance(NOW, dt.datetime)
