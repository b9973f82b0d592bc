"""Registration's semantics through the bulk writes (``catalogue/tables.py``), on both databases:
what a batch writes (files, instances, observations, sessions, events) read back through the
ORM as every other reader does, names repeated within a batch, conflicts that change nothing,
an idempotent second run, events given with instances, and ``register_each``'s one-by-one
fallback."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import func, select

from hera_stage_ext.catalogue.catalogue import Catalogue, FileSpec
from hera_stage_ext.catalogue.db import Database
from hera_stage_ext.catalogue.models import Event, File, Instance, Observation, Session
from hera_stage_ext.catalogue.naming import ObservationNamer
from hera_stage_ext.errors import Conflict, InvalidRequest, NotFound

NIGHT = "zen.2457644.{:05d}.{}.HH.uvh5"


def spec(name: str, size: int = 10, md5: str = "a" * 32, **kw) -> FileSpec:
    return FileSpec(name=name, size=size, checksums={"md5": md5}, **kw)


@pytest.fixture
def catalogue(database, tmp_path) -> Catalogue:
    catalogue = Catalogue(database)
    for store in ("a", "b"):
        (tmp_path / store).mkdir()
    catalogue.sync_stores({"a": {"path": str(tmp_path / "a")},
                           "b": {"path": str(tmp_path / "b")}})
    return catalogue


def table_counts(catalogue: Catalogue) -> dict[str, int]:
    with catalogue.db.read() as s:
        return {t.__tablename__: s.scalar(select(func.count()).select_from(t)) or 0
                for t in (File, Instance, Event, Observation, Session)}


def test_a_batch_writes_every_row_as_the_orm_reads_it(catalogue):
    names = [NIGHT.format(10000 + 100 * (i // 2), ("xx", "yy")[i % 2]) for i in range(6)]
    before = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    result = catalogue.register(
        [spec(n, size=i, md5=f"{i:032x}", source="ingest", meta={"k": [i, "é"]})
         for i, n in enumerate(names)] + [spec("plain.dat", source="up'load\"")],
        "a", [f"2457644/{n}" for n in names] + ["x/plain.dat"])
    assert [(r.name, r.created, r.instance_added) for r in result] == [
        (n, True, True) for n in [*names, "plain.dat"]]
    detail = catalogue.file_detail(names[3])
    assert detail["size"] == 3 and detail["checksums"] == {"md5": f"{3:032x}"}
    assert detail["type"] == "uvh5" and detail["source"] == "ingest"
    assert detail["metadata"] == {"k": [3, "é"]}
    assert [(e["type"], e["payload"]) for e in detail["events"]] == [
        ("file-registered", {"source": "ingest"}),
        ("instance-added", {"store": "a", "path": f"2457644/{names[3]}"})]
    [instance] = detail["instances"]
    assert (instance["store"], instance["path"], instance["available"]) == (
        "a", f"2457644/{names[3]}", True)
    with catalogue.db.read() as s:
        file = s.scalar(select(File).where(File.name == names[3]))
        assert before <= file.create_time <= dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        row = s.scalar(select(Instance).where(Instance.file_id == file.id))
        assert (row.deletion_policy, row.fixity, row.fixity_detail, row.verified_at) == (
            "disallowed", "unchecked", "", None)
        assert all(isinstance(e.time, dt.datetime) for e in s.scalars(select(Event)))
        # Three observations of two files each, all in the night's session.
        info = ObservationNamer().observation_of(names[0])
        assert s.scalar(select(func.count()).select_from(Observation)) == 3
        assert file.obsid == ObservationNamer().observation_of(names[3]).obsid
        session = s.get(Session, info.session_id)
        assert session.start_time_jd == info.start_time_jd
        assert session.stop_time_jd == ObservationNamer().observation_of(
            names[-1]).stop_time_jd
    plain = catalogue.file_detail("plain.dat")
    assert plain["events"][0]["payload"] == {"source": "up'load\""}
    assert plain["obsid"] is None


def test_a_later_observation_widens_its_session(catalogue):
    catalogue.register([spec(NIGHT.format(20000, "xx"))])
    late = NIGHT.format(30000, "xx")
    catalogue.register([spec(late)])
    info = ObservationNamer().observation_of(late)
    with catalogue.db.read() as s:
        session = s.get(Session, info.session_id)
        assert (session.start_time_jd, session.stop_time_jd) == (
            ObservationNamer().observation_of(NIGHT.format(20000, "xx")).start_time_jd,
            info.stop_time_jd)
    assert table_counts(catalogue)["session"] == 1


def test_a_name_twice_in_one_batch(catalogue):
    name = NIGHT.format(10000, "xx")
    result = catalogue.register([spec(name), spec(name)], "a", ["d/1", "d/2"])
    assert [(r.created, r.instance_added) for r in result] == [(True, True), (False, True)]
    assert sorted(i["path"] for i in catalogue.file_detail(name)["instances"]) == ["d/1", "d/2"]
    # The same file twice at one path is one instance.
    again = catalogue.register([spec("f"), spec("f")], "a", ["e/f", "e/f"])
    assert [(r.created, r.instance_added) for r in again] == [(True, True), (False, False)]
    before = table_counts(catalogue)
    with pytest.raises(Conflict, match="other content"):
        catalogue.register([spec("g"), spec("g", md5="b" * 32)], "a", ["g1", "g2"])
    with pytest.raises(Conflict, match="already holds another file"):
        catalogue.register([spec("h"), spec("i")], "a", ["same", "same"])
    assert table_counts(catalogue) == before


def test_register_again_changes_nothing(catalogue):
    specs = [spec(NIGHT.format(10000 + 100 * i, "xx"), md5=f"{i:032x}") for i in range(50)]
    paths = [f"p/{s.name}" for s in specs]
    catalogue.register(specs, "a", paths)
    before = table_counts(catalogue)
    # One event row a file for its registration with its copy (shown as two: file_events).
    assert before == {"file": 50, "instance": 50, "event": 50, "observation": 50, "session": 1}
    again = catalogue.register(specs, "a", paths)
    assert not any(r.created or r.instance_added for r in again)
    assert table_counts(catalogue) == before
    second = catalogue.register(specs, "b", paths)
    assert all(r.instance_added and not r.created for r in second)
    assert table_counts(catalogue) == {**before, "instance": 100, "event": 100}


def test_conflicts_change_nothing(catalogue):
    catalogue.register([spec("known")], "a", ["k"])
    before = table_counts(catalogue)
    with pytest.raises(Conflict, match="other content"):
        catalogue.register([spec("new-1"), spec("known", size=11)], "a", ["n1", "k"])
    with pytest.raises(Conflict, match="already holds another file"):
        catalogue.register([spec("new-2")], "a", ["k"])
    with pytest.raises(InvalidRequest, match="unknown obsid 42"):
        catalogue.register([spec("new-3"), spec("obs", obsid=42)])
    with pytest.raises(NotFound, match="no store"):
        catalogue.register([spec("new-4")], "nowhere", ["x"])
    assert table_counts(catalogue) == before


def test_instance_events_are_written_with_the_instances_they_come_with(catalogue):
    catalogue.register([spec("old")], "a", ["o"])
    got = ("transfer-received", {"from": "peer", "attempts": 1})
    catalogue.register([spec("old"), spec("new")], "a", ["o", "n"],
                       instance_events=[got, got])
    assert [e["type"] for e in catalogue.file_detail("old")["events"]] == [
        "file-registered", "instance-added"]
    assert [(e["type"], e["payload"]) for e in catalogue.file_detail("new")["events"]] == [
        ("file-registered", {"source": ""}), ("instance-added", {"store": "a", "path": "n"}),
        got]


def test_register_each_keeps_the_good_files_of_a_bad_batch(catalogue):
    catalogue.register([spec("known")], "a", ["k"])
    outcomes = catalogue.register_each(
        [spec("good-1"), spec("known", size=11), spec("good-2"), spec("taken"),
         spec("obs", obsid=42)],
        "a", ["g1", "k2", "g2", "k", "o"],
        instance_events=[("e", {"i": i}) for i in range(5)])
    assert [type(o).__name__ for o in outcomes] == [
        "Registration", "Conflict", "Registration", "Conflict", "InvalidRequest"]
    assert outcomes[0].created and outcomes[2].instance_added
    assert [e["type"] for e in catalogue.file_detail("good-2")["events"]] == [
        "file-registered", "instance-added", "e"]
    with pytest.raises(NotFound):
        catalogue.file_detail("taken")
    # A batch with nothing wrong is one transaction, as register.
    assert [o.created for o in catalogue.register_each([spec("c"), spec("d")])] == [True, True]


def test_also_write_commits_with_the_registration_or_not_at_all(catalogue):
    """``also_write`` (a receiver's item rows) runs in each transaction that registers, with
    the indices it registered (one by one after a refusal: the good files' own), and what
    fails in it leaves nothing of the registration."""
    seen: list[list[int]] = []
    outcomes = catalogue.register_each(
        [spec("w-1"), spec("w-2", size=11), spec("w-2"), spec("w-3")], "a",
        ["w1", "w2", "w2b", "w3"], also_write=lambda s, done: seen.append(list(done)))
    assert [type(o).__name__ for o in outcomes] == [
        "Registration", "Registration", "Conflict", "Registration"]
    assert seen == [[0], [1], [3]]
    before = table_counts(catalogue)

    def fail(s, done):
        raise RuntimeError("the item rows could not be written")

    with pytest.raises(RuntimeError):
        catalogue.register_each([spec("w-4"), spec("w-5")], "a", ["w4", "w5"],
                                instance_events=[("e", {}), ("e", {})], also_write=fail)
    assert table_counts(catalogue) == before
    with pytest.raises(NotFound):
        catalogue.file_detail("w-4")


def test_events_in_bulk_by_name_or_id(catalogue):
    catalogue.register([spec("one"), spec("two")], "a", ["1", "2"])
    with catalogue.db.read() as s:
        two = s.scalar(select(File.id).where(File.name == "two"))
    catalogue.add_events([("one", "note", {"n": 1}), (two, "note", {"n": 2}),
                          ("one", "note", {"n": 3})])
    assert [e["payload"] for e in catalogue.file_detail("one")["events"][2:]] == [
        {"n": 1}, {"n": 3}]
    assert catalogue.file_detail("two")["events"][2]["payload"] == {"n": 2}
    before = table_counts(catalogue)
    with pytest.raises(NotFound, match="nobody"):
        catalogue.add_events([("one", "note", {}), ("nobody", "note", {})])
    assert table_counts(catalogue) == before


def test_ingest_confines_every_path_while_resolving_each_folder_once(catalogue, tmp_path):
    """Ingest resolves a folder once for all its files: a file that is a symlink out of the
    store, a folder that is one, and a '..' path sent to ingest_paths are still refused."""
    from hera_stage_ext.catalogue.ingest import Ingester

    store = tmp_path / "a"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.dat").write_bytes(b"secret")
    (store / "night").mkdir()
    for i in range(3):
        (store / "night" / f"f{i}.dat").write_bytes(bytes([i]) * 10)
    (store / "night" / "leak.dat").symlink_to(outside / "secret.dat")
    (store / "away").symlink_to(outside, target_is_directory=True)
    ingester = Ingester(catalogue)
    plan = ingester.plan("a", ["*/*"])
    assert sorted(plan.todo) == ["night/f0.dat", "night/f1.dat", "night/f2.dat"]
    assert sorted(e["path"] for e in plan.errors) == ["away/secret.dat", "night/leak.dat"]
    report = ingester.ingest_paths(
        "a", [*plan.todo, "night/leak.dat", "night/../../outside/secret.dat"])
    assert report.registered == 3
    assert len(report.errors) == 2
    assert catalogue.counts()["files"] == 3


def test_instance_state_changes_in_bulk(catalogue):
    catalogue.register([spec("one"), spec("two")], "a", ["1", "2"])
    with catalogue.db.read() as s:
        ids = dict(s.execute(select(Instance.path, Instance.id)).all())
    when = dt.datetime(2026, 1, 2, 3, 4, 5, 6)
    catalogue.update_instances([
        (ids["1"], {"fixity": "bad", "available": False, "verified_at": when,
                    "fixity_detail": "x"}),
        (ids["2"], {"deletion_policy": "allowed"}),
        (ids["2"] + 100, {"deletion_policy": "allowed"}),  # gone meanwhile: nothing happens
    ])
    with catalogue.db.read() as s:
        one, two = (s.get(Instance, ids[p]) for p in ("1", "2"))
        assert (one.fixity, one.available, one.verified_at, one.fixity_detail,
                one.deletion_policy) == ("bad", False, when, "x", "disallowed")
        assert (two.fixity, two.available, two.deletion_policy) == ("unchecked", True, "allowed")
    with pytest.raises(ValueError, match="path"):
        catalogue.update_instances([(ids["1"], {"path": "elsewhere"})])


def test_a_registration_with_its_copy_is_found_by_either_event_type(catalogue):
    """Stored as one row (``file_events``), a new file's ``file-registered`` and first
    ``instance-added`` are still two events to every reader: the file's detail, the search
    ``no-file-has-event`` and the v1 RPC's ``describe_session_without_event``."""
    from hera_stage_ext.catalogue.sessions import describe_session_without_event

    name = NIGHT.format(10000, "xx")
    catalogue.register([spec(name, source="rtp")], "a", ["d/1"])
    catalogue.register([spec(name, source="rtp")], "b", ["d/1"])
    assert [(e["type"], e["payload"]) for e in catalogue.file_detail(name)["events"]] == [
        ("file-registered", {"source": "rtp"}),
        ("instance-added", {"store": "a", "path": "d/1"}),
        ("instance-added", {"store": "b", "path": "d/1"})]
    session_id = catalogue.search("sessions", {})["results"][0]["id"]
    for type_, without in (("file-registered", []), ("instance-added", []),
                           ("staged", [session_id])):
        found = catalogue.search("sessions", {"no-file-has-event": type_})["results"]
        assert [r["id"] for r in found] == without, type_
        reply = describe_session_without_event(catalogue.db, "rtp", type_)
        assert reply["any_matching"] == bool(without), type_
    # The stored type is the catalogue's own: no caller records it.
    with pytest.raises(InvalidRequest, match="reserved"):
        catalogue.add_event(name, "file-registered+instance-added", {})


def test_an_instance_or_event_of_no_file_or_store_is_refused(catalogue):
    """Instances and events have no foreign keys (migration 0013): the catalogue refuses an id
    that is not a file or a store itself, with NotFound, and writes nothing of the call."""
    catalogue.register([spec("one")], "a", ["1"])
    with catalogue.db.read() as s:
        one = s.scalar(select(File.id).where(File.name == "one"))
        store_a = s.scalar(select(Instance.store_id))
    before = table_counts(catalogue)
    with pytest.raises(NotFound, match=f"no file with id {one + 1000}"):
        catalogue.add_events([(one, "note", {}), (one + 1000, "note", {})])
    with pytest.raises(NotFound, match=f"no file with id {one + 1000}"):
        catalogue.add_instance(one + 1000, store_a, "x", event=("copied", {}))
    with pytest.raises(NotFound, match=f"no store with id {store_a + 1000}"):
        catalogue.add_instance(one, store_a + 1000, "x", event=("copied", {}))
    assert table_counts(catalogue) == before
    catalogue.add_instance(one, store_a, "copy", event=("copied", {}))
    assert [i["path"] for i in catalogue.file_detail("one")["instances"]] == ["1", "copy"]


@pytest.mark.parametrize("table", ["file", "store"])
def test_file_and_store_rows_are_never_deleted(catalogue, table):
    """What the instances' and events' ids point to stays: the database refuses deleting a file
    or a store row (migration 0013's triggers), even a store no instance is on."""
    from sqlalchemy.exc import DBAPIError

    catalogue.register([spec("one")], "a", ["1"])
    catalogue.register([spec("alone")])
    where = {"file": "name = 'alone'", "store": "name = 'b'"}[table]
    with pytest.raises(DBAPIError, match=f"rows of the {table} table are never deleted"):
        with catalogue.db.write() as s:
            s.connection().exec_driver_sql(f"DELETE FROM {table} WHERE {where}")
    assert catalogue.counts()["files"] == 2 and catalogue.counts()["stores"] == 2


@pytest.mark.parametrize("call", ["register", "register_each"])
def test_a_batch_refused_by_the_database_leaves_nothing_of_itself(catalogue, call):
    """Without foreign keys a batch is still one transaction: when another writer takes one of
    its store paths between its checks and its writes (the unique (store, path) index refuses
    the instance), ``register`` raises Conflict and none of the batch's files, instances or
    events remain; ``register_each`` then goes file by file: the others are registered, the
    one whose path was taken is its Conflict."""
    import threading

    from sqlalchemy import text

    catalogue.register([spec("first")], "a", ["f"])
    before = table_counts(catalogue)
    with catalogue.db.read() as s:
        first, store_a = s.execute(select(Instance.file_id, Instance.store_id)).one()
    other = catalogue.db.engine.connect()
    if catalogue.db.backend == "sqlite":
        other = other.execution_options(sqlite_begin="IMMEDIATE")
    outcome: list[object] = []
    with other:
        other.begin()
        # Another writer's copy of "first" at the path the batch below wants, not committed yet.
        other.execute(text(
            "INSERT INTO instance (file_id, store_id, path, available, deletion_policy, "
            "create_time, fixity, fixity_detail) VALUES (:f, :s, 'taken', true, 'disallowed', "
            "'2026-01-01 00:00:00', 'unchecked', '')"), {"f": first, "s": store_a})

        def register() -> None:
            try:
                outcome.append(getattr(catalogue, call)(
                    [spec("new-1"), spec("new-2"), spec("new-3")], "a", ["n1", "taken", "n3"]))
            except Conflict as exc:
                outcome.append(exc)

        thread = threading.Thread(target=register)
        thread.start()
        thread.join(0.5)  # it waits: on the (store, path) index (PostgreSQL), the lock (SQLite)
        assert thread.is_alive() and outcome == []
        other.commit()
    thread.join(10)
    assert len(outcome) == 1
    if call == "register":
        # SQLite: checked after the other's commit; PostgreSQL: refused by the index meanwhile.
        assert isinstance(outcome[0], Conflict), outcome
        assert table_counts(catalogue) == {**before, "instance": before["instance"] + 1}
        for name in ("new-1", "new-2", "new-3"):
            with pytest.raises(NotFound):
                catalogue.file_detail(name)
        return
    results = outcome[0]
    assert [type(r).__name__ for r in results] == ["Registration", "Conflict", "Registration"]
    assert "already holds another file" in str(results[1])
    for name, path in (("new-1", "n1"), ("new-3", "n3")):
        detail = catalogue.file_detail(name)
        assert [i["path"] for i in detail["instances"]] == [path]
        assert [e["type"] for e in detail["events"]] == ["file-registered", "instance-added"]
    with pytest.raises(NotFound):
        catalogue.file_detail("new-2")


def test_a_write_is_refused_on_a_connection_already_in_a_transaction(tmp_path):
    """SQLite: a write holds the write lock from its first statement (``BEGIN IMMEDIATE``: its
    reads decide what it writes). A read's snapshot is begun on the driver's connection
    (``Database.connect_limited``) and the begin hook leaves it be; a write finding such a
    transaction is refused rather than run without the lock, and the connection is usable
    again afterwards."""
    from hera_stage_ext.catalogue.db import Database

    db = Database(f"sqlite:///{tmp_path / 'cat.sqlite'}")
    db.upgrade()
    with db.engine.connect() as connection:
        connection.connection.dbapi_connection.execute("BEGIN DEFERRED")
        with pytest.raises(RuntimeError, match="already in a transaction"):
            connection.execution_options(sqlite_begin="IMMEDIATE").begin()
    with db.write() as s:  # the pool rolled the snapshot back: writes go on
        assert s.connection().connection.dbapi_connection.in_transaction


def all_rows(catalogue: Catalogue) -> dict[str, list[tuple]]:
    """Every row of the registration tables but their clock times, ordered by id."""
    with catalogue.db.read() as s:
        return {
            "file": [(f.id, f.name, f.size, f.obsid)
                     for f in s.scalars(select(File).order_by(File.id))],
            "instance": [(i.id, i.file_id, i.store_id, i.path)
                         for i in s.scalars(select(Instance).order_by(Instance.id))],
            "event": [(e.id, e.file_id, e.type, e.payload)
                      for e in s.scalars(select(Event).order_by(Event.id))],
            "observation": [(o.obsid, o.start_time_jd, o.session_id)
                            for o in s.scalars(select(Observation).order_by(Observation.obsid))],
            "session": [(x.id, x.start_time_jd, x.stop_time_jd)
                        for x in s.scalars(select(Session).order_by(Session.id))],
        }


def batches_of_one_night() -> list[tuple[list[FileSpec], list[str]]]:
    """Four batches: two of one night, one of another night with the first batch's files again
    on another path (known files: it is checked after the first), one with a file of other
    content (``register_each``'s one-by-one fallback)."""
    def batch(numbers, night=2457644, size=10):
        names = [f"zen.{night}.{n:05d}.xx.HH.uvh5" for n in numbers]
        return [spec(n, size=size) for n in names], [f"{night}/{n}" for n in names]

    first, second = batch(range(30000, 30400, 100)), batch(range(20000, 20400, 100))
    return [first, second, (first[0], [f"again/{p}" for p in first[1]]),
            (batch([40000], size=10)[0] + batch([30000], size=99)[0] + batch([40100])[0],
             ["b/1", "b/2", "b/3"])]


def test_batches_registered_in_turn_write_what_one_after_another_writes(
        database, tmp_path_factory):
    """``register_batches`` (ingest's way: a batch checked while the one before is written)
    leaves every row, id and outcome as ``register_each`` called batch after batch does."""
    def fresh(db_url: str) -> Catalogue:
        roots = tmp_path_factory.mktemp("stores")
        catalogue = Catalogue(Database(db_url) if db_url else database)
        if db_url:
            catalogue.db.upgrade()
        catalogue.sync_stores({"a": {"path": str(roots)}})
        return catalogue

    one_by_one = fresh("")
    expected = [one_by_one.register_each(specs, "a", paths)
                for specs, paths in batches_of_one_night()]
    url = str(database.engine.url.render_as_string(hide_password=False))
    other = (url.rsplit("/", 1)[0] + "/in-turn.sqlite" if database.backend == "sqlite"
             else _another_database(database))
    in_turn = fresh(other)
    try:
        got = list(in_turn.register_batches(batches_of_one_night(), "a"))
        assert [[repr(o) if isinstance(o, Exception) else o for o in batch] for batch in got] \
            == [[repr(o) if isinstance(o, Exception) else o for o in batch] for batch in expected]
        assert type(got[3][1]).__name__ == "Conflict" and got[2][0].instance_added
        assert all_rows(in_turn) == all_rows(one_by_one)
    finally:
        in_turn.db.dispose()


def _another_database(database) -> str:
    """A new empty database on the PostgreSQL server of ``database``."""
    import uuid

    name = f"t_{uuid.uuid4().hex[:12]}"
    with database.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        c.exec_driver_sql(f'CREATE DATABASE "{name}"')
    return database.engine.url.set(database=name).render_as_string(hide_password=False)


def test_a_failed_batch_stops_the_later_ones(catalogue, monkeypatch):
    """A batch that raises (not a refusal of files: a missing store, the database gone) is
    raised in its turn; the earlier batches stay registered, the later ones write nothing,
    though the next was already being checked."""
    with pytest.raises(NotFound, match="no store"):
        list(catalogue.register_batches([([spec("one")], ["1"])], "nowhere"))
    register_each = catalogue.register_each

    def failing(specs, *args, **kwargs):
        if specs[0].name == "boom":
            raise RuntimeError("the database went away")
        return register_each(specs, *args, **kwargs)

    monkeypatch.setattr(catalogue, "register_each", failing)
    batches = [([spec(name)], [name]) for name in ("one", "two", "boom", "three", "four")]
    got = []
    with pytest.raises(RuntimeError, match="went away"):
        for outcomes in catalogue.register_batches(batches, "a"):
            got += outcomes
    assert [r.name for r in got] == ["one", "two"]
    with catalogue.db.read() as s:
        assert list(s.scalars(select(File.name).order_by(File.id))) == ["one", "two"]


@pytest.mark.parametrize("night", ["new", "stored"])
def test_two_registrations_of_one_night_at_once_leave_its_session_spanning_both(
        catalogue, night):
    """Each registration checks before the other writes (PostgreSQL; SQLite's writers take
    turns, so there the second checks after the first): neither is refused and the session,
    new or already stored, ends up spanning both (it is never narrowed), each observation
    written once."""
    import threading

    namer = ObservationNamer()
    middle, early, late = (NIGHT.format(n, "xx") for n in (20000, 10000, 30000))
    if night == "stored":
        catalogue.register([spec(middle)])
    checked = {name: threading.Event() for name in (early, late)}
    interleave = catalogue.db.backend == "postgresql"
    outcome: dict[str, object] = {}

    def register(name: str, other: str) -> None:
        def both_checked() -> None:
            checked[name].set()
            assert checked[other].wait(10)
        try:
            outcome[name] = catalogue.register(
                [spec(name), spec(name.replace(".xx.", ".yy."))],
                before_write=both_checked if interleave else None)
        except Exception as exc:  # noqa: BLE001 - shown by the assertion below
            outcome[name] = exc

    threads = [threading.Thread(target=register, args=(a, b)) for a, b in
               ((early, late), (late, early))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert all(isinstance(o, list) for o in outcome.values()), outcome
    info = namer.observation_of(early)
    with catalogue.db.read() as s:
        session = s.get(Session, info.session_id)
        assert (session.start_time_jd, session.stop_time_jd) == (
            info.start_time_jd, namer.observation_of(late).stop_time_jd)
    counts = table_counts(catalogue)
    assert counts["session"] == 1
    assert (counts["file"], counts["observation"]) == (
        (5, 3) if night == "stored" else (4, 2))


def test_many_batches_in_turn_take_ascending_ids_batch_by_batch(catalogue):
    """Batches of which the next is checked sooner than the one before (its observations
    slower to name): every batch registered, none waiting for ever on another (SQLite's lock,
    taken before the checks), ids ascending in batch order."""
    import threading
    import time

    class SlowNamer(ObservationNamer):
        def observation_of(self, name):
            if name.startswith("slow"):
                time.sleep(0.3)
            return super().observation_of(name)

    catalogue = Catalogue(catalogue.db, SlowNamer())
    sizes = {"slow": 1, "fast": 100}
    batches = [([spec(f"{kind}{k}.{i}") for i in range(sizes[kind])],
                [f"{kind}{k}/{i}" for i in range(sizes[kind])])
               for k in range(3) for kind in ("slow", "fast")]
    done: list[object] = []
    thread = threading.Thread(target=lambda: done.append(
        list(catalogue.register_batches(batches, "a"))), daemon=True)
    thread.start()
    thread.join(30)
    assert done, "register_batches did not finish"
    assert all(r.created and r.instance_added for outcomes in done[0] for r in outcomes)
    with catalogue.db.read() as s:
        names = list(s.scalars(select(File.name).order_by(File.id)))
    assert names == [spec.name for specs, _paths in batches for spec in specs]


def test_a_caller_that_stops_taking_outcomes_leaves_at_most_the_next_batch(catalogue):
    batches = [([spec(f"b{k}.{i}") for i in range(50)], [f"b{k}/{i}" for i in range(50)])
               for k in range(6)]
    outcomes = catalogue.register_batches(batches, "a")
    assert all(r.created for r in next(outcomes))
    outcomes.close()
    with catalogue.db.read() as s:
        names = set(s.scalars(select(File.name)))
    assert {spec.name for spec in batches[0][0]} <= names
    assert names <= {spec.name for specs, _ in batches[:2] for spec in specs}
