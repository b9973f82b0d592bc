"""The REST search reply written as text straight from the rows (``Catalogue.search_text``) is
``json.dumps`` of the dicts ``Catalogue.search`` builds, byte for byte, for any values a row can
hold: names and metadata outside ASCII, control characters, nested metadata with floats and
nulls, a directory, a file without an obsid, copies checked, unavailable or on an unavailable
store, paths outside their store's root or with characters JSON escapes; every page of a paged search, a count, an empty page; on SQLite and PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from sqlalchemy import update

from hera_stage_ext.catalogue.catalogue import Catalogue, FileSpec
from hera_stage_ext.catalogue.db import Database
from hera_stage_ext.catalogue.models import File, Instance, Store

ODD_META: list[dict[str, Any]] = [
    {},
    {"lst": 1.5e-7, "big": 1e300, "neg": -0.0, "n": None, "list": [1, 2.25, "x", True, None]},
    {"naïve": "Ünïcödé \u2603 \U0001f600", "ctl": "tab\there\nline\x01\"quote\"\\"},
    {"nested": {"a": {"b": [{"c": []}]}}, "": ""},
]


@pytest.fixture
def catalogue(db_url: str, tmp_path) -> Any:
    db = Database(db_url)
    db.upgrade()
    catalogue = Catalogue(db, search_timeout_s=30)
    for store in ("a", "b"):
        (tmp_path / store).mkdir()
    catalogue.sync_stores({"a": {"path": str(tmp_path / "a")},
                           "b": {"path": str(tmp_path / "b") + "/"}})
    specs = [
        FileSpec(name=f"zen.2457644.{10000 + i:05d}.xx.HH.uvh5", size=i * 1_000_003,
                 checksums={"md5": f"{i:032x}"},
                 is_directory=i == 2, source="telescope ü" if i % 2 else "",
                 meta=ODD_META[i % len(ODD_META)],
                 create_time=dt.datetime(2026, 1, 2, 3, 4, 5, 6 if i % 2 else 0))
        for i in range(7)
    ]
    names = [s.name for s in specs]
    catalogue.register(specs, "a", [f"dir ü/{n}" for n in names])
    catalogue.register(specs[:4], "b", names[:4])
    with db.write() as s:  # what registering refuses, a row may still hold
        s.execute(update(File).where(File.id == 3).values(checksums={"md5": "é\u2028", "x": 1}))
        s.execute(update(Instance).where(Instance.id == 1).values(
            fixity="ok", verified_at=dt.datetime(2026, 2, 3, 4, 5, 6, 789)))
        s.execute(update(Instance).where(Instance.id == 2).values(available=False))
        # A path outside its store's root, and one with what JSON escapes (written joined to
        # the root's text).
        s.execute(update(Instance).where(Instance.id == 3).values(path="/elsewhere/\U0001f600"))
        s.execute(update(Instance).where(Instance.id == 4).values(path="q\"\\\x01\u2028é"))
        s.execute(update(Store).where(Store.name == "b").values(available=False))
    yield catalogue
    db.dispose()


@pytest.mark.parametrize("search, sort, pages", [
    ({"name-matches": "zen.%"}, None, 3),
    ({"name-matches": "zen.%"}, "-obsid", 3),
    ({"num-instances-greater-than": 1}, "-size", 2),
    ({"name-matches": "nothing.%"}, None, 1),
])
def test_text_reply_is_json_dumps_of_the_dicts(catalogue: Any, search: Any, sort: Any,
                                               pages: int) -> None:
    unlimited = Catalogue(catalogue.db)  # no time limit: a plain connection of its own
    cursor = None
    seen = 0
    while True:
        asked = {"limit": 3, "cursor": cursor, "count": True, "sort": sort}
        expected = json.dumps({**catalogue.search("files", search, **asked), "search": search})
        assert catalogue.search_text("files", search, **asked) == expected
        # Without a count the page comes from its shape's kept statement on the driver's cursor.
        page = {**asked, "count": False}
        expected_page = json.dumps({**catalogue.search("files", search, **page), "search": search})
        assert catalogue.search_text("files", search, **page) == expected_page
        assert unlimited.search_text("files", search, **page) == expected_page
        seen += 1
        cursor = json.loads(expected)["next_cursor"]
        if cursor is None:
            break
    assert seen == pages


def test_other_kinds_reply_as_json_dumps(catalogue: Any) -> None:
    search = {"store-name-is-exactly": "b"}
    expected = json.dumps({**catalogue.search("instances", search, limit=2), "search": search})
    assert catalogue.search_text("instances", search, limit=2) == expected


@pytest.mark.parametrize("stored", [
    "2026-01-02 03:04:05.678901", "2026-01-02 03:04:05.000000", "0999-12-31 23:59:59.000001",
    "2026-01-02 03:04:05", "2026-01-02", "2026-01-02 03:04:05.5",
])
def test_a_time_stored_by_sqlite_is_written_as_its_datetime_would_be(stored: str) -> None:
    """The reply writes SQLAlchemy's SQLite form of a time without parsing it: the same text as
    the parsed datetime's, and any other form still goes through SQLAlchemy's parsing."""
    from sqlalchemy import DateTime
    from sqlalchemy.dialects import sqlite

    from hera_stage_ext.catalogue.search_reply import PageWriter

    dialect = sqlite.dialect()
    processor = DateTime().dialect_impl(dialect).result_processor(dialect, None)
    writer = PageWriter(processor)
    expected = json.dumps(processor(stored).isoformat() + "Z")
    assert writer.time(stored) == expected
    assert writer.time(stored) == expected  # as the page's earlier copy of it wrote it


def test_a_datetime_given_where_times_are_text_is_written_as_it_is() -> None:
    """A writer for SQLite's text times still writes a datetime a driver gave (a column whose
    processor is not the writer's): not parsed as text again (a TypeError: a 500)."""
    from sqlalchemy import DateTime
    from sqlalchemy.dialects import sqlite

    from hera_stage_ext.catalogue.search_reply import PageWriter

    dialect = sqlite.dialect()
    writer = PageWriter(DateTime().dialect_impl(dialect).result_processor(dialect, None))
    moment = dt.datetime(2026, 1, 2, 3, 4, 5, 678901)
    assert writer.time(moment) == json.dumps(moment.isoformat() + "Z")


