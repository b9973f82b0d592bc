"""Schema migrations: a catalogue made by an earlier revision upgrades in place, on both databases,
to exactly the schema the models describe, its rows and events read as before.

The catalogue is made at revision 0010 (main's schema before the instance's store index went,
issue 19) and filled by registration as it wrote then: two event rows for a file registered
with its copy. After the upgrade, registering more files writes one row for the two; both
kinds read the same.
"""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from hera_stage_ext.catalogue import migrations
from hera_stage_ext.catalogue.catalogue import Catalogue, FileSpec
from hera_stage_ext.catalogue.db import Database
from hera_stage_ext.catalogue.models import Base, utcnow
from hera_stage_ext.catalogue.tables import Tables, dumps


def _schema_differences(db: Database) -> list[object]:
    with db.engine.connect() as c:
        return compare_metadata(MigrationContext.configure(c), Base.metadata)


def test_a_catalogue_of_revision_0010_upgrades_in_place(db_url, tmp_path):
    db = Database(db_url)
    try:
        migrations.upgrade(db.engine, "0010")
        assert "ix_instance_store_id" in {
            ix["name"] for ix in inspect(db.engine).get_indexes("instance")}
        catalogue = Catalogue(db)
        catalogue.sync_stores({"a": {"path": str(tmp_path / "a")}})
        # What registration wrote before: a file, its instance and two event rows.
        catalogue.register([FileSpec("old.dat", 1, {"md5": "1" * 32}, source="ingest")],
                           "a", ["old.dat"])
        with db.write() as s:
            tables = Tables(s)
            old_id = tables.file_ids(["old.dat"])["old.dat"]
            # Today's code writes one row for the two: make them main's two rows.
            assert s.connection().exec_driver_sql("SELECT count(*) FROM event").scalar() == 1
            s.connection().exec_driver_sql("DELETE FROM event")
            now = tables.time(utcnow())
            tables.write(events=[
                (old_id, "file-registered", now, dumps({"source": "ingest"})),
                (old_id, "instance-added", now, dumps({"store": "a", "path": "old.dat"}))])

        db.upgrade()

        assert "ix_instance_store_id" not in {
            ix["name"] for ix in inspect(db.engine).get_indexes("instance")}
        assert _schema_differences(db) == []
        catalogue.register([FileSpec("new.dat", 2, {"md5": "2" * 32}, source="ingest")],
                           "a", ["new.dat"])
        for name in ("old.dat", "new.dat"):
            detail = catalogue.file_detail(name)
            assert [(e["type"], e["payload"]) for e in detail["events"]] == [
                ("file-registered", {"source": "ingest"}),
                ("instance-added", {"store": "a", "path": name})]
            assert [i["path"] for i in detail["instances"]] == [name]
        with db.engine.connect() as c:
            assert c.exec_driver_sql("SELECT count(*) FROM event").scalar() == 3
        # Search by store still finds both through the remaining (store, path) index.
        assert catalogue.known_instances("a", ["old.dat", "new.dat"]) == {
            "old.dat": 1, "new.dat": 2}

        migrations.command.downgrade(migrations.alembic_config(db.engine), "0010")
        assert "ix_instance_store_id" in {
            ix["name"] for ix in inspect(db.engine).get_indexes("instance")}
    finally:
        db.dispose()


def test_a_fresh_catalogue_has_the_models_schema(database):
    assert _schema_differences(database) == []


