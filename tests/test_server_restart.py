"""The Jupyter server dies (SIGKILL: a crash, or an idle-cull that does not wait) while its
worker copies: the worker, in a session of its own, finishes the job, and the next server
start shows it done. A real server subprocess, a real worker, a real SQLite file (the server's side is the same on PostgreSQL)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from hera_stage_ext.catalogue import checksums as ck
from hera_stage_ext.catalogue.db import Database
from hera_stage_ext.jobs import get_job

from .job_fixtures import Site, make_big_site, temp_files, wait_for
from .jupyter_process import jupyter_process


def test_worker_outlives_a_killed_server_and_the_next_server_shows_the_job(
        tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'catalogue.sqlite'}")
    database.upgrade()
    site: Site = make_big_site(database, tmp_path / "site", n_files=30, size=256 * 1024)
    config = {"StagingApp": {"db_url": database.url, "stores": site.archive.stores,
                             "allowed_roots": [str(site.workspace)],
                             "worker_idle_exit_seconds": 1}}
    # The worker the server starts copies slowly (the test throttle), so the kill lands mid-job.
    env = {"HERA_STAGE_TEST_CHUNK_DELAY": "0.15"}
    with jupyter_process(tmp_path / "first", root_dir=site.workspace, config=config,
                         env=env) as server:
        reply = server.request("POST", "hera-stage/api/stage",
                               {"names": site.names, "destination": "kept"})
        assert reply.status_code == 202, reply.text
        job_id = reply.json()["id"]
        running = wait_for(lambda: (j := get_job(database, job_id))["files_done"] >= 3
                           and j["worker_id"] and j, timeout=60, step=0.05)
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(10)
    worker_pid = int(running["worker_id"].split(":")[1])
    assert get_job(database, job_id)["state"] == "running"
    os.kill(worker_pid, 0)  # the worker is still there, on its own

    done = wait_for(lambda: (j := get_job(database, job_id))["finished_at"] and j,
                    timeout=120, step=0.2)
    assert done["state"] == "succeeded" and done["worker_id"] is None
    dest = site.workspace / "kept"
    assert temp_files(dest) == []
    for name in site.names:
        assert ck.hash_path(dest / site.rel[name]) == ck.hash_path(site.sources[name])

    with jupyter_process(tmp_path / "second", root_dir=site.workspace, config=config) as server:
        shown = server.api(f"jobs/{job_id}")
        assert shown["state"] == "succeeded" and shown["files_done"] == len(site.names)
        assert shown["marker"] == "STAGING-SUCCEEDED"
    database.dispose()