@pytest.mark.parametrize("stored", [
    "{}", '{"md5": "0123", "xxh3-128": "abcd"}', '{"a": [1, 2.5, -0.0, 1e300, null, true]}',
    '{"\\u00e9": "\\ud83d\\ude00", "q": "\\"\\\\"}', ' {}', '{} ', '\t{"a": 1}\n', "[1, 2]", "5",
    '"text"', "null", "NaN", '{"a": 1}{"b": 2}', '{"a": ', "", '{"a": 1, "a": 2}',
])
@pytest.mark.parametrize("as_bytes", [False, True])
def test_a_json_column_is_decoded_as_json_loads_would(stored: str, as_bytes: bool) -> None:
    from hera_stage_ext.catalogue.db import loads_json_column

    encodings = ["utf-8", "utf-8-sig", "utf-16-le", "utf-16"] if as_bytes else [None]
    for encoding in encodings:
        value: Any = stored.encode(encoding) if encoding else stored
        try:
            expected = ("value", json.loads(value))
        except ValueError as exc:
            expected = ("error", type(exc), str(exc))
        try:
            got = ("value", loads_json_column(value))
        except ValueError as exc:
            got = ("error", type(exc), str(exc))
        assert repr(got) == repr(expected), (stored, encoding)


@pytest.mark.parametrize("damaged", [
    '{"md5": "11"}, {"md5": "99"}', '{"md5": "11"', '"a"]', "[1", "", "1, 2"])