def test_job_items_of_revision_0011_keep_their_states_and_are_claimed_after_the_upgrade(db_url):
    """0012 replaces job_item's (job_id, state) index with partial ones: a job half through
    when the site upgrades goes on where it was, its queued items claimed in order."""
    from sqlalchemy import func, insert, select

    from hera_stage_ext.jobs import items
    from hera_stage_ext.jobs.models import JOB_ITEM_TABLE, JobItem, JobRow

    db = Database(db_url)
    try:
        migrations.upgrade(db.engine, "0011")
        states = ["done", "skipped", "failed", "waiting", "running", "queued", "queued", "done",
                  "queued"]
        with db.write() as s:
            job = JobRow(owner="u", destination="/d", files_total=len(states))
            s.add(job)
            s.flush()
            job_id = job.id
            s.connection().execute(insert(JOB_ITEM_TABLE), [dict(
                job_id=job_id, name=f"f{i}", store="a", source_path=f"/a/f{i}", dest_path=f"f{i}",
                size=1, checksums={}, state=state) for i, state in enumerate(states)])

        db.upgrade()

        indexes = {ix["name"] for ix in inspect(db.engine).get_indexes("job_item")}
        assert indexes == {"ix_job_item_job", "ix_job_item_queued", "ix_job_item_waiting",
                           "ix_job_item_failed"}
        assert _schema_differences(db) == []
        with db.read() as s:
            counts = dict(s.execute(select(JobItem.state, func.count()).where(
                JobItem.job_id == job_id).group_by(JobItem.state)).all())
        assert counts == {"done": 2, "skipped": 1, "failed": 1, "waiting": 1, "running": 1,
                          "queued": 3}
        assert [c.name for c in items.claim_items(db, job_id, 2)] == ["f5", "f6"]
        assert [c.name for c in items.claim_items(db, job_id, 5)] == ["f8"]

        migrations.command.downgrade(migrations.alembic_config(db.engine), "0011")
        assert {ix["name"] for ix in inspect(db.engine).get_indexes("job_item")} == {
            "ix_job_item_job_state"}
    finally:
        db.dispose()


def test_a_catalogue_of_revision_0012_loses_the_row_checks_but_keeps_its_rows(db_url, tmp_path):
    """0013 drops the foreign keys of instances and events (to file and store) and makes file
    and store rows undeletable instead: the rows read as before, the schema is the models',
    and a downgrade puts the foreign keys back."""
    from sqlalchemy.exc import DBAPIError

    db = Database(db_url)
    try:
        migrations.upgrade(db.engine, "0012")
        catalogue = Catalogue(db)
        catalogue.sync_stores({"a": {"path": str(tmp_path / "a")},
                               "b": {"path": str(tmp_path / "b")}})
        catalogue.register([FileSpec("old.dat", 1, {"md5": "1" * 32}, source="ingest")],
                           "a", ["old.dat"])
        before = catalogue.file_detail("old.dat")

        def foreign_keys() -> set[tuple[str, str]]:
            found = set()
            for table in ("instance", "event", "file"):
                for fk in inspect(db.engine).get_foreign_keys(table):
                    found.add((table, fk["referred_table"]))
            return found

        assert foreign_keys() == {("instance", "file"), ("instance", "store"),
                                  ("event", "file"), ("file", "observation")}

        db.upgrade()

        assert foreign_keys() == {("file", "observation")}
        assert _schema_differences(db) == []
        assert catalogue.file_detail("old.dat") == before
        catalogue.register([FileSpec("old.dat", 1, {"md5": "1" * 32})], "b", ["old.dat"])
        after = catalogue.file_detail("old.dat")
        assert [i["store"] for i in after["instances"]] == ["a", "b"]
        for table in ("file", "store"):
            with pytest.raises(DBAPIError, match="never deleted"):
                with db.write() as s:
                    s.connection().exec_driver_sql(f"DELETE FROM {table}")

        migrations.command.downgrade(migrations.alembic_config(db.engine), "0012")
        assert foreign_keys() == {("instance", "file"), ("instance", "store"),
                                  ("event", "file"), ("file", "observation")}
        assert catalogue.file_detail("old.dat") == after
        catalogue.sync_stores({name: {"path": str(tmp_path / name)} for name in "abc"})
        with db.write() as s:  # no trigger left: an unused row may go again
            s.connection().exec_driver_sql("DELETE FROM store WHERE name = 'c'")

        db.upgrade()  # rolled forward again (the keys the downgrade named are found)
        assert foreign_keys() == {("file", "observation")}
        assert _schema_differences(db) == []
        assert catalogue.file_detail("old.dat") == after
    finally:
        db.dispose()
