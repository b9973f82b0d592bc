"""Registration writes the same rows as it always has, value for value, as the database stores
them: a scenario of mixed batches (new files over two nights, a name twice in a batch, second
instances, a session widened, files without a store, conflicts refused, ``register_each``'s
one-by-one fallback, an idempotent repeat) is run on both databases and every row of the file,
instance, event, observation and session tables, read through the driver (SQLite's stored text,
PostgreSQL's ``row_to_json``), is compared with ``data/register_rows.json``, written by the code
before registration's writes were rewritten for speed (issue 19); its event rows written anew in
session 10, when a new file's ``file-registered`` and first ``instance-added`` became one row
(``catalogue/file_events``). So is what each call returned or raised, and every file's events
as readers are shown them (``Catalogue.file_detail``: the CLI, REST and the v1 RPC), against
``data/register_events_shown.json``, taken from the two-row events the code stored before.
Times the catalogue takes from the clock are compared by form, not value. The
scenario runs twice: with the batch sizes as configured, and with SQLite's multi-row INSERT
taking a table's rows in several statements and PostgreSQL's COPY taking every table's rows
(what ingest's batches take).

After a deliberate change of what registration stores, write the file anew with
``python -m tests.test_register_rows`` (from the repository's root) and say why in the commit.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from hera_stage_ext.catalogue import tables
from hera_stage_ext.catalogue.catalogue import Catalogue, FileSpec, Registration
from hera_stage_ext.catalogue.db import Database
from hera_stage_ext.errors import StagingError

GOLDEN = Path(__file__).parent / "data" / "register_rows.json"
SHOWN = Path(__file__).parent / "data" / "register_events_shown.json"
TABLES = {"session": "id", "observation": "obsid", "file": "id", "instance": "id", "event": "id"}
GIVEN_TIME = dt.datetime(2001, 2, 3, 4, 5, 6, 789000)
CLOCK = re.compile(r"^20[2-9]\d-\d\d-\d\d[ T]\d\d:\d\d:\d\d(\.\d+)?$")
NIGHT = "zen.{}.{:05d}.{}.HH.uvh5"


def md5(i: int) -> dict[str, str]:
    return {"md5": f"{i:032x}"}


def scenario(catalogue: Catalogue) -> list[Any]:
    """The calls, and per call what it returned or raised."""
    outcomes: list[Any] = []

    def call(method: str, *args: Any, **kwargs: Any) -> None:
        try:
            result = getattr(catalogue, method)(*args, **kwargs)
        except StagingError as exc:
            outcomes.append([type(exc).__name__, exc.message, exc.details])
            return
        outcomes.append([outcome_json(r) for r in result])

    night1 = [NIGHT.format(2457644, 10000 + 300 * (i // 2), ("xx", "yy")[i % 2])
              for i in range(8)]
    night2 = [NIGHT.format(2457645, 20000 + 300 * i, "xx") for i in range(3)]
    first = [FileSpec(n, 100 + i, md5(i), source="ingest") for i, n in enumerate(night1)]
    first += [
        FileSpec(night2[0], 7, {"md5": "AB" * 16, "xxh3-128": "xxh3-128:::" + "c" * 32},
                 source="up'lo\"ad\\", meta={"k": [1, "é", None], "n": {"x": 1.5}}),
        FileSpec(night2[0], 7, {"md5": "ab" * 16}),  # the same file at a second path
        FileSpec("plain.dat", 0, md5(9), create_time=GIVEN_TIME),
        FileSpec("tree", 4096, md5(10), is_directory=True, source="upload"),
        FileSpec("with-obsid.dat", 5, md5(11),
                 obsid=catalogue.namer.observation_of(night1[0]).obsid),  # type: ignore[union-attr]
    ]
    paths = [f"2457644/{n}" for n in night1] + [
        "2457645/a b/é.uvh5", "2457645/copy\\2.uvh5", "misc/plain.dat", "misc/tree",
        "misc/with-obsid.dat"]
    events: list[tuple[str, dict[str, Any]] | None] = [None] * len(first)
    events[2] = ("transfer-received", {"from": "peer", "attempts": 2, "é": "\n"})
    events[9] = ("transfer-received", {"from": "peer"})
    call("register", first, "a", paths, instance_events=events)
    # Second instances of known files, new files of both nights (the second widens its
    # session), the same file twice at one path.
    second = [FileSpec(n, 100 + i, md5(i)) for i, n in enumerate(night1[:3])]
    second += [FileSpec(NIGHT.format(2457645, 10000, "xx"), 1, md5(20)),
               FileSpec(NIGHT.format(2457645, 30000, "yy"), 2, md5(21)),
               FileSpec(NIGHT.format(2457644, 50000, "xx"), 3, md5(22)),
               FileSpec("plain.dat", 0, md5(9)), FileSpec("plain.dat", 0, md5(9))]
    call("register", second, "b", [f"b/{s.name}" for s in second[:-1]] + ["b/plain.dat"])
    call("register", [FileSpec("no-store.dat", 1, md5(30), source="s"),
                      FileSpec("plain.dat", 0, md5(9))])
    # Refused, changing nothing: other content, a path taken, an unknown obsid.
    call("register", [FileSpec("new.dat", 1, md5(31)), FileSpec("plain.dat", 1, md5(9))],
         "a", ["n", "x"])
    call("register", [FileSpec("new.dat", 1, md5(31))], "a", ["misc/tree"])
    call("register", [FileSpec("new.dat", 1, md5(31), obsid=42)])
    # One by one after a refusal: the good files are registered, each with its event.
    mixed = [FileSpec("each-1.dat", 1, md5(40)), FileSpec("tree", 1, md5(10)),
             FileSpec("each-2.dat", 2, md5(41)), FileSpec("each-3.dat", 3, md5(42)),
             FileSpec("each-4.dat", 4, md5(43), obsid=42), FileSpec(night1[5], 105, md5(5))]
    call("register_each", mixed, "b", ["e1", "e2", "e3", "misc/tree", "e4", "e5"],
         instance_events=[("e", {"i": i}) for i in range(len(mixed))])
    call("register_each", [FileSpec("each-5.dat", 5, md5(44))], "a", ["e5"])
    # The first batch again: nothing is written.
    call("register", first, "a", paths, instance_events=events)
    return outcomes


def outcome_json(outcome: Registration | StagingError) -> Any:
    if isinstance(outcome, StagingError):
        return [type(outcome).__name__, outcome.message, outcome.details]
    return [outcome.name, outcome.created, outcome.instance_added]


def stored_rows(db: Database, since: dt.datetime) -> dict[str, list[Any]]:
    """Every row of the registration's tables as the database stores it, times the clock gave
    (at or after ``since``) replaced by their form."""
    out: dict[str, list[Any]] = {}
    with db.engine.connect() as c:
        for table, key in TABLES.items():
            if db.backend == "postgresql":
                rows = [json.loads(text) for (text,) in c.exec_driver_sql(
                    f"SELECT row_to_json(t)::text FROM {table} t ORDER BY {key}")]
            else:
                result = c.exec_driver_sql(f"SELECT * FROM {table} ORDER BY {key}")
                columns = list(result.keys())
                rows = [dict(zip(columns, row)) for row in result]
            out[table] = [{column: clock_form(value, since, db.backend)
                           for column, value in row.items()} for row in rows]
    return out


def clock_form(value: Any, since: dt.datetime, backend: str) -> Any:
    """A time the catalogue took from the clock, as its form: ``<clock: 9999-99-99 ...>``
    (SQLite's stored text; PostgreSQL's without the fraction, whose trailing zeros it drops)."""
    if isinstance(value, str) and CLOCK.match(value):
        when = dt.datetime.fromisoformat(value)
        if when >= since.replace(microsecond=0):
            if backend == "postgresql":
                value = value.split(".")[0]
            return "<clock: " + re.sub(r"\d", "9", value) + ">"
    return value


def run(db_url: str) -> dict[str, Any]:
    db = Database(db_url)
    try:
        db.upgrade()
        catalogue = Catalogue(db)
        with tempfile.TemporaryDirectory() as root:
            catalogue.sync_stores({"a": {"path": f"{root}/a"}, "b": {"path": f"{root}/b"}})
            since = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
            outcomes = scenario(catalogue)
        rows = stored_rows(db, since)
        shown = {}
        for file in rows["file"]:
            events = catalogue.file_detail(file["name"])["events"]
            shown[file["name"]] = [[e["type"], e["payload"]] for e in events]
        return {"outcomes": outcomes, "rows": rows, "shown": shown}
    finally:
        db.dispose()


@pytest.mark.parametrize("batches", ["as configured", "in small pieces"])
def test_registration_writes_the_rows_it_always_has(db_url, batches, monkeypatch):
    if batches != "as configured":  # the scenario's batches are small: SQLite's multi-row
        # INSERT in several statements, as ingest's batches of 1,000 files' events take, and
        # PostgreSQL's COPY of every table's rows, as a batch of ingest's size takes
        monkeypatch.setattr(tables, "_SQLITE_ROWS_PER_INSERT", 3)
        monkeypatch.setattr(tables, "_PG_COPY_ROWS", 1)
    expected = json.loads(GOLDEN.read_text())[db_url.split(":", 1)[0].split("+")[0]]
    got = run(db_url)
    assert got["outcomes"] == expected["outcomes"]
    for table in TABLES:
        assert got["rows"][table] == expected["rows"][table], table


def test_every_file_shows_the_events_it_always_has(db_url):
    """One event row for a registration with its first copy: readers show the two events it
    stands for, in the same order, with the same payloads, as when they were two rows."""
    got = run(db_url)["shown"]
    assert got == json.loads(SHOWN.read_text())


def test_a_given_time_is_stored_as_the_databases_other_writes_store_it(db_url):
    """A file's given creation time with no fraction of a second, or a small one, is stored in
    the form every other write of a time takes (SQLite: SQLAlchemy's text, six digits of
    microseconds always), so that comparisons of the stored text (a search by time) hold."""
    db = Database(db_url)
    try:
        db.upgrade()
        catalogue = Catalogue(db)
        whens = [dt.datetime(2001, 2, 3, 4, 5, 6), dt.datetime(2001, 2, 3, 4, 5, 6, 7)]
        catalogue.register([FileSpec(f"given{i}.dat", 1, md5(i), create_time=when)
                            for i, when in enumerate(whens)])
        with db.engine.connect() as c:
            stored = [row[0] for row in c.exec_driver_sql(
                "SELECT create_time FROM file ORDER BY id")]
        if db.backend == "sqlite":
            assert stored == ["2001-02-03 04:05:06.000000", "2001-02-03 04:05:06.000007"]
        else:
            assert stored == whens
    finally:
        db.dispose()


def write_golden() -> None:
    from .pgcluster import PostgresCluster

    cluster = PostgresCluster().start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            golden = {"sqlite": run(f"sqlite:///{tmp}/catalogue.sqlite"),
                      "postgresql": run(cluster.create_database())}
    finally:
        cluster.stop()
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(golden_text(golden))
    print(f"wrote {GOLDEN}", file=sys.stderr)


def golden_text(golden: dict[str, Any]) -> str:
    """JSON with one outcome or row a line: a change shows as the lines that differ."""
    def lines(items: list[Any], indent: str) -> str:
        return ",\n".join(indent + json.dumps(item, ensure_ascii=False) for item in items)

    parts = []
    for backend, data in golden.items():
        tables = ",\n".join(f'   "{table}": [\n{lines(rows, "    ")}\n   ]'
                            for table, rows in data["rows"].items())
        parts.append(f' "{backend}": {{\n  "outcomes": [\n{lines(data["outcomes"], "   ")}\n'
                     f'  ],\n  "rows": {{\n{tables}\n  }}\n }}')
    return "{\n" + ",\n".join(parts) + "\n}\n"


if __name__ == "__main__":
    write_golden()