def test_a_batch_of_json_texts_is_decoded_each_as_its_own(damaged: str) -> None:
    """A batch's JSON column texts decoded at once (claims, launches, offers) give each row
    its own value, or json's error of the row whose text is not one value: a damaged row never
    hands its neighbours another's checksums."""
    from hera_stage_ext.catalogue.db import loads_json_texts

    good = ['{"md5": "aa"}', '{"md5": "bb"}']
    assert loads_json_texts([good[0], None, good[1]]) == [{"md5": "aa"}, None, {"md5": "bb"}]
    assert loads_json_texts([None, ""], "{}") == [{}, {}]
    texts = [good[0], damaged, good[1], "[2]"]
    try:
        expected: Any = ("value", [json.loads(text or "null") for text in texts])
    except ValueError as exc:
        expected = ("error", str(exc))
    try:
        got: Any = ("value", loads_json_texts(texts))
    except ValueError as exc:
        got = ("error", str(exc))
    assert got == expected


@pytest.mark.parametrize("text", [
    # As PostgreSQL writes a JSONB value: a checksums object, empty, and what may not be
    # written as it is (escapes, characters outside printable ASCII, numbers, nesting, arrays,
    # spacing that is not JSONB's).
    '{"md5": "0123abcd", "xxh3-128": "ef"}', "{}", '{"": ""}', '{"a": "b c ~ !#[]"}',
    '{"q": "\\"x\\""}', '{"b": "\\\\"}', '{"t": "\\t"}', '{"c": "\\u0001"}', '{"e": "é"}',
    '{"d": "\x7f"}', '{"n": 1}', '{"f": 1.50}', '{"g": 0.00000015}', '{"h": null}',
    '{"i": ["a"]}', '{"j": {"k": "l"}}', '{"a":"b"}', '{"a": "b","c": "d"}', '[["a", "b"]]',
    '{"a": "1", "a": "2"}', '{"a": "1", "b": "2", "a": "3"}', '"text"', "null",
])
@pytest.mark.parametrize("as_dict", [False, True])
def test_a_json_column_given_as_its_text_is_written_as_its_value_would_be(
        text: str, as_dict: bool) -> None:
    """PostgreSQL's text of a JSONB column (a REST search page read with its instances) is
    written as ``json.dumps`` of the value the column decodes to (of ``dict`` of it for the
    checksums)."""
    from hera_stage_ext.catalogue.search_reply import _json_column_text

    value = json.loads(text)
    try:
        expected = json.dumps(dict(value) if as_dict else value)
    except (TypeError, ValueError) as exc:  # not an object: dict() of it fails the same way
        with pytest.raises(type(exc)):
            _json_column_text(text, as_dict)
        return
    assert _json_column_text(text, as_dict) == expected


def test_a_page_with_files_without_copies_is_written_as_the_dicts(catalogue: Any) -> None:
    """Files whose copies are all gone (and a page's one-past-the-limit file's copies, read
    with the page on PostgreSQL), and JSON columns whose text names a key twice (SQLite keeps
    the text as written) are written as ``Catalogue.search`` has them."""
    with catalogue.db.write() as s:
        s.execute(Instance.__table__.delete().where(Instance.file_id.in_([2, 4])))
        s.connection().exec_driver_sql(
            """UPDATE file SET checksums = '{"md5": "1", "md5": "2"}', """
            """metadata = '{"a": "b", "c": "d", "a": "e"}' WHERE id = 5""")
    search: Any = {"name-matches": "zen.%"}
    cursor = None
    for _ in range(4):
        asked = {"limit": 2, "cursor": cursor}
        got = catalogue.search_text("files", search, **asked)
        assert got == json.dumps({**catalogue.search("files", search, **asked), "search": search})
        cursor = json.loads(got)["next_cursor"]
    assert cursor is None
    assert [len(f["instances"]) for f in catalogue.search("files", search, limit=7)["results"]] \
        == [2, 0, 2, 0, 1, 1, 1]
