"""The queue's statements on ``job_item`` read the indexes meant for them (``models.
JOB_ITEM_INDEXES``), on both databases, with the tables filled as a site's would be: a claim
walks the job's queued items in id order (no sort, no visit of done rows), also in the generic
plan PostgreSQL makes of a statement its driver prepared; a job's failed and waiting items are
read through their own partial indexes; the rest of a job's rows through the job's index."""

from __future__ import annotations

from sqlalchemy import func, insert, select

from hera_stage_ext.jobs import items
from hera_stage_ext.jobs.models import JOB_ITEM_TABLE, JobItem, JobRow, item_state_is
from hera_stage_ext.states import ItemState

N_JOBS, N_ITEMS = 4, 3_000


def _fill(database) -> int:
    """Jobs of items mostly done, the last one mostly queued; returns the last job's id."""
    with database.write() as s:
        for j in range(N_JOBS):
            job = JobRow(owner="u", destination=f"/d/{j}", files_total=N_ITEMS)
            s.add(job)
            s.flush()
            last = j == N_JOBS - 1
            s.connection().execute(insert(JOB_ITEM_TABLE), [dict(
                job_id=job.id, name=f"f{j}.{i}", store="a", source_path=f"/a/f{j}.{i}",
                dest_path=f"f{j}.{i}", size=1, checksums={},
                state=(ItemState.FAILED if i % 500 == 7 else ItemState.WAITING if i % 400 == 3
                       else ItemState.QUEUED if last and i > 100 else ItemState.DONE))
                for i in range(N_ITEMS)])
            job_id = job.id
        s.connection().exec_driver_sql("ANALYZE")
    return job_id


def _plan(connection, sql: str, params: tuple) -> str:
    raw = connection.connection.dbapi_connection
    if connection.dialect.name == "sqlite":
        rows = raw.execute(f"EXPLAIN QUERY PLAN {sql}", params).fetchall()
        return "\n".join(str(row[-1]) for row in rows)
    with raw.cursor() as cursor:
        cursor.execute(f"EXPLAIN {sql}", params)
        return "\n".join(row[0] for row in cursor.fetchall())


def _inline(connection, statement) -> str:
    return str(statement.compile(connection, compile_kwargs={"literal_binds": True}))


def test_a_claim_walks_the_queued_items_index_in_id_order(database):
    job_id = _fill(database)
    with database.write() as s:
        connection = s.connection()
        mark = items._mark(connection)
        lock = "" if connection.dialect.name == "sqlite" else " FOR UPDATE SKIP LOCKED"
        sql = items._CLAIM_SQL.format(m=mark, lock=lock)
        # A claim of fewer items than the job has queued (all of them: read and sorted anyway).
        plan = _plan(connection, sql, (job_id, 100))
        assert "ix_job_item_queued" in plan and "Sort" not in plan and "TEMP B-TREE" not in plan
        if connection.dialect.name == "postgresql":
            # The plan of a statement psycopg prepared (after 5 runs on a connection).
            raw = connection.connection.dbapi_connection
            with raw.cursor() as cursor:
                cursor.execute("SET LOCAL plan_cache_mode = force_generic_plan")
                numbered = sql.replace("%s", "$1", 1).replace("%s", "$2", 1)
                cursor.execute(f"PREPARE claim(int, int) AS {numbered}")
                cursor.execute(f"EXPLAIN EXECUTE claim({job_id}, 100)")
                generic = "\n".join(row[0] for row in cursor.fetchall())
                cursor.execute("DEALLOCATE claim")
            assert "ix_job_item_queued" in generic and "Sort" not in generic
    claimed = items.claim_items(database, job_id, 5)
    assert [c.name for c in claimed] == [f"f{N_JOBS - 1}.{i}" for i in range(101, 106)]


def test_a_jobs_failed_and_waiting_items_are_read_from_their_own_indexes(database):
    job_id = _fill(database)
    with database.read() as s:
        connection = s.connection()
        for state, index in ((ItemState.FAILED, "ix_job_item_failed"),
                             (ItemState.WAITING, "ix_job_item_waiting")):
            statement = select(func.count()).select_from(JobItem).where(
                JobItem.job_id == job_id, item_state_is(state))
            assert index in _plan(connection, _inline(connection, statement), ())
            assert connection.execute(statement).scalar() == (6 if state == ItemState.FAILED else 8)
        # Running, done and skipped items: the job's own rows, never the whole table.
        statement = select(func.count()).select_from(JobItem).where(
            JobItem.job_id == job_id, JobItem.state == ItemState.RUNNING)
        assert "ix_job_item_job" in _plan(connection, _inline(connection, statement), ())
