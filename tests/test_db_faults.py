"""Faults of the database and of time: PostgreSQL restarted under a running job, and workers
whose clocks disagree. The promised outcomes are in docs/reliability.md.

The restart test has a PostgreSQL cluster of its own (restarting the session's would cut every
other test's connections too).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import OperationalError

from hera_stage_ext.catalogue import checksums as ck
from hera_stage_ext.catalogue.db import Database
from hera_stage_ext.jobs import create_stage_job, get_job, read_log
from hera_stage_ext.jobs.models import JobItem

from .job_fixtures import Site, make_big_site, start_worker, stop_worker, temp_files, wait_for
from .pgcluster import PostgresCluster, find_pg_bin

FINISHED = ("succeeded", "failed", "cancelled")


@pytest.fixture
def own_cluster() -> Iterator[PostgresCluster]:
    if find_pg_bin() is None:
        pytest.skip("PostgreSQL server binaries not installed")
    cluster = PostgresCluster().start()
    yield cluster
    cluster.stop()


def stage(site: Site, dest: str) -> dict:
    return create_stage_job(site.db, "alice", site.names, dest, "copy", site.roots,
                            base=site.workspace, log_dir=site.logs)


def check_staged(site: Site, job: dict, dest: Path) -> None:
    """The job succeeded: every file there once, with the archive's content, nothing left over."""
    assert job["state"] == "succeeded", job
    assert job["files_done"] == job["files_total"] == len(site.names) and job["files_failed"] == 0
    assert temp_files(dest) == []
    for name in site.names:
        assert ck.hash_path(dest / site.rel[name]) == ck.hash_path(site.sources[name])
    with site.db.read() as s:
        states = set(s.scalars(select(JobItem.state).where(JobItem.job_id == job["id"])))
    assert states == {"done"}


def test_database_restart_mid_job(own_cluster: PostgresCluster, tmp_path: Path) -> None:
    db = Database(own_cluster.create_database())
    db.upgrade()
    site = make_big_site(db, tmp_path, n_files=40, size=256 * 1024)
    job = stage(site, "through-restart")
    dest = site.workspace / "through-restart"
    worker = start_worker(db.url, delay=0.02)
    try:
        wait_for(lambda: get_job(db, job["id"])["files_done"] >= 6, timeout=60, step=0.05)
        own_cluster.restart()  # every connection cut, as when the database host reboots
        out = wait_for(lambda: (j := _job_or_none(db, job["id"])) and j["state"] in FINISHED
                       and j, timeout=120, step=0.2)
        assert worker.poll() is None, "the worker survived the restart"
    finally:
        output = stop_worker(worker)
    check_staged(site, out, dest)
    # The same worker went on: the job released on the error and taken up again at once.
    assert output.count("running job") == 2 and "(resumed)" in output, output
    log, _ = read_log(out)
    assert "resumes job" in log
    # No file was copied twice: those written but not recorded when the database went away
    # were verified on resumption, not copied again.
    for name in site.names:
        assert log.count(f"copy {site.rel[name]} (") == 1, site.rel[name]
    db.dispose()


def _job_or_none(db: Database, job_id: int) -> dict | None:
    try:
        return get_job(db, job_id)
    except OperationalError:  # the database is still coming back
        return None


# ----- clocks ---------------------------------------------------------------------------------
#: Loaded by every Python process that has its folder on PYTHONPATH: shifts the worker's own
#: clock (the engine's utcnow: job times, log lines), as on a host whose clock is off.
SKEW_HOOK = """
import datetime as dt, os
skew = float(os.environ.get("HERA_TEST_CLOCK_SKEW") or 0)
if skew:
    import hera_stage_ext.jobs.engine as engine
    import hera_stage_ext.jobs.joblog as joblog
    real, real_ns = engine.utcnow, joblog.now_ns
    engine.utcnow = lambda: real() + dt.timedelta(seconds=skew)
    joblog.now_ns = lambda: real_ns() + int(skew * 1e9)
"""


@pytest.fixture
def skewable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers started from here run with their clock HERA_TEST_CLOCK_SKEW seconds ahead."""
    hook = tmp_path / "skew-hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SKEW_HOOK)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        p for p in (str(hook), os.environ.get("PYTHONPATH", "")) if p))


def run_with_skewed_second_worker(db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  skew_s: float) -> tuple[Site, dict, str, str]:
    """A job started by a worker on this host's clock; once it is under way, a second worker
    whose clock runs ``skew_s`` ahead joins. Returns the finished job and both outputs."""
    site = make_big_site(db, tmp_path, n_files=24, size=256 * 1024)
    job = stage(site, "skewed")
    first = start_worker(db.url, delay=0.02)  # lease 60 s, heartbeat 0.2 s
    try:
        wait_for(lambda: get_job(db, job["id"])["files_done"] >= 4, timeout=60, step=0.05)
        monkeypatch.setenv("HERA_TEST_CLOCK_SKEW", str(skew_s))
        second = start_worker(db.url, delay=0.02)
        try:
            out = wait_for(lambda: (j := get_job(db, job["id"]))["state"] in FINISHED and j,
                           timeout=120, step=0.2)
        finally:
            second_output = stop_worker(second)
    finally:
        first_output = stop_worker(first)
    return site, out, first_output, second_output


def test_clock_skew_within_the_lease_changes_nothing(postgres, tmp_path, skewable,
                                                     monkeypatch) -> None:
    db = Database(postgres.create_database())
    db.upgrade()
    site, out, first, second = run_with_skewed_second_worker(db, tmp_path, monkeypatch, 30)
    check_staged(site, out, site.workspace / "skewed")
    assert "running job" not in second, second  # the live worker kept its job
    assert "lost" not in first, first
    db.dispose()


def test_clock_skew_beyond_the_lease(postgres, tmp_path, skewable, monkeypatch) -> None:
    db = Database(postgres.create_database())
    db.upgrade()
    site, out, first, second = run_with_skewed_second_worker(db, tmp_path, monkeypatch, 120)
    db.dispose()
    # Leases run on the database's clock: the worker ahead leaves the live worker's job alone.
    check_staged(site, out, site.workspace / "skewed")
    assert "running job" not in second, f"a worker 120 s ahead took the job:\n{second}"
    assert "lost" not in first, first


# ----- many servers starting at once --------------------------------------------------------------
def test_servers_starting_together_create_the_schema_once(postgres) -> None:
    """A hub restart starts every user's server at once: each migrates the (here empty) shared
    database at start-up; they take turns, and none fails on another's tables."""
    url = postgres.create_database()
    code = f"from hera_stage_ext.catalogue.db import Database; Database({url!r}).upgrade()"
    starts = [subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
              for _ in range(4)]
    failures = [p.communicate(timeout=120)[1] for p in starts]
    assert [p.returncode for p in starts] == [0] * 4, failures
    db = Database(url)
    with db.read() as s:
        assert s.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1
        assert s.execute(select(JobItem.id)).all() == []
    db.dispose()
