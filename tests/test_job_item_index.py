"""The queue's statements on ``job_item`` read the indexes meant for them (``models.
JOB_ITEM_INDEXES``), on both databases, with the tables filled as a site's would be: a claim
walks the job's queued items in id order (no sort, no visit of done rows), also in the generic
plan PostgreSQL makes of a statement its driver prepared; a job's failed and waiting items are
read through their own partial indexes; the rest of a job's rows through the job's index."""

from __future__ import annotations

import dataclasses
import json

from sqlalchemy import func, insert, select

from hera_stage_ext.catalogue.db import driver_mark
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
        mark = driver_mark(connection)
        lock = "" if connection.dialect.name == "sqlite" else " FOR UPDATE SKIP LOCKED"
        sqlite = connection.dialect.name == "sqlite"
        # In-process claims, and a worker's over HTTP (each item's JSON text built in the SQL).
        for sql in (items._CLAIM_SQL.format(m=mark, lock=lock),
                    items.claim_json_sql(sqlite).format(m=mark, lock=lock)):
            # A claim of fewer items than the job has queued (all of them: read and sorted
            # anyway).
            plan = _plan(connection, sql, (job_id, 100))
            assert ("ix_job_item_queued" in plan and "Sort" not in plan
                    and "TEMP B-TREE" not in plan)
            if sqlite:
                continue
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


def test_a_workers_claim_over_http_reads_as_the_items_claimed_in_process(database):
    """The worker API's claim answer (each item's JSON text built by the database) carries what
    an in-process claim gives, field for field: directories, odd names, checksums or none."""
    odd = ['quote " back\\ slash', "tab\tnewline\n", "naïve ☃ 𝄞", "[brackets] {braces}"]
    with database.write() as s:
        ids = []
        for j in range(2):
            job = JobRow(owner="u", destination=f"/d/{j}", files_total=len(odd) + 2)
            s.add(job)
            s.flush()
            ids.append(job.id)
            rows = [dict(job_id=job.id, name=name, store="st\u00f6re", source_path=f"/a/{name}",
                         dest_path=f"d/{name}", size=2**40 + i, is_directory=i % 2 == 1,
                         checksums={"md5": f"{i:032x}"} if i % 2 else {},
                         state=ItemState.QUEUED, attempts=i)
                    for i, name in enumerate(odd)]
            rows.append(dict(job_id=job.id, name="none", store="a", source_path="/a/none",
                             dest_path="none", size=0, is_directory=False, checksums=None,
                             state=ItemState.QUEUED, attempts=0))
            s.connection().execute(insert(JOB_ITEM_TABLE), rows)
    in_process = items.claim_items(database, ids[0], 100)
    recorded, text = items.exchange_json(database, ids[1], [], 100)
    over_http = [items.ClaimedItem(*row) for row in json.loads(text)]
    assert recorded == 0 and len(over_http) == len(in_process) == len(odd) + 1
    first = over_http[0].id - in_process[0].id
    for mine, theirs in zip(in_process, over_http):
        assert dataclasses.replace(theirs, id=theirs.id - first) == mine
        assert type(theirs.is_directory) is bool and mine.attempts >= 1
    # Claimed: a second claim finds nothing left in either job.
    assert items.exchange_json(database, ids[1], [], 100) == (0, "[]")
    # Their results counted on the job (each once; bytes no longer moving once done).
    with database.write() as s:
        s.get(JobRow, ids[1]).bytes_moving = 2**43
    done = [item.id for item in over_http[1:]]
    failed = (over_http[0].id, "failed", "no space")
    for _ in range(2):  # a report sent twice counts once
        items.exchange_json(database, ids[1], [failed], 0, runs={"done": items.id_runs(done)})
    with database.read() as s:
        job = s.get(JobRow, ids[1])
        assert (job.files_done, job.files_failed, job.files_skipped) == (len(done), 1, 0)
        sizes = sum(item.size for item in over_http[1:])
        assert (job.bytes_done, job.bytes_moving) == (sizes, 2**43 - sizes)


def test_two_reports_of_the_same_items_at_once_count_each_item_once(database):
    """Two reports of one batch's results racing (a worker's retry after a lost answer, on two
    replicas of the service): the job counts each item once, its bytes once."""
    import threading

    with database.write() as s:
        job = JobRow(owner="u", destination="/d/race", files_total=2_000)
        s.add(job)
        s.flush()
        job_id = job.id
        s.connection().execute(insert(JOB_ITEM_TABLE), [dict(
            job_id=job_id, name=f"r{i}", store="a", source_path=f"/a/r{i}", dest_path=f"r{i}",
            size=3, checksums={}, state=ItemState.QUEUED) for i in range(2_000)])
    claimed = items.claim_items(database, job_id, 2_000)
    runs = {"done": items.id_runs(item.id for item in claimed[:1_500]),
            "skipped": items.id_runs(item.id for item in claimed[1_500:])}
    recorded: list[int] = []
    start = threading.Barrier(3)

    def report() -> None:
        start.wait()
        recorded.append(items.exchange(database, job_id, [], 0, running_only=True,
                                       runs=runs)[0])

    threads = [threading.Thread(target=report) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(recorded) == [0, 0, 2_000]
    with database.read() as s:
        job = s.get(JobRow, job_id)
        assert (job.files_done, job.files_skipped, job.bytes_done) == (2_000, 500, 6_000)
