"""Progress inside files and hand-overs (issue 17, point 5): a job reports the bytes it moves
before they are committed (``bytes_moving``), so a large file or a hand-over of small files to
the copy helpers shows progress from its first chunk, while ``files_done`` still counts only
files committed; a worker SIGKILLed mid-file leaves nothing counted done.

Real worker processes (with their copy helpers), slowed by the test throttle; SQLite only (the
heartbeat and the commit are the same statements the rest of the job tests run on PostgreSQL).
The ``contents`` method's progress: ``test_contents_method.py``; a transfer's:
``test_transfer.py``."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from hera_stage_ext.catalogue.db import Database
from hera_stage_ext.jobs import create_stage_job, get_job
from hera_stage_ext.jobs.engine import reconcile

from .job_fixtures import make_big_site, start_worker, stop_worker, wait_for

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def db_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'catalogue.sqlite'}"


class Sampler:
    """Reads a job's JSON every few milliseconds in a thread, as a panel polling it would."""

    def __init__(self, db: Database, job_id: int) -> None:
        self.db, self.job_id = db, job_id
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.samples.append(get_job(self.db, self.job_id))

    def stop(self) -> list[dict[str, Any]]:
        self._stop.set()
        self._thread.join(10)
        return self.samples


def moved(job: dict[str, Any]) -> int:
    return job["bytes_done"] + job["bytes_moving"]


def steps_before_first_file(samples: list[dict[str, Any]]) -> list[int]:
    """The distinct byte counts shown while no file was done yet; checks on the way that no
    sample ever shows more than the job's bytes, nor bytes done before a file is."""
    for job in samples:
        assert 0 <= job["bytes_moving"] and moved(job) <= job["bytes_total"], job
        if job["files_done"] == 0:
            assert job["bytes_done"] == 0, job
    return sorted({moved(j) for j in samples if j["files_done"] == 0 and moved(j) > 0})


def test_small_files_in_a_hand_over_show_their_bytes_before_it_is_committed(
        database, tmp_path) -> None:
    """28 files of 192 KiB, 3 slowed chunks each, go to a copy helper in one hand-over: the
    job's bytes rise while it is written, long before its first file is recorded."""
    site = make_big_site(database, tmp_path / "small", n_files=28, size=192 * 1024)
    names = [n for n in site.names if n.endswith(".uvh5")]
    job = create_stage_job(site.db, "alice", names, "small", "copy", site.roots,
                           log_dir=site.logs)
    worker = start_worker(site.db.url, delay=0.05)
    sampler = Sampler(site.db, job["id"])
    try:
        wait_for(lambda: get_job(site.db, job["id"])["state"] == "succeeded", timeout=90)
    finally:
        samples = sampler.stop()
        stop_worker(worker)
    assert len(steps_before_first_file(samples)) >= 3, [moved(j) for j in samples]
    end = get_job(site.db, job["id"])
    assert end["bytes_done"] == end["bytes_total"] and end["bytes_moving"] == 0
    assert end["files_done"] == len(names)


def test_a_large_file_shows_its_bytes_as_they_move_and_a_killed_worker_counts_none(
        database, tmp_path) -> None:
    """One 8 MiB file (the kernel copy with its hash read back), 128 slowed chunks: its bytes
    rise in many steps while no file is done; SIGKILLed mid-file, the worker leaves nothing
    done, and the job shows nothing moving once it is known dead; the next worker stages it."""
    site = make_big_site(database, tmp_path / "large", n_files=1, size=8 << 20)
    names = [n for n in site.names if n.endswith(".uvh5")]
    job = create_stage_job(site.db, "alice", names, "large", "copy", site.roots,
                           log_dir=site.logs)
    worker = start_worker(site.db.url, delay=0.03)
    sampler = Sampler(site.db, job["id"])
    try:
        # Half-way through the file.
        wait_for(lambda: moved(get_job(site.db, job["id"])) >= 4 << 20, timeout=60)
    finally:
        worker.kill()
        worker.wait(10)
        samples = sampler.stop()
    steps = steps_before_first_file(samples)
    assert len(steps) >= 3 and steps[-1] < 8 << 20, steps
    rate = samples[-1]["rate_bytes_per_s"]
    assert rate and rate > 0 and samples[-1]["eta_s"] is not None  # from bytes moved
    killed = get_job(site.db, job["id"])
    assert killed["files_done"] == 0 and killed["bytes_done"] == 0, killed
    reconcile(site.db)  # the worker is known dead (as the next worker's start does)
    assert get_job(site.db, job["id"])["bytes_moving"] == 0

    worker = start_worker(site.db.url)
    try:
        wait_for(lambda: get_job(site.db, job["id"])["state"] == "succeeded", timeout=60)
    finally:
        stop_worker(worker)
    end = get_job(site.db, job["id"])
    assert end["files_done"] == 1 and end["bytes_done"] == 8 << 20
    assert end["bytes_moving"] == 0
